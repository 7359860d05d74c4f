"""The Triton kernels compile for an H100 (sm_90) through ptxas, checked without a GPU.

The interpreter tests (tests/test_scan_triton.py) run the kernels' Python, not Triton's compiler, so a kernel
can pass them and still fail to compile. ``benchmarks/triton_offline.py`` compiles every kernel of one forward
and backward exactly as a launch would; run it in a fresh process without ``TRITON_INTERPRET``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="needs the triton package (mair[triton])")

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("gated", [False, True])
def test_every_scan_kernel_compiles_for_sm90_without_spills(tmp_path: Path, gated: bool) -> None:
    """Every kernel of the plain scan, or of the gated scan (the model's path: the DOT pass storing the
    sub-chunk states, the backward without its first walk and with dy formed inside, under its register cap,
    and the gated sum of the four outputs)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("TRITON_INTERPRET", "MAIR_TRITON_BWD_STEP", "MAIR_TRITON_TILES")
    }
    env.update(PYTHONPATH=str(REPO), TRITON_CACHE_DIR=str(tmp_path / "cache"), TMPDIR=str(tmp_path))
    cmd = [
        sys.executable,
        str(REPO / "benchmarks" / "triton_offline.py"),
        "--batch",
        "1",
        "--side",
        "12",
        "--channels",
        "40",
        "--d-state",
        "16",
        *(["--gated"] if gated else []),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [dict(re.findall(r"(\w+)=(\S+)", line)) for line in proc.stdout.splitlines() if line.startswith("kernel=")]
    names = {row["kernel"] for row in rows}
    want = {"scan_fwd_step_kernel", "scan_state_chain_kernel", "scan_bwd_step_kernel"}
    assert names == (want | {"gated_sum_kernel"} if gated else want | {"scan_adjoint_summary_kernel"}), names
    if gated:  # the DOT pass with sub-chunk states and the backward without its first walk were compiled
        assert any(row.get("DOT") == "True" and row.get("SUB") != "0" for row in rows), rows
        assert any(row.get("FIRST_WALK") == "False" and row.get("GATED_DY") == "True" for row in rows), rows
    for row in rows:
        assert 0 < int(row["reg"]) <= 255 and int(row["local"]) == 0 and int(row["stack"]) == 0, row
        assert int(row["sass"]) > 0
