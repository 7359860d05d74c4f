"""The defaults of every command, decided in mair.runtime.resolve: the fast path on CUDA, ``--exact``, the CPU left as
it was; the records that say which path a run took; the persistent compile cache; ``mair bench --default``; the
pipeline's ``precision`` setting reaching the commands.

CUDA is resolved without a GPU: :func:`resolve_runtime` is pure and takes ``device="cuda"`` and
``triton_available`` as arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from mair.runtime import compile_cache
from mair.runtime.resolve import RuntimeSettingsError, resolve_runtime

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _keep_switches(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No inherited scan-backend choice, the compile cache in a temporary folder (the environment it sets is
    restored), the process-wide TF32 switches restored after each test."""
    monkeypatch.delenv("MAIR_SCAN_BACKEND", raising=False)
    monkeypatch.setenv(compile_cache.ENV_VAR, str(tmp_path / "compile-cache"))
    monkeypatch.delenv(compile_cache.INDUCTOR_VAR, raising=False)
    monkeypatch.delenv(compile_cache.TRITON_VAR, raising=False)
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = before


# ------------------------------------------------------------------------------------------------ resolution


def test_cuda_default_is_the_fast_path_for_training() -> None:
    rt = resolve_runtime("cuda", triton_available=True)
    assert (rt.path, rt.device, rt.precision) == ("default", "cuda", "tf32")
    assert rt.scan_backend == rt.scan_backend_resolved == "triton"
    assert (rt.compile_backend, rt.compile_mode, rt.cuda_graphs) == ("inductor", "reduce-overhead", True)
    assert rt.fused_adam and rt.adam_kwargs() == {"fused": True} and not rt.cudnn_benchmark
    assert rt.describe() == (
        "default path on cuda: scan triton, TF32 matmuls and convolutions, torch.compile "
        "inductor reduce-overhead (CUDA graphs), fused Adam"
    )
    assert resolve_runtime("cuda:1", triton_available=True) == rt


def test_cuda_exact_is_eager_true_fp32_with_pytorchs_adam() -> None:
    rt = resolve_runtime("cuda", exact=True, triton_available=True)
    assert (rt.path, rt.precision, rt.exact) == ("exact", "exact", True)
    assert rt.scan_backend is None  # the registry's automatic choice, as before the fast path
    assert (rt.compile_backend, rt.compile_mode, rt.cuda_graphs) == (None, None, False)
    assert not rt.fused_adam and rt.adam_kwargs() == {}
    assert "true fp32 (no TF32)" in rt.describe() and "eager" in rt.describe()


def test_cuda_inference_is_eager_unless_compiling_is_asked_for() -> None:
    rt = resolve_runtime("cuda", workload="infer", triton_available=True)
    assert (rt.precision, rt.scan_backend, rt.compile_backend, rt.fused_adam) == ("tf32", "triton", None, False)
    assert rt.path == "default" and not rt.cudnn_benchmark
    asked = resolve_runtime("cuda", workload="infer", compile=True, triton_available=True)
    assert (asked.compile_backend, asked.compile_mode, asked.path) == ("inductor", "reduce-overhead", "custom")


def test_cuda_without_triton_keeps_the_automatic_scan_backend() -> None:
    rt = resolve_runtime("cuda", triton_available=False)
    assert rt.scan_backend is None and rt.scan_backend_resolved != "triton"
    assert rt.precision == "tf32" and rt.fused_adam


@pytest.mark.parametrize("exact", [False, True])
@pytest.mark.parametrize("workload", ["train", "infer"])
def test_cpu_defaults_stay_as_they_were(exact: bool, workload: str) -> None:
    rt = resolve_runtime("cpu", exact=exact, workload=workload)
    assert rt.precision == ("exact" if exact else "fp32") and rt.path == ("exact" if exact else "default")
    assert (rt.scan_backend, rt.scan_backend_resolved) == (None, "torch")
    assert (rt.compile_backend, rt.fused_adam, rt.cudnn_benchmark) == (None, False, False)
    assert rt.describe() == f"{'exact' if exact else 'default'} path on cpu: scan torch, fp32, eager"


