"""``mair data``: list, status, download, add, extract, forget, prepare and demo (see docs/data.md).

Registration only builds argparse parsers; every handler imports what it needs (nothing here imports torch).
User errors raise :class:`mair.cli.CommandError` (exit status 2); failed downloads print what failed and
return 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from mair.cli import CommandError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``data`` command group to the ``mair`` parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", metavar="DIR", help="data root (default: $MAIR_DATA_DIR, else ./data)")
    common.add_argument(
        "--catalog",
        metavar="FILE",
        help="catalog file (default: $MAIR_PARAMS_DIR/datasets.yaml, else params/datasets.yaml of the repo)",
    )
    limits = argparse.ArgumentParser(add_help=False)
    limits.add_argument(
        "--max-extract-size",
        metavar="SIZE",
        help="most bytes an extraction may write, e.g. 500G (K/M/G/T are powers of 1024; default: 20x the "
        "archives' size, at least 256 MiB each; $MAIR_MAX_EXTRACT_SIZE)",
    )
    limits.add_argument(
        "--max-members",
        metavar="N",
        help="most files/folders/links an extraction may create (default: 1000000; $MAIR_MAX_EXTRACT_MEMBERS)",
    )
    parser = subparsers.add_parser(
        "data",
        help="datasets: list, status, download, add, extract, forget, prepare, demo",
        description="Download, verify, extract and prepare the datasets of the paper (docs/data.md).",
    )
    actions = parser.add_subparsers(dest="data_command", metavar="ACTION")
    actions.required = True

    p = actions.add_parser("list", parents=[common], help="print the catalog")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=_cmd_list)

    p = actions.add_parser("status", parents=[common], help="what is downloaded, verified, extracted, prepared")
    p.add_argument("names", nargs="*", metavar="NAME", help="dataset ids (default: all)")
    p.add_argument("--scope", choices=("paper", "demo"), default="paper", help="which prepared/ to inspect")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=_cmd_status)

    p = actions.add_parser("download", parents=[common, limits], help="fetch, verify and extract datasets")
    p.add_argument("names", nargs="*", metavar="NAME", help="dataset ids (derived sets expand to their sources)")
    p.add_argument("--all", action="store_true", help="every dataset of the catalog")
    p.add_argument("--mirror", metavar="URL", help="fetch <URL>/<dataset>/<file> instead ($MAIR_DATA_MIRROR)")
    p.add_argument("--source", metavar="NAME", help="an alternative source of the catalog entry")
    p.add_argument("--no-extract", action="store_true", help="only download and verify")
    p.add_argument("--retries", type=int, default=5, metavar="N", help="retries per URL (default 5)")
    p.add_argument("--backoff", type=float, default=2.0, metavar="S", help="first retry wait, doubled each time")
    p.add_argument("--timeout", type=float, default=60.0, metavar="S", help="network timeout (default 60 s)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress and no log lines")
    p.set_defaults(handler=_cmd_download)

    p = actions.add_parser("add", parents=[common, limits], help="register files you already have (verified first)")
    p.add_argument("name", metavar="NAME", help="dataset id")
    p.add_argument("--from", dest="from_path", required=True, metavar="PATH", help="a file or a folder")
    p.add_argument("--copy", action="store_true", help="copy instead of hard-linking")
    p.add_argument("--no-extract", action="store_true", help="do not extract afterwards")
    p.add_argument("-q", "--quiet", action="store_true", help="no log lines")
    p.set_defaults(handler=_cmd_add)

    p = actions.add_parser("extract", parents=[common, limits], help="(re-)extract downloaded files")
    p.add_argument("names", nargs="*", metavar="NAME", help="dataset ids")
    p.add_argument("--all", action="store_true", help="every dataset whose files are all there")
    p.add_argument("--force", action="store_true", help="extract again even when up to date")
    p.set_defaults(handler=_cmd_extract)

    p = actions.add_parser(
        "forget",
        parents=[common],
        help="remove a set's raw files, recorded checksums and extracted folder",
        description="The way out after a bad file: remove raw/<id>/ (or the --file ones), their entries in "
        "data.lock.json and extracted/<id>/, so that the next download or add starts afresh.",
    )
    p.add_argument("name", metavar="NAME", help="dataset id")
    p.add_argument(
        "--file", dest="files", action="append", metavar="FILE", help="only this file of the set (repeatable)"
    )
    p.add_argument("--prepared", action="store_true", help="also remove prepared/<id>/")
    p.set_defaults(handler=_cmd_forget)

    p = actions.add_parser("prepare", parents=[common], help="build the prepared layouts (docs/contracts.md)")
    p.add_argument("names", nargs="*", metavar="NAME", help="dataset ids")
    p.add_argument("--all", action="store_true", help="every dataset of the catalog")
    p.add_argument("--force", action="store_true", help="prepare again even when the marker exists")
    p.add_argument("--workers", type=int, metavar="N", help="parallel image workers (default: the preparer's)")
    p.set_defaults(handler=_cmd_prepare)

    p = actions.add_parser("demo", parents=[common], help="write the small embedded demo set (scope demo)")
    p.add_argument("--force", action="store_true", help="rebuild even when present")
    p.set_defaults(handler=_cmd_demo)


# ------------------------------------------------------------------------------------------------ helpers


def _catalog(args: argparse.Namespace) -> Any:
    from mair.data.catalog import CatalogError, load_catalog

    try:
        return load_catalog(args.catalog)
    except CatalogError as error:
        raise CommandError(str(error)) from None


def _root(args: argparse.Namespace) -> Path:
    from mair.data.paths import data_dir

    return data_dir(args.data_dir)


def _names(args: argparse.Namespace, catalog: Any) -> list[str]:
    if getattr(args, "all", False):
        if args.names:
            raise CommandError("give dataset names or --all, not both")
        return catalog.ids()
    if not args.names:
        raise CommandError("name at least one dataset (see `mair data list`) or use --all")
    unknown = [n for n in args.names if n not in catalog]
    if unknown:
        raise CommandError(f"unknown dataset(s) {', '.join(unknown)}; known: {', '.join(catalog.ids())}")
    return list(dict.fromkeys(args.names))


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]]
    return "\n".join(lines)


def _compact_tasks(tasks: list[str]) -> str:
    """``sr_classic_x2,sr_classic_x3`` -> ``sr_classic_{x2,x3}`` (for the text table only)."""
    groups: dict[str, list[str]] = {}
    for task in tasks:
        head, _, tail = task.rpartition("_")
        groups.setdefault(head if head else task, []).append(tail if head else "")
    parts = []
    for head, tails in groups.items():
        parts.append(
            f"{head}_{{{','.join(tails)}}}" if len(tails) > 1 else (f"{head}_{tails[0]}" if tails[0] else head)
        )
    return " ".join(parts)


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _limits(args: argparse.Namespace) -> Any:
    """The extraction limits from ``--max-extract-size``/``--max-members``, else their switches."""
    from mair.data.extract import DEFAULT_MAX_MEMBERS, ExtractLimits
    from mair.runtime import switches

    def option(flag: str, text: str | None, name: str) -> Any:
        """The flag's value checked as its switch's would be, else the switch's value."""
        sw = switches.switch(name)
        try:
            return switches.get(name) if not text else sw.read(text)
        except switches.SwitchError as error:
            if not text:
                raise CommandError(str(error)) from None
            raise CommandError(f"{flag} (or ${sw.var}): expected {sw.expected}, got {text!r}") from None

    max_bytes = option("--max-extract-size", args.max_extract_size, "MAIR_MAX_EXTRACT_SIZE")
    members = option("--max-members", args.max_members, "MAIR_MAX_EXTRACT_MEMBERS")
    return ExtractLimits(max_bytes=max_bytes, max_members=members or DEFAULT_MAX_MEMBERS)


