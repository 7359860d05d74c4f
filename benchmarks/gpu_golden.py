"""On a CUDA GPU: every golden file (official outputs and input gradients) through each scan backend.

MAIR_SHARED_DIR=../shared python benchmarks/gpu_golden.py --backends torch,mamba,triton --out golden.json
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from mair.models import from_official, set_scan_backend


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="torch,mamba,triton")
    parser.add_argument("--out", default=None)
    parser.add_argument("--tf32", action="store_true", help="leave cuDNN's TF32 convolutions on (PyTorch's default)")
    args = parser.parse_args()
    # cuDNN convolutions default to TF32 on Ampere and newer, which alone moves outputs by about 1e-4; the golden
    # comparison is made in true fp32.
    torch.backends.cudnn.allow_tf32 = args.tf32
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    shared = Path(os.environ.get("MAIR_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
    rows = []
    for path in sorted((shared / "golden").glob("*.pt")):
        golden = torch.load(path, weights_only=True)
        for backend in args.backends.split(","):
            model = from_official(golden["arch"], **golden["kwargs"])
            model.load_state_dict(golden["state_dict"], strict=True)
            model = model.cuda().train(golden["arch"] == "MaIRUNet")
            set_scan_backend(model, backend)
            for i, case in enumerate(golden["cases"]):
                x = case["input"].cuda().requires_grad_(True)
                out = model(x)
                (grad,) = torch.autograd.grad(out.sum(), x)
                out_err = float(
                    (out.detach().cpu().double() - case["output"].double()).norm() / case["output"].double().norm()
                )
                grad_err = float(
                    (grad.cpu().double() - case["input_grad"].double()).norm() / case["input_grad"].double().norm()
                )
                rows.append(
                    {
                        "file": path.stem,
                        "case": i,
                        "backend": backend,
                        "output_rel_err": out_err,
                        "input_grad_rel_err": grad_err,
                        "ok": out_err <= 1e-5 and grad_err <= 1e-4,
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))
    print("all ok" if all(r["ok"] for r in rows) else "SOME FAILED")


if __name__ == "__main__":
    main()