def test_explicit_choices_override_single_defaults_and_are_recorded_as_custom(monkeypatch: pytest.MonkeyPatch) -> None:
    rt = resolve_runtime("cuda", precision="fp32", compile=False, triton_available=True)
    assert (rt.path, rt.precision, rt.compile_backend, rt.scan_backend, rt.fused_adam) == (
        "custom",
        "fp32",
        None,
        "triton",
        True,
    )
    assert resolve_runtime("cuda", compile_backend="aot_eager", triton_available=True).compile_mode is None
    assert resolve_runtime("cpu", compile_mode="default").compile_backend == "inductor"
    monkeypatch.setenv("MAIR_SCAN_BACKEND", "torch")  # the user's backend wins over triton
    rt = resolve_runtime("cuda", triton_available=True)
    assert (rt.path, rt.scan_backend, rt.scan_backend_resolved) == ("custom", None, "torch")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"exact": True, "compile_mode": "reduce-overhead"}, "--exact runs eager in true fp32"),
        ({"exact": True, "precision": "tf32"}, "--exact runs eager in true fp32"),
        ({"exact": True, "compile": True}, "--exact runs eager in true fp32"),
        ({"compile": False, "compile_mode": "default"}, "--no-compile contradicts"),
        ({"compile_backend": "aot_eager", "compile_mode": "default"}, "needs the inductor compiler"),
        ({"compile_mode": "fastest"}, "--compile-mode must be one of"),
        ({"precision": "fp16"}, "--precision must be one of"),
        ({"workload": "serve"}, "workload must be one of"),
    ],
)
def test_contradicting_options_are_one_clear_error(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(RuntimeSettingsError, match=message):
        resolve_runtime("cuda", triton_available=True, **kwargs)
    with pytest.raises(RuntimeSettingsError, match="device must be cpu or cuda"):
        resolve_runtime("mps")


def test_apply_sets_the_tf32_switches_of_each_path() -> None:
    torch.backends.cudnn.benchmark = True  # left on by earlier code: the default path turns it off
    cache = resolve_runtime("cuda", triton_available=True).apply()
    assert cache is not None and cache.inductor.is_dir() and cache.triton.is_dir()  # under the test's tmp_path
    assert os.environ[compile_cache.INDUCTOR_VAR] == str(cache.inductor)
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert not torch.backends.cudnn.benchmark
    resolve_runtime("cuda", exact=True, workload="infer").apply()
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    assert not torch.backends.cudnn.benchmark
    assert resolve_runtime("cpu").apply() is None  # nothing compiles: no cache folder is made
    assert not torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32  # PyTorch's defaults


def test_the_record_round_trips_through_json_and_names_the_path() -> None:
    from mair.common.tracking import runtime_tags

    record = json.loads(json.dumps(resolve_runtime("cuda", triton_available=True).as_dict()))
    assert record["path"] == "default" and record["cuda_graphs"] is True and record["describe"].startswith("default")
    tags = runtime_tags(record)
    assert tags["mair.path"] == "default" and tags["mair.precision"] == "tf32"
    assert tags["mair.compile"] == "inductor" and tags["mair.compile_mode"] == "reduce-overhead"
    assert tags["mair.scan_backend_used"] == "triton" and tags["mair.fused_adam"] == "True"
    exact = runtime_tags(resolve_runtime("cuda", exact=True).as_dict())
    assert (exact["mair.path"], exact["mair.compile"], exact["mair.compile_mode"]) == ("exact", "off", "-")


# ------------------------------------------------------------------------------------------------ commands


def _train_args(*argv: str) -> argparse.Namespace:
    from mair.cli import build_parser

    return build_parser().parse_args(["train", "sr_light_t_x2", *argv])


def test_train_flags_reach_the_options_and_the_torchrun_workers() -> None:
    from mair.train.cli import child_argv, options_from_args
    from mair.train.trainer import runtime_settings

    args = _train_args("--exact")
    opts = options_from_args(args)
    assert opts.exact and opts.precision is None and "--exact" in child_argv(args)
    assert "--precision" not in child_argv(args)  # the default precision is resolved in each worker
    assert runtime_settings(opts, "cuda").path == "exact"
    args = _train_args("--no-compile", "--precision", "bf16")
    argv = child_argv(args)
    assert argv[-1] == "--no-compile" and argv[argv.index("--precision") + 1] == "bf16"
    rt = runtime_settings(options_from_args(args), "cuda")
    assert (rt.compile_backend, rt.precision) == (None, "bf16")
    assert runtime_settings(options_from_args(_train_args()), "cuda").compile_mode == "reduce-overhead"


def test_train_rejects_exact_with_compile_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from mair.cli import main

    assert (
        main(
            [
                "train",
                "sr_light_t_x2",
                "--scope",
                "demo",
                "--device",
                "cpu",
                "--exact",
                "--compile-mode",
                "default",
                "--no-mlflow",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "mair train: error: --exact runs eager in true fp32; drop --precision/--compile/--compile-mode, or drop --exact"
    ]


def test_restore_compile_needs_tiles(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from mair.cli import main

    assert (
        main(["restore", str(tmp_path), "-o", str(tmp_path / "out"), "--experiment", "sr_light_t_x2", "--compile"]) == 2
    )
    assert "--compile needs --tile SIZE" in capsys.readouterr().err


@pytest.mark.slow
def test_training_records_its_path_in_the_config_and_mlflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 1-iteration demo training with --exact: config.yaml and the MLflow run say so (real sqlite store)."""
    pytest.importorskip("skimage")
    from mlflow import MlflowClient

    from mair.cli import main
    from mair.data.demo import build_demo

    build_demo(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert (
            main(
                [
                    "train",
                    "sr_light_t_x2",
                    "--scope",
                    "demo",
                    "--device",
                    "cpu",
                    "--data-dir",
                    str(tmp_path / "data"),
                    "--tracking-uri",
                    store,
                    "--max-iters",
                    "1",
                    "--no-val",
                    "--num-workers",
                    "0",
                    "--exact",
                ]
            )
            == 0
        )
    finally:
        torch.set_num_threads(threads)
    run_dir = tmp_path / "runs" / "demo" / "sr_light_t_x2"
    run = yaml.safe_load((run_dir / "config.yaml").read_text())["run"]
    assert run["runtime"]["path"] == "exact" and run["precision"] == "exact" and run["compile"] is None
    assert run["runtime"]["describe"] == "exact path on cpu: scan torch, fp32, eager"
    run_id = json.loads((run_dir / "mlflow_run.json").read_text())["run_id"]
    tags = MlflowClient(tracking_uri=store).get_run(run_id).data.tags
    assert tags["mair.path"] == "exact" and tags["mair.precision"] == "exact" and tags["mair.compile"] == "off"


# ------------------------------------------------------------------------------------------------ evaluation

TINY_MAIR = {
    "img_size": 16,
    "embed_dim": 8,
    "depths": [1],
    "d_state": 2,
    "ssm_ratio": 1.0,
    "mlp_ratio": 1.0,
    "upscale": 2,
    "upsampler": "pixelshuffledirect",
    "scan_len": 4,
}


def test_evaluation_records_its_path_and_restarts_when_the_path_changes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import cv2
    import numpy as np

    from mair.evaluate import runner
    from mair.models import from_official
    from mair.models.checkpoint import save_weights

    root = tmp_path / "set5"
    rng = np.random.default_rng(0)
    for i in range(2):
        hr = rng.integers(0, 256, (24, 28, 3), dtype=np.uint8)
        for sub, img in (("HR", hr), ("LR_bicubic/X2", cv2.resize(hr, (14, 12), interpolation=cv2.INTER_AREA))):
            (root / sub).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / sub / f"img{i}.png"), img)
    (root / ".prepared.json").write_text("{}")
    torch.manual_seed(0)
    weights = tmp_path / "tiny.pth"
    save_weights(from_official("MaIR", **TINY_MAIR), weights)
    from dataclasses import replace

    from mair.experiments import load
    from mair.experiments.spec import FrozenMapping, Network

    light = load("sr_light_t_x2")  # its test section, Set5 only, with a tiny network
    exp = replace(
        light,
        id="tiny_sr",
        network=Network("MaIR", FrozenMapping(TINY_MAIR)),
        test=replace(light.test, datasets=light.test.datasets[:1]),
    )
    assert light.test.datasets[0].id == "set5" and light.test.metrics.crop_border == 2

    def run(exact: bool) -> dict[str, Any]:
        return runner.evaluate(
            exp,
            weights,
            dataset_roots={"set5": root},
            results_dir=tmp_path / "res",
            device="cpu",
            track=False,
            progress=False,
            exact=exact,
        )[0]

    fast = run(False)
    assert fast["runtime"]["path"] == "default" and fast["runtime"]["precision"] == "fp32"
    assert "default path on cpu" in capsys.readouterr().err
    exact = run(True)
    assert exact["runtime"]["path"] == "exact"
    assert "was made with other weights or settings; starting it again" in capsys.readouterr().err
    saved = json.loads((tmp_path / "res" / "paper" / "eval" / "tiny_sr" / "set5.json").read_text())
    assert saved["runtime"]["path"] == "exact"
    assert exact["metrics"]["psnr"] == pytest.approx(fast["metrics"]["psnr"], abs=1e-3)  # the same network on CPU


def test_padding_a_tile_changes_the_output_so_inference_does_not_pad_to_one_shape() -> None:
    """Why inference is not compiled by default: each image size would compile again, and padding tiles to one
    shape is no way out, because MaIR's scan runs through the padding (docs/evaluation.md)."""
    import torch.nn.functional as F

    from mair.models import from_official

    torch.manual_seed(0)
    model = from_official("MaIR", **{**TINY_MAIR, "depths": [1]}).double().eval()
    x = torch.rand(1, 3, 12, 16, dtype=torch.float64)
    with torch.no_grad():
        plain = model(x)
        padded = model(F.pad(x, (0, 8, 0, 4), mode="reflect"))[..., :24, :32]
    assert (plain - padded).abs().max() > 1e-3


# ------------------------------------------------------------------------------------------------ compile cache


def test_cache_folders_default_override_and_preset(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path / "home")}
    assert compile_cache.default_root(env) == Path.home() / ".cache" / "mair" / "compile"
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
    assert compile_cache.default_root(env) == tmp_path / "xdg" / "mair" / "compile"
    env[compile_cache.ENV_VAR] = str(tmp_path / "mine")
    cache = compile_cache.setup(env)
    assert env[compile_cache.INDUCTOR_VAR] == str(tmp_path / "mine" / "inductor") and cache.inductor.is_dir()
    assert env[compile_cache.TRITON_VAR] == str(tmp_path / "mine" / "triton") and cache.triton.is_dir()
    assert not cache.inductor_preset and "(from" not in cache.describe()
    preset = {compile_cache.ENV_VAR: str(tmp_path / "mine"), compile_cache.TRITON_VAR: str(tmp_path / "t")}
    cache = compile_cache.setup(preset)
    assert preset[compile_cache.TRITON_VAR] == str(tmp_path / "t") and cache.triton_preset
    assert f"Triton {tmp_path / 't'} (from TRITON_CACHE_DIR)" in cache.describe()
    # Inductor writes its own /tmp default into the environment; that is not a user's choice.
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    inductor_default = {compile_cache.ENV_VAR: str(tmp_path / "mine"), compile_cache.INDUCTOR_VAR: default_cache_dir()}
    assert compile_cache.setup(inductor_default).inductor == tmp_path / "mine" / "inductor"


@pytest.mark.slow
def test_torch_compile_writes_into_and_reuses_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real Inductor compile on the CPU after :func:`compile_cache.setup`: its files land in our folder, and
    after a reset the same graph is loaded from there (an FX-graph cache hit) instead of compiled again."""
    if shutil.which("g++") is None and shutil.which("c++") is None:
        pytest.skip("Inductor's CPU backend needs a C++ compiler")
    from torch._dynamo.utils import counters

    monkeypatch.setenv(compile_cache.ENV_VAR, str(tmp_path / "cache"))
    cache = resolve_runtime("cpu", compile=True).apply()
    assert cache is not None and cache.inductor == tmp_path / "cache" / "inductor"

    def fn(x: torch.Tensor) -> torch.Tensor:
        return (x.sin() * 3 + x.cos()).sum(dim=0)

    x = torch.randn(4, 8)
    torch._dynamo.reset()
    counters.clear()
    assert torch.allclose(torch.compile(fn)(x), fn(x), atol=1e-6)
    written = [p for p in cache.inductor.rglob("*") if p.is_file()]
    assert written, "Inductor wrote nothing into the compile cache"
    assert counters["inductor"]["fxgraph_cache_miss"] >= 1
    torch._dynamo.reset()
    counters.clear()
    assert torch.allclose(torch.compile(fn)(x), fn(x), atol=1e-6)
    assert counters["inductor"]["fxgraph_cache_hit"] >= 1
    torch._dynamo.reset()


# ------------------------------------------------------------------------------------------------ bench


def _bench_args(*argv: str) -> argparse.Namespace:
    from mair.bench.cli import _add_arguments

    parser = argparse.ArgumentParser()
    _add_arguments(parser)
    return parser.parse_args(list(argv))


def test_bench_default_times_the_resolved_settings_and_records_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mair.bench import workloads as bench

    monkeypatch.setitem(bench.WORKLOADS, "tiny_train", bench.Workload("tiny_train", "train", "sr_light_t_x4", 1, 8))
    monkeypatch.setitem(bench.WORKLOADS, "tiny_infer", bench.Workload("tiny_infer", "infer", "sr_light_t_x4", 1, 8))
    out = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for exact in (False, True):
            flags = ["--exact"] if exact else []
            assert (
                bench.main(
                    _bench_args(
                        "tiny_train",
                        "tiny_infer",
                        "--default",
                        *flags,
                        "--device",
                        "cpu",
                        "--warmup",
                        "0",
                        "--repeat",
                        "1",
                        "--out",
                        str(out),
                    )
                )
                == 0
            )
            record = json.loads(out.read_text())
            assert record["default"] is True and record["exact"] is exact
            rows = {r["workload"]: r for r in record["rows"]}
            assert set(rows) == {"tiny_train", "tiny_infer"}
            expected = resolve_runtime("cpu", exact).as_dict()
            assert rows["tiny_train"]["runtime"] == expected
            assert rows["tiny_infer"]["runtime"] == resolve_runtime("cpu", exact, workload="infer").as_dict()
            assert rows["tiny_train"]["precision"] == ("exact" if exact else "fp32")
            assert rows["tiny_train"]["backend"] == "torch" and rows["tiny_train"]["compiled"] is False
            assert rows["tiny_train"]["adam"] == "torch default" and rows["tiny_infer"]["adam"] is None
            assert rows["tiny_train"]["ms_median"] > 0
    finally:
        torch.set_num_threads(threads)


def test_bench_default_takes_no_settings_of_its_own() -> None:
    from mair.bench import workloads as bench
    from mair.common.errors import CommandError

    with pytest.raises(CommandError, match="drop --precision, --compile-mode"):
        bench.main(_bench_args("scan_fwd", "--default", "--precision", "tf32", "--compile-mode", "default"))
    with pytest.raises(CommandError, match="--exact goes with --default"):
        bench.main(_bench_args("scan_fwd", "--exact"))


# ------------------------------------------------------------------------------------------------ pipeline


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("snakemake") is None, reason="snakemake is not installed")
def test_pipeline_precision_reaches_every_training_and_evaluation(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "tests"))
    try:
        from test_workflow import copy_repo, parse_dry_run, snakemake
    finally:
        sys.path.remove(str(REPO / "tests"))
    repo = copy_repo(tmp_path / "repo")
    target = ["results/trained/demo/eval/sr_light_t_x2/set5.json"]
    default = parse_dry_run(snakemake(repo, "-n", "-p", *target).stdout)
    exact = parse_dry_run(snakemake(repo, "-n", "-p", *target, "--config", "precision=exact").stdout)
    for jobs, flagged in ((default, False), (exact, True)):
        commands = [j["shell"] for j in jobs if j["rule"] == "train" or j["rule"].startswith("evaluate_")]
        assert any("mair train" in c for c in commands) and any("mair evaluate" in c for c in commands)
        assert all((" --exact " in c) is flagged for c in commands), commands
    bad = snakemake(repo, "-n", *target, "--config", "precision=fastest", check=False)
    assert bad.returncode != 0 and "precision" in bad.stdout + bad.stderr
    assert os.environ.get("MAIR_SCAN_BACKEND") is None


@pytest.mark.slow
def test_compiled_tiles_restore_the_same_image_as_eager() -> None:
    """``mair restore --tile --compile``: one tile shape for the whole image, compiled once (here with the
    aot_eager compiler, no code generation), the same result as eager."""
    import numpy as np

    from mair.evaluate.restore import Restorer, _compiled_for_tiles
    from mair.models import from_official
    from mair.models.scan import custom_ops

    torch.manual_seed(0)
    model = from_official("MaIR", **TINY_MAIR).eval()
    image = np.random.default_rng(0).random((22, 27, 3), dtype=np.float32)
    eager = Restorer(model, scale=2, tile=16, tile_overlap=4).restore_array(image)
    runtime = resolve_runtime("cpu", workload="infer", compile_backend="aot_eager")
    try:
        compiled = Restorer(_compiled_for_tiles(model, runtime), scale=2, tile=16, tile_overlap=4)
        out = compiled.restore_array(image)
    finally:
        custom_ops.enable(None)
        torch._dynamo.reset()
    assert out.shape == eager.shape == (44, 54, 3)
    np.testing.assert_allclose(out, eager, rtol=1e-5, atol=1e-5)


def test_a_scan_backend_asked_for_that_cannot_run_here_is_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """mamba_ssm runs on CUDA only: asking for it on the CPU, by the switch or by name, is refused before anything
    runs (it was a traceback from deep inside the first forward), and ``mair info`` still reports it."""
    from mair.cli import main
    from mair.runtime.info import runtime_info

    with pytest.raises(RuntimeSettingsError, match=r"^scan backend 'mamba' cannot run on cpu: .*mamba"):
        resolve_runtime("cpu", scan_backend="mamba")
    monkeypatch.setenv("MAIR_SCAN_BACKEND", "mamba")
    for exact in (False, True):
        with pytest.raises(RuntimeSettingsError, match=r"^MAIR_SCAN_BACKEND=mamba cannot run on cpu"):
            resolve_runtime("cpu", exact, workload="infer")
    assert runtime_info("cpu")["workloads"]["train"]["scan_backend"].startswith("unavailable")

    for argv in (
        ["train", "sr_light_t_x2", "--scope", "demo", "--device", "cpu", "--no-mlflow"],
        ["bench", "sr_light_t_x4_train", "--default", "--device", "cpu"],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"mair {argv[0]}: error: MAIR_SCAN_BACKEND=mamba cannot run"), err