def _extract_error(dataset_id: str, error: Exception) -> str:
    """An extraction error, with the way out when the archive itself is bad."""
    from mair.data.extract import ExtractLimitError, MissingToolError

    if isinstance(error, (ExtractLimitError, MissingToolError)):
        return str(error)
    return f"{error} (`mair data forget {dataset_id}` removes its raw files and recorded checksums)"


# ------------------------------------------------------------------------------------------------ list


def _checksum_state(dataset: Any) -> str:
    if dataset.is_derived:
        return "derived"
    if not dataset.files:
        return "lock"
    known = sum(spec.checksum_known for spec in dataset.files)
    return "all" if known == len(dataset.files) else ("none (lock)" if known == 0 else "some")


def catalog_summary(catalog: Any) -> list[dict[str, Any]]:
    """One JSON-ready record per dataset (what ``mair data list --json`` prints)."""
    out = []
    for d in catalog:
        out.append(
            {
                "id": d.id,
                "name": d.name,
                "role": list(d.roles),
                "tasks": list(d.tasks),
                "access": d.access,
                "licence": d.licence,
                "homepage": d.homepage,
                "derived_from": list(d.derived_from),
                "files": [
                    {
                        "name": s.name,
                        "size": s.size,
                        "sha256": s.sha256,
                        "sha1": s.sha1,
                        "md5": s.md5,
                        "format": s.format,
                        "urls": list(s.urls),
                    }
                    for s in d.files
                ],
                "n_files": len(d.files),
                "total_size": d.total_size,
                "checksums_known": d.checksums_known,
                "checksums": _checksum_state(d),
                "alternatives": sorted(d.alternatives),
                "accept_any_files": d.accept_any_files,
                "prepared_layout": dict(d.prepared_layout),
            }
        )
    return out


