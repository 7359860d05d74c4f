"""On a GPU: `mair restore` of a 4000x3000 photo-sized input with MaIR-T x4 in tiles (random weights; the timing
and memory are what matter), and `mair evaluate` of a demo-scale experiment on the embedded demo data.

    python benchmarks/gpu_restore_smoke.py --work /tmp/smoke
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--size", default="4000x3000")
    args = parser.parse_args()
    from mair.experiments import load
    from mair.models import from_official
    from mair.models.checkpoint import save_weights

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    width, height = (int(v) for v in args.size.split("x"))
    rng = np.random.default_rng(0)
    base = cv2.resize(rng.integers(0, 255, (height // 16, width // 16, 3), dtype=np.uint8), (width, height))
    cv2.imwrite(str(work / "big.png"), base)
    net = load("sr_light_t_x4").network
    save_weights(from_official(net.arch, **net.constructor_kwargs()), work / "t_x4.pth")
    start = time.time()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "mair",
            "restore",
            "--experiment",
            "sr_light_t_x4",
            "--weights",
            str(work / "t_x4.pth"),
            str(work / "big.png"),
            "-o",
            str(work / "out"),
            "--tile",
            str(args.tile),
            "--device",
            "cuda",
            "--quiet",
        ],
        check=True,
    )
    out = cv2.imread(str(work / "out" / "big.png"))
    print(f"restore {width}x{height} x4 tiles {args.tile}: {time.time() - start:.1f} s, output {out.shape}")

    demo = load("sr_light_t_x2", "demo").network
    save_weights(from_official(demo.arch, **demo.constructor_kwargs()), work / "demo_t_x2.pth")
    subprocess.run([sys.executable, "-m", "mair", "data", "demo", "--data-dir", str(work / "data")], check=True)
    start = time.time()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "mair",
            "evaluate",
            "sr_light_t_x2",
            "--scope",
            "demo",
            "--weights",
            str(work / "demo_t_x2.pth"),
            "--device",
            "cuda",
            "--results-dir",
            str(work / "results"),
            "--data-dir",
            str(work / "data"),
            "--self-ensemble",
        ],
        check=True,
    )
    print(
        f"evaluate demo sr_light_t_x2 (+ MaIR+) on cuda: {time.time() - start:.1f} s; "
        f"summaries: {sorted(p.name for p in (work / 'results').rglob('*.json'))}"
    )
    print("cuda max memory of this process:", torch.cuda.max_memory_allocated() / 2**30)


if __name__ == "__main__":
    main()
