"""``python -m mair.pipeline.snakemake_run ARGS...``: Snakemake with the profile that ``executor`` in
params/pipeline.yaml names, ``workflow/profiles/<executor>`` (local: this machine; slurm: SLURM jobs).

DVC's stage commands start here (dvc.yaml), so that ``executor: slurm`` makes ``dvc repro`` and ``dvc exp run``
run every stage's work as SLURM jobs from a login node, while the stage commands themselves stay the same text
(DVC reruns a stage whose command changes). The scope stays the one in params/pipeline.yaml (the file
``dvc exp run -S`` edits): it is passed as ``--config scope=...``, since a profile's ``config`` list (the slurm
profile's ``scope=paper``) would otherwise win over the config file.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

EXECUTORS = ("local", "slurm")


def snakemake_command(args: Sequence[str], repo: Path) -> list[str]:
    """``snakemake --profile workflow/profiles/<executor> ARGS`` for the checkout ``repo`` (ValueError: bad key)."""
    import yaml

    config_file = repo / "params" / "pipeline.yaml"
    try:
        config = yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"{config_file}: cannot read: {error}") from None
    config = config if isinstance(config, dict) else {}
    executor = config.get("executor", "local")
    if executor not in EXECUTORS:
        raise ValueError(f"{config_file}: executor: expected one of {', '.join(EXECUTORS)}, got {executor!r}")
    args = list(args)
    scope = f"scope={config.get('scope', 'demo')}"
    if "--config" in args:  # one --config list (a second --config flag would replace the first)
        at = args.index("--config") + 1
        args[at:at] = [scope]
    else:
        at = args.index("--") if "--" in args else len(args)
        args[at:at] = ["--config", scope]
    return ["snakemake", "--profile", str(Path("workflow", "profiles", executor)), *args]


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        command = snakemake_command(args, Path.cwd())
    except ValueError as error:
        print(f"mair.pipeline.snakemake_run: error: {error}", file=sys.stderr)
        return 2
    executable = shutil.which(command[0])
    if executable is None:
        print(
            "mair.pipeline.snakemake_run: error: snakemake is not installed (pip install 'mair[pipeline]')",
            file=sys.stderr,
        )
        return 127
    print(f"mair.pipeline.snakemake_run: {' '.join(command)}", file=sys.stderr, flush=True)
    os.execv(executable, command)
    return 127  # pragma: no cover - execv does not return


if __name__ == "__main__":
    sys.exit(main())