def _cmd_list(args: argparse.Namespace) -> int:
    from mair.data.download import human_size

    catalog = _catalog(args)
    records = catalog_summary(catalog)
    if args.json:
        print(json.dumps({"catalog": str(catalog.path), "datasets": records}, indent=2))
        return 0
    rows = []
    for r in records:
        files = "derived" if r["derived_from"] else ("any" if r["accept_any_files"] else str(r["n_files"]))
        size = "-" if r["derived_from"] else human_size(r["total_size"])
        rows.append(
            [
                r["id"],
                ",".join(r["role"]),
                r["access"],
                files,
                size,
                r["checksums"],
                _compact_tasks(r["tasks"]),
            ]
        )
    print(_table(rows, ["ID", "ROLE", "ACCESS", "FILES", "SIZE", "CHECKSUMS", "TASKS"]))
    print(f"\n{len(records)} datasets in {catalog.path}")
    return 0


# ------------------------------------------------------------------------------------------------ status


def dataset_status(
    catalog: Any,
    dataset_id: str,
    root: Path,
    lock_entries: dict[str, Any],
    scope: str = "paper",
    cache: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Downloaded / verified / extracted / prepared state of one dataset, image counts and disk use.

    ``scope`` picks the prepared folder (``prepared/`` or ``demo/prepared/``); expected image counts are the
    paper's, so they are only reported for scope ``paper``. ``cache`` (id -> record) avoids walking the
    sources of derived sets twice.
    """
    cache = {} if cache is None else cache
    if dataset_id in cache:
        return cache[dataset_id]
    from mair.data.download import complete_source, extraction_is_current, present_files
    from mair.data.lockfile import is_reference
    from mair.data.paths import disk_usage, extracted_dir, prepared_dir, prepared_marker, raw_dir

    dataset = catalog.get(dataset_id)
    if dataset.is_derived:
        parts = [dataset_status(catalog, sub, root, lock_entries, scope, cache) for sub in dataset.derived_from]
        downloaded = all(p["downloaded"] for p in parts)
        verified = all(p["verified"] for p in parts)
        extracted = all(p["extracted"] for p in parts)
        files_present, files_expected, source_name = None, None, None
    else:
        present = present_files(dataset, root)
        source = complete_source(dataset, root)
        downloaded = source is not None
        names = [s.name for s in source.files] if source else present
        raw = raw_dir(dataset_id, root)
        verified = downloaded and all(  # an unconfirmed transfer (no length announced) is not verified
            is_reference(e := lock_entries.get(f"{dataset_id}/{n}")) and e.get("size") == (raw / n).stat().st_size
            for n in names
        )
        extracted = extraction_is_current(dataset, root, source, lock_entries)  # marker of these raw files
        if dataset.accept_any_files and not dataset.files:
            files_present, files_expected = len(present), None
        else:  # counted against the complete source, else the default one
            counted = source or dataset.source(None)
            files_present = len(set(present) & {s.name for s in counted.files})
            files_expected = len(counted.files)
        source_name = source.name if source else None
    prepared = prepared_marker(dataset_id, scope, root)
    prepared_info: dict[str, Any] = {}
    if prepared.is_file():
        try:
            prepared_info = json.loads(prepared.read_text(encoding="utf-8"))
        except ValueError:
            prepared_info = {}
    counts = prepared_info.get("counts") if isinstance(prepared_info.get("counts"), dict) else {}
    images = {
        key: {"found": counts.get(key), "expected": expected if scope == "paper" else None}
        for key, expected in dataset.prepared_layout.items()
    }
    disk = {
        "raw": 0 if dataset.is_derived else disk_usage(raw_dir(dataset_id, root)),
        "extracted": 0 if dataset.is_derived else disk_usage(extracted_dir(dataset_id, root)),
        "prepared": disk_usage(prepared_dir(dataset_id, scope, root)),
    }
    cache[dataset_id] = {
        "id": dataset_id,
        "access": dataset.access,
        "source": source_name,
        "files_present": files_present,
        "files_expected": files_expected,
        "downloaded": downloaded,
        "verified": verified,
        "extracted": extracted,
        "prepared": prepared.is_file(),
        "images": images,
        "disk_bytes": disk,
    }
    return cache[dataset_id]


def _images_text(images: dict[str, Any]) -> str:
    found = [v["found"] for v in images.values()]
    expected = [v["expected"] for v in images.values()]
    if all(f is None for f in found):
        return "-"
    total_found = sum(f or 0 for f in found)
    total_expected = "?" if any(e is None for e in expected) else str(sum(expected))
    flag = "" if all(f == e or e is None for f, e in zip(found, expected, strict=True)) else " !"
    return f"{total_found}/{total_expected}{flag}"


def _cmd_status(args: argparse.Namespace) -> int:
    from mair.data.download import human_size
    from mair.data.lockfile import LockFile
    from mair.data.paths import lock_path

    catalog = _catalog(args)
    root = _root(args)
    names = _names(args, catalog) if args.names else catalog.ids()
    try:
        entries = LockFile(lock_path(root)).entries()
    except ValueError as error:
        raise CommandError(str(error)) from None
    cache: dict[str, dict[str, Any]] = {}
    records = [dataset_status(catalog, n, root, entries, args.scope, cache) for n in names]
    if args.json:
        print(json.dumps({"data_dir": str(root), "scope": args.scope, "datasets": records}, indent=2))
        return 0
    yes = {True: "yes", False: "no"}
    rows = []
    for r in records:
        if r["files_present"] is None:
            files = "derived"
        elif r["files_expected"] is None:
            files = str(r["files_present"])
        else:
            files = f"{r['files_present']}/{r['files_expected']}"
        rows.append(
            [
                r["id"],
                r["access"],
                files,
                yes[r["downloaded"]],
                yes[r["verified"]],
                yes[r["extracted"]],
                yes[r["prepared"]],
                _images_text(r["images"]),
                human_size(sum(r["disk_bytes"].values())),
            ]
        )
    header = ["ID", "ACCESS", "FILES", "DOWNLOADED", "VERIFIED", "EXTRACTED", "PREPARED", "IMAGES", "DISK"]
    print(_table(rows, header))
    print(f"\ndata root: {root} (prepared: scope {args.scope})")
    return 0


# -------------------------------------------------------------------------------------------- download / add


def _cmd_download(args: argparse.Namespace) -> int:
    from mair.data.download import DownloadError, DownloadOptions, ManualDownloadRequired, download_dataset
    from mair.data.extract import ExtractError

    catalog = _catalog(args)
    root = _root(args)
    names = _names(args, catalog)
    if args.source and len(names) != 1:
        raise CommandError("--source applies to one dataset at a time")
    if args.retries < 0 or args.backoff < 0 or args.timeout <= 0:
        raise CommandError("--retries and --backoff must be >= 0 and --timeout > 0")
    if args.source:
        try:
            catalog.get(names[0]).source(args.source)
        except KeyError as error:
            raise CommandError(str(error.args[0])) from None
    opts = DownloadOptions(
        retries=args.retries, backoff=args.backoff, timeout=args.timeout, mirror=args.mirror, quiet=args.quiet
    )
    limits = _limits(args)
    failed: list[str] = []
    manual: list[str] = []
    for dataset_id in catalog.expand(names):
        try:
            download_dataset(
                catalog, dataset_id, root, opts, source=args.source, extract=not args.no_extract, limits=limits
            )
        except ManualDownloadRequired as error:
            manual.append(dataset_id)
            _err(f"mair data download: {dataset_id}: manual download needed\n{error}\n")
        except ExtractError as error:
            failed.append(dataset_id)
            _err(f"mair data download: error: {_extract_error(dataset_id, error)}")
        except (DownloadError, OSError, ValueError) as error:
            failed.append(dataset_id)
            _err(f"mair data download: error: {error}")
    if manual or failed:
        parts = []
        if failed:
            parts.append(f"failed: {', '.join(failed)}")
        if manual:
            parts.append(f"need a manual download: {', '.join(manual)}")
        _err("mair data download: " + "; ".join(parts))
        return 1
    return 0


def _cmd_add(args: argparse.Namespace) -> int:
    from mair.data.download import DownloadError, add_files
    from mair.data.extract import ExtractError

    catalog = _catalog(args)
    if args.name not in catalog:
        raise CommandError(f"unknown dataset {args.name!r}; known: {', '.join(catalog.ids())}")
    limits = _limits(args)
    try:
        add_files(
            catalog,
            args.name,
            args.from_path,
            _root(args),
            copy=args.copy,
            extract=not args.no_extract,
            quiet=args.quiet,
            limits=limits,
        )
    except ValueError as error:
        raise CommandError(str(error)) from None
    except ExtractError as error:
        _err(f"mair data add: error: {_extract_error(args.name, error)}")
        return 1
    except (DownloadError, OSError) as error:
        _err(f"mair data add: error: {error}")
        return 1
    return 0


def _cmd_extract(args: argparse.Namespace) -> int:
    from mair.data.download import extract_raw
    from mair.data.extract import ExtractError

    catalog = _catalog(args)
    root = _root(args)
    limits = _limits(args)
    names = catalog.expand(_names(args, catalog))
    status = 0
    for dataset_id in names:
        try:
            marker = extract_raw(catalog.get(dataset_id), root, force=args.force, limits=limits)
        except ExtractError as error:
            _err(f"mair data extract: error: {_extract_error(dataset_id, error)}")
            status = 1
            continue
        except OSError as error:
            _err(f"mair data extract: error: {error}")
            status = 1
            continue
        if marker is None:
            if not args.all:
                _err(f"mair data extract: {dataset_id}: its files are not all in raw/ (mair data download)")
                status = 1
        else:
            print(f"{dataset_id}: extracted ({marker.get('n_files')} files)")
    return status


def _cmd_forget(args: argparse.Namespace) -> int:
    from mair.data.forget import ForgetError, forget_dataset

    catalog = _catalog(args)
    if args.name not in catalog:
        raise CommandError(f"unknown dataset {args.name!r}; known: {', '.join(catalog.ids())}")
    try:
        done = forget_dataset(catalog.get(args.name), _root(args), names=args.files, prepared=args.prepared)
    except (ForgetError, ValueError) as error:
        raise CommandError(str(error)) from None
    print(done.summary(args.name))
    return 0


# -------------------------------------------------------------------------------------------- prepare / demo


def _cmd_prepare(args: argparse.Namespace) -> int:
    from mair.data.prepare import prepare

    catalog = _catalog(args)
    root = _root(args)
    names = _names(args, catalog)
    status = 0
    for dataset_id in names:
        try:
            report = prepare(dataset_id, root, force=args.force, workers=args.workers)
        except CommandError:
            raise
        except (RuntimeError, ValueError, OSError, KeyError) as error:
            if len(names) == 1:
                raise CommandError(f"{dataset_id}: {error}") from error
            _err(f"mair data prepare: {dataset_id}: {type(error).__name__}: {error}")
            status = 1
        except Exception as error:  # an unexpected failure: report it and go on with the next set
            if len(names) == 1:
                raise
            _err(f"mair data prepare: {dataset_id}: {type(error).__name__}: {error}")
            status = 1
        else:
            print(f"{dataset_id}: {_report_text(report)}")
    return status


def _report_text(report: Any) -> str:
    if not isinstance(report, dict):
        return "prepared"
    state = "already prepared" if report.get("skipped") else "prepared"
    total = report.get("total")
    return f"{state} ({total} images) in {report['path']}" if total is not None and "path" in report else state


def _cmd_demo(args: argparse.Namespace) -> int:
    from mair.data.demo import build_demo

    root = _root(args)
    report = build_demo(root, force=args.force)
    sets = report.get("datasets", {}) if isinstance(report, dict) else {}
    for dataset_id, info in sets.items():
        print(f"{dataset_id}: {_report_text(info)}")
    print(f"demo sets under {root / 'demo' / 'prepared'}")
    return 0
