"""``mair bench`` on the CPU at tiny sizes: rows, the JSON record, the compile flags and the workload table."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from mair.bench import workloads as bench
from mair.bench.cli import _add_arguments


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    _add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.mark.parametrize("kind", ["train", "infer"])
def test_run_workload_times_a_tiny_model(kind: str) -> None:
    workload = bench.Workload(f"tiny_{kind}", kind, "sr_light_t_x4", 1, 12)
    row = bench.run_workload(workload, "torch", "fp32", torch.device("cpu"), warmup=1, repeat=2)
    assert row["workload"] == f"tiny_{kind}" and row["backend"] == "torch" and row["compiled"] is False
    assert 0 < row["ms_min"] <= row["ms_median"]
    assert "peak_gib" not in row  # CPU: no CUDA memory statistics


def test_main_writes_the_record_and_reports_errors_per_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(bench.WORKLOADS, "tiny_infer", bench.Workload("tiny_infer", "infer", "sr_light_t_x4", 1, 12))
    out = tmp_path / "bench.json"
    args = _args(
        "tiny_infer",
        "--backends",
        "torch,no_such_backend",
        "--device",
        "cpu",
        "--warmup",
        "1",
        "--repeat",
        "2",
        "--out",
        str(out),
    )
    assert bench.main(args) == 1  # a requested run failed: the status says so, the others are recorded
    record = json.loads(out.read_text())
    assert record["environment"]["torch"] == torch.__version__
    assert [r["backend"] for r in record["rows"]] == ["torch"]  # the failing backend is reported, not recorded
    printed = capsys.readouterr().out
    assert "tiny_infer no_such_backend fp32:" in printed and "| tiny_infer | torch | fp32 | False |" in printed


def test_adam_implementation_is_chosen_and_recorded() -> None:
    workload = bench.Workload("tiny_train", "train", "sr_light_t_x4", 1, 12)
    row = bench.run_workload(workload, "torch", "fp32", torch.device("cpu"), warmup=1, repeat=1, adam="foreach")
    assert row["adam"] == "foreach"
    assert _args().adam == "default"
    with pytest.raises(SystemExit):
        _args("--adam", "sgd")


def test_compile_mode_choices_are_checked() -> None:
    assert _args("--compile-mode", "reduce-overhead").compile_mode == "reduce-overhead"
    with pytest.raises(SystemExit):
        _args("--compile-mode", "fastest")


def test_experiment_ids_become_training_workloads_at_the_paper_batch() -> None:
    workload = bench.experiment_workload("sr_light_t_x4")
    assert (workload.kind, workload.experiment, workload.batch) == ("train", "sr_light_t_x4", 16)
    assert set(bench.TARGET_MS) == set(bench.WORKLOADS) == set(bench.OFFICIAL_MS)
