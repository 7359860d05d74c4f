"""``mair weights list | status | download | add | forget``: the published checkpoints (docs/evaluation.md).

Registration imports nothing heavy; handlers import torch only to check that a checkpoint fits its network.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mair.common.errors import CommandError

HELP = "the published MaIR checkpoints: list, status, download, add (downloaded by hand), forget"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--scope",
        choices=("paper", "demo"),
        default="paper",
        help="paper networks (default) or demo-size networks (<data>/demo/weights/published/)",
    )
    p.add_argument("--data-dir", default=None, metavar="DIR", help="data root (default: $MAIR_DATA_DIR or ./data)")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``weights`` command group."""
    top = subparsers.add_parser(
        "weights",
        help=HELP,
        description=HELP + ". Files live in <data>/weights/published/; their sha256 is recorded in "
        "<data>/data.lock.json at the first complete download and checked afterwards. Downloads come from "
        "$MAIR_WEIGHTS_MIRROR (<URL>/<file name>) when set, else from the authors' Google Drive folder.",
    )
    sub = top.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True

    p = sub.add_parser("list", help="every experiment's published file: name, source, size, checksum, present")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _common(p)
    p.set_defaults(handler=_list)

    p = sub.add_parser("status", help="which published files are present and verified (exit 1 if any is missing)")
    p.add_argument("ids", nargs="*", metavar="ID", help="experiments (default: all)")
    _common(p)
    p.set_defaults(handler=_status)

    p = sub.add_parser("download", help="fetch published files (verified, resumable, atomic)")
    p.add_argument("ids", nargs="*", metavar="ID", help="experiment ids or `all` (default: all)")
    p.add_argument("--timeout", type=float, default=60.0, metavar="S", help="network timeout (default 60 s)")
    p.add_argument(
        "--manifest",
        type=Path,
        default=None,
        metavar="JSON",
        help="when every file is there, write this record of them (the pipeline's output)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress output")
    _common(p)
    p.set_defaults(handler=_download)

    p = sub.add_parser("add", help="register a checkpoint downloaded by hand (checked against the network first)")
    p.add_argument("id", metavar="ID", help="experiment id")
    p.add_argument("--from", dest="source", required=True, metavar="PATH", help="the downloaded file")
    p.add_argument("--copy", action="store_true", help="copy instead of hard-linking")
    _common(p)
    p.set_defaults(handler=_add)

    p = sub.add_parser("forget", help="delete an experiment's published file and its recorded checksum")
    p.add_argument("id", metavar="ID", help="experiment id")
    _common(p)
    p.set_defaults(handler=_forget)


def _catalog():
    from mair.data.catalog import CatalogError
    from mair.weights.catalog import load_weights_catalog

    try:
        return load_weights_catalog()
    except CatalogError as error:
        raise CommandError(str(error)) from None


def _ids(catalog, ids: list[str]) -> list[str]:
    if not ids or ids == ["all"]:
        return catalog.ids()
    unknown = [i for i in ids if i not in catalog.entries]
    if unknown:
        raise CommandError(f"unknown experiment(s) {', '.join(unknown)}; known: {', '.join(catalog.ids())}")
    return list(dict.fromkeys(ids))


def _rows(args: argparse.Namespace, ids: list[str] | None = None):
    from mair.weights.store import status

    catalog = _catalog()
    try:
        return catalog, status(catalog, args.scope, args.data_dir, _ids(catalog, ids or []))
    except ValueError as error:  # an unreadable data.lock.json
        raise CommandError(str(error)) from None


def _list(args: argparse.Namespace) -> int:
    from mair.data.download import human_size

    catalog, rows = _rows(args)
    if args.json:
        print(
            json.dumps(
                {
                    "source": {
                        "name": catalog.source_name,
                        "gdrive_folder": catalog.gdrive_folder,
                        "url": catalog.folder_url,
                    },
                    "scope": args.scope,
                    "weights": [r.as_json() for r in rows],
                },
                indent=2,
            )
        )
        return 0
    print(f"published weights ({catalog.source_name}: {catalog.folder_url}); scope {args.scope}")
    for r in rows:
        checksum = f"sha256 {r.sha256[:12]}… ({r.checksum_origin})" if r.sha256 else "sha256 not recorded yet"
        print(
            f"  {r.experiment:<14} {r.file:<24} {human_size(r.size):>9}  {checksum:<40} "
            f"{'present' if r.present else 'missing'}"
        )
    return 0


def _status(args: argparse.Namespace) -> int:
    _, rows = _rows(args, args.ids)
    missing = 0
    for r in rows:
        if r.recorded:
            state = "ok (sha256 recorded)"
        elif r.present:
            state = "present, not verified (run `mair weights download` or `add` to verify it)"
        else:
            state, missing = "missing", missing + 1
        print(f"{r.experiment:<14} {r.file:<24} {state}")
    print(f"{len(rows) - missing} of {len(rows)} published files present in {rows[0].path.parent if rows else ''}")
    return 1 if missing else 0


def _download(args: argparse.Namespace) -> int:
    from mair.data.download import DownloadOptions
    from mair.weights.store import download, status, write_manifest

    catalog = _catalog()
    ids = _ids(catalog, args.ids)
    opts = DownloadOptions(timeout=args.timeout, quiet=args.quiet)
    try:
        paths, errors = download(catalog, ids, args.scope, args.data_dir, opts)
    except ValueError as error:  # an unreadable data.lock.json
        raise CommandError(str(error)) from None
    for line in errors:
        print(f"mair weights download: error: {line}", file=sys.stderr)
    if errors:
        print(
            f"mair weights download: {len(paths)} of {len(ids)} files there; the others can be downloaded by "
            f"hand from {catalog.folder_url} and registered with `mair weights add ID --from PATH`",
            file=sys.stderr,
        )
        return 1
    if args.manifest is not None:
        write_manifest(args.manifest, status(catalog, args.scope, args.data_dir, ids), args.scope)
    if not args.quiet:
        print(f"{len(paths)} published file(s) verified in {paths[0].parent if paths else ''}")
    return 0


def _add(args: argparse.Namespace) -> int:
    from mair.data.download import DownloadError
    from mair.weights.store import WeightsError, add

    catalog = _catalog()
    _ids(catalog, [args.id])
    try:
        final = add(catalog, args.id, args.source, args.scope, args.data_dir, copy=args.copy)
    except (WeightsError, DownloadError, OSError) as error:
        raise CommandError(" ".join(str(error).split())) from None
    print(f"{args.id}: registered {final}")
    return 0


def _forget(args: argparse.Namespace) -> int:
    from mair.weights.store import forget

    catalog = _catalog()
    _ids(catalog, [args.id])
    try:
        removed = forget(catalog, args.id, args.scope, args.data_dir)
    except (OSError, ValueError) as error:
        raise CommandError(str(error)) from None
    print(f"{args.id}: removed {len(removed)} item(s)" + "".join(f"\n  {r}" for r in removed))
    return 0
