"""Time the official MaIR code on ``mair bench``'s workloads: the baseline of the ratios in docs/benchmarks.md.

The official network runs exactly as its training did: eager, fp32 with PyTorch's defaults (TF32 convolutions,
full-fp32 matrix products), mamba_ssm's CUDA selective scan, foreach Adam (BasicSR's ``torch.optim.Adam``).
Each workload is timed by :func:`mair.bench.workloads.run_workload`, the same step, data and timer as ``mair bench``.

The official code is not part of mair. Point ``--official-src`` at a folder holding the official repository's
``basicsr/archs/mair_arch.py`` and ``basicsr/archs/shift_scanf_util.py``; the machine needs mamba_ssm built
(``shared/device/build_mamba_ssm.sh`` on the team's GPU machines) and timm::

    python benchmarks/official_baseline.py --official-src official/ --out official.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from mair.bench.workloads import WORKLOADS, environment, format_rows, network_spec, run_workload  # noqa: E402
from mair.common.atomic import atomic_write_json  # noqa: E402


def official_network(src: Path, workload_name: str) -> torch.nn.Module:
    """The official ``MaIR`` network of a workload's experiment, built from the official source folder."""
    if str(src) not in sys.path:
        sys.path.insert(0, str(src))
    arch = importlib.import_module("mair_arch")
    net = network_spec(WORKLOADS[workload_name])
    if net.arch != "MaIR":
        raise SystemExit(f"{workload_name}: only MaIR workloads have an official baseline here, not {net.arch}")
    return arch.MaIR(**net.constructor_kwargs())


def main() -> int:
    cli = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("workloads", nargs="*", help="mair bench workload names (default: every model workload)")
    cli.add_argument(
        "--official-src", type=Path, required=True, help="folder with the official mair_arch.py, shift_scanf_util.py"
    )
    cli.add_argument("--warmup", type=int, default=3)
    cli.add_argument("--repeat", type=int, default=10)
    cli.add_argument("--out", default=None, help="write the results as JSON here")
    args = cli.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("the official code's selective scan needs a CUDA GPU")
    device = torch.device("cuda")
    names = args.workloads or [name for name, w in WORKLOADS.items() if w.kind in ("train", "infer")]
    rows = []
    for name in names:
        network = official_network(args.official_src, name).to(device)
        row = run_workload(
            WORKLOADS[name], None, "fp32", device, args.warmup, args.repeat, adam="foreach", network=network
        )
        row["backend"] = "official"
        rows.append(row)
        print(json.dumps(row), flush=True)
        del network
    print(format_rows(rows))
    if args.out:
        atomic_write_json(args.out, {"environment": environment(), "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
