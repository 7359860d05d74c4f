"""The trainer end to end on demo-scale experiments (CPU): batch plans, errors before any step, resume after
SIGTERM bit for bit, DDP with gloo against gradient accumulation, x2 initialisation, the GPU benchmark dry run."""

from __future__ import annotations

import copy
import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml

from mair.cli import main as mair_main
from mair.experiments import load
from mair.models import from_official
from mair.models.checkpoint import read_state_dict, save_weights
from mair.train.launch import EXIT_STOPPED, DistEnv, detect_env, first_slurm_host, torchrun_command
from mair.train.schedules import lr_at
from mair.train.trainer import TrainError, TrainOptions, init_weights_source, plan_batch, val_due

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded demo data (``mair data demo``) in a temporary data root."""
    pytest.importorskip("skimage")
    from mair.data.demo import build_demo

    root = tmp_path_factory.mktemp("demo-data")
    build_demo(root)
    return root


@pytest.fixture
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the CPU is shared; results must not depend on it anyway
    yield
    torch.set_num_threads(threads)


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("MLFLOW_TRACKING_URI", None)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_STEP_ID"):
        env.pop(key, None)
    return env


def _train_cmd(experiment: str, data: Path, run_dir: Path, results: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mair.cli",
        "train",
        experiment,
        "--scope",
        "demo",
        "--device",
        "cpu",
        "--data-dir",
        str(data),
        "--run-dir",
        str(run_dir),
        "--results-dir",
        str(results),
        "--no-mlflow",
        "--log-every",
        "1",
        "--num-workers",
        "0",
        *extra,
    ]


def _log_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _wait_for_iteration(log: Path, iteration: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"training ended early:\n{proc.communicate()[1][-3000:]}"
        if log.is_file():
            rows = log.read_text().splitlines()[1:]
            if rows and int(rows[-1].split(",")[0]) >= iteration:
                return
        time.sleep(0.02)
    raise AssertionError(f"no iteration {iteration} in {log} after {timeout} s")


# ------------------------------------------------------------------------------------------------ pure parts


def test_batch_plan_keeps_the_paper_effective_batch() -> None:
    sr = load("sr_classic_x2")  # 4 per GPU x 8 GPUs = 32
    assert [(p.accum, p.effective_batch) for p in (plan_batch(sr, w) for w in (8, 4, 2, 1))] == [
        (1, 32),
        (2, 32),
        (4, 32),
        (8, 32),
    ]
    with pytest.raises(TrainError, match=r"effective batch 32 .* cannot be kept on 3 processes.*\[1, 2, 4, 8\]"):
        plan_batch(sr, 3)
    loose = plan_batch(sr, 3, allow_mismatch=True)
    assert (loose.accum, loose.effective_batch, loose.exact) == (3, 36, False)
    dehaze = load("dehaze_its")  # 6 x 2 = 12
    assert plan_batch(dehaze, 1).accum == 2 and plan_batch(dehaze, 2).accum == 1
    with pytest.raises(TrainError):
        plan_batch(dehaze, 4)
    cdn = load("dn_color_s15")  # 1 x 8
    assert plan_batch(cdn, 1).accum == 8


def test_two_speed_validation_schedule() -> None:
    sr = load("sr_classic_x2")  # 25k before 400k, then 5k
    assert [val_due(sr, i) for i in (5000, 25000, 30000, 395000, 400000, 405000, 500000)] == [
        False,
        True,
        False,
        False,
        True,
        True,
        True,
    ]
    real = load("dn_real")  # 800k > total_iter: never during training
    assert not any(val_due(real, i) for i in (4000, 200000, 400000, 718250))


def test_init_source_and_the_t_x3_quirk(tmp_path: Path) -> None:
    t3 = load("sr_light_t_x3")
    path, strict, note = init_weights_source(t3, TrainOptions("sr_light_t_x3", results_dir=tmp_path))
    assert path == tmp_path / "paper" / "weights" / "sr_light_s_x2.pth" and strict is False
    assert "official" in note and "--init-fix-t-x3" in note
    path, _, note = init_weights_source(
        t3, TrainOptions("sr_light_t_x3", scope="demo", results_dir=tmp_path, init_fix_t_x3=True)
    )
    assert path == tmp_path / "demo" / "weights" / "sr_light_t_x2.pth"
    x4 = load("sr_classic_x4")
    assert init_weights_source(x4, TrainOptions("sr_classic_x4", results_dir=tmp_path))[0].name == ("sr_classic_x2.pth")
    s25 = load("dn_color_s25")
    assert init_weights_source(s25, TrainOptions("dn_color_s25", results_dir=tmp_path))[1] is True
    explicit = init_weights_source(x4, TrainOptions("sr_classic_x4", init_weights=tmp_path / "w.pth"))
    assert explicit[0] == tmp_path / "w.pth" and explicit[1] is False
    assert init_weights_source(load("sr_classic_x2"), TrainOptions("x"))[0] is None


def test_launcher_environments() -> None:
    assert detect_env({}) == DistEnv()
    tr = detect_env(
        {
            "RANK": "3",
            "WORLD_SIZE": "4",
            "LOCAL_RANK": "1",
            "LOCAL_WORLD_SIZE": "2",
            "MASTER_ADDR": "h",
            "MASTER_PORT": "1234",
        }
    )
    assert (tr.rank, tr.world_size, tr.local_rank, tr.launcher, tr.master_port) == (3, 4, 1, "torchrun", 1234)
    slurm = detect_env(
        {
            "SLURM_PROCID": "5",
            "SLURM_STEP_ID": "0",
            "SLURM_STEP_NUM_TASKS": "8",
            "SLURM_LOCALID": "1",
            "SLURM_STEP_NODELIST": "gpu[07-08,11]",
            "SLURM_JOB_ID": "123456",
        }
    )
    assert (slurm.rank, slurm.world_size, slurm.local_rank, slurm.master_addr) == (5, 8, 1, "gpu07")
    assert slurm.launcher == "slurm" and slurm.master_port == 20000 + 123456 % 20000
    # a plain command inside an sbatch script (no srun step) is a single process
    assert detect_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_JOB_NODELIST": "n1"}) == DistEnv()
    assert first_slurm_host("node1,node2") == "node1" and first_slurm_host("a[3-4]") == "a3"
    cmd = torchrun_command(2, ["train", "x"])
    assert cmd[cmd.index("--rdzv-endpoint") + 1] == "localhost:0" and "--master-port" not in cmd
    assert cmd[-4:] == ["-m", "mair.cli", "train", "x"]


def test_train_cli_registration_imports_no_torch() -> None:
    code = (
        "import argparse, sys\nfrom mair.train import cli\np = argparse.ArgumentParser()\n"
        "cli.register(p.add_subparsers())\nprint('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), check=True)
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------------------------------------ errors


def test_unknown_experiment(capsys: pytest.CaptureFixture[str]) -> None:
    assert mair_main(["train", "sr_classic_x5", "--no-mlflow"]) == 2
    err = capsys.readouterr().err
    assert "unknown experiment 'sr_classic_x5'" in err and "sr_classic_x2" in err and "dehaze_r6k" in err


def test_missing_dataset_named_with_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = mair_main(
        [
            "train",
            "sr_classic_x2",
            "--data-dir",
            str(tmp_path / "nodata"),
            "--no-mlflow",
            "--run-dir",
            str(tmp_path / "run"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "'df2k'" in err and str(tmp_path / "nodata" / "prepared" / "df2k") in err
    assert "mair data prepare df2k" in err
    assert not (tmp_path / "run").exists()
    assert (
        mair_main(["train", "sr_classic_x2", "--scope", "demo", "--data-dir", str(tmp_path / "nodata"), "--no-mlflow"])
        == 2
    )
    assert "mair data demo" in capsys.readouterr().err


def test_batch_mismatch_refused_before_start(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = mair_main(
        ["train", "sr_classic_x2", "--gpus", "3", "--device", "cpu", "--no-mlflow", "--run-dir", str(tmp_path / "run")]
    )
    assert code == 2
    assert "--allow-batch-mismatch" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_compile_settings() -> None:
    from mair.train.trainer import compile_settings

    def opts(**kw: object) -> TrainOptions:
        return TrainOptions(experiment="sr_light_t_x2", **kw)  # type: ignore[arg-type]

    assert compile_settings(opts(), 1) == (None, None)
    assert compile_settings(opts(compile="aot_eager"), 4) == ("aot_eager", None)
    assert compile_settings(opts(compile_mode="reduce-overhead"), 1) == ("inductor", "reduce-overhead")
    assert compile_settings(opts(compile="inductor", compile_mode="default"), 2) == ("inductor", "default")
    with pytest.raises(TrainError, match="needs the inductor compiler, not --compile aot_eager"):
        compile_settings(opts(compile="aot_eager", compile_mode="default"), 1)
    with pytest.raises(TrainError, match="must be one of"):
        compile_settings(opts(compile_mode="fast"), 1)
    # CUDA graphs under DDP: checked on 2 H100s (benchmarks/train_gpu.py --ddp-compile-modes, docs/benchmarks.md)
    assert compile_settings(opts(compile_mode="reduce-overhead"), 2) == ("inductor", "reduce-overhead")


def test_image_smaller_than_patch(tmp_path: Path, demo_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    import cv2

    data = tmp_path / "data"
    shutil.copytree(demo_data / "demo" / "prepared" / "div2k", data / "demo" / "prepared" / "div2k")
    shutil.copytree(demo_data / "demo" / "prepared" / "urban100", data / "demo" / "prepared" / "urban100")
    hr = sorted((data / "demo/prepared/div2k/HR").iterdir())[0]
    cv2.imwrite(str(hr), cv2.imread(str(hr))[:20, :24])
    lr = data / "demo/prepared/div2k/LR_bicubic/X2" / hr.name
    cv2.imwrite(str(lr), cv2.imread(str(lr))[:10, :12])
    code = mair_main(
        [
            "train",
            "sr_light_t_x2",
            "--scope",
            "demo",
            "--device",
            "cpu",
            "--data-dir",
            str(data),
            "--no-mlflow",
            "--run-dir",
            str(tmp_path / "run"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and lr.name in err and "10x12" in err and "16x16" in err
    assert not (tmp_path / "run").exists()


def test_checkpoint_of_another_architecture(
    tmp_path: Path, demo_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    unet = load("dehaze_its", "demo")
    wrong = tmp_path / "unet.pth"
    save_weights(from_official(unet.network.arch, **unet.network.constructor_kwargs()), wrong)
    for experiment in ("sr_light_t_x3", "dn_color_s25"):  # non-strict init (x3 from x2), strict init (s25)
        run = tmp_path / experiment
        code = mair_main(
            [
                "train",
                experiment,
                "--scope",
                "demo",
                "--device",
                "cpu",
                "--data-dir",
                str(demo_data),
                "--init-weights",
                str(wrong),
                "--no-mlflow",
                "--run-dir",
                str(run),
                "--no-val",
            ]
        )
        err = capsys.readouterr().err
        assert code == 2, err
        assert str(wrong) in err and ("does not fit" in err or "no tensor fits" in err), err
        assert not list(run.glob("models/*")) and not (run / "train_log.csv").exists()


def test_missing_init_weights_named(tmp_path: Path, demo_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = mair_main(
        [
            "train",
            "sr_light_s_x3",
            "--scope",
            "demo",
            "--device",
            "cpu",
            "--data-dir",
            str(demo_data),
            "--results-dir",
            str(tmp_path / "results"),
            "--no-mlflow",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert str(tmp_path / "results" / "demo" / "weights" / "sr_light_s_x2.pth") in err
    assert "mair train sr_light_s_x2 --scope demo" in err


# ------------------------------------------------------------------------------------------------ training


def test_x3_initialised_from_x2_non_strict(
    tmp_path: Path, demo_data: Path, one_thread: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    x2 = load("sr_light_s_x2", "demo")
    torch.manual_seed(1)
    x2_net = from_official(x2.network.arch, **x2.network.constructor_kwargs())
    save_weights(x2_net, tmp_path / "results" / "trained" / "demo" / "weights" / "sr_light_s_x2.pth")
    code = mair_main(
        [
            "train",
            "sr_light_s_x3",
            "--scope",
            "demo",
            "--device",
            "cpu",
            "--data-dir",
            str(demo_data),
            "--max-iters",
            "2",
            "--no-mlflow",
            "--log-every",
            "1",
        ]
    )
    assert code == 0
    run = tmp_path / "runs" / "demo" / "sr_light_s_x3"
    config = yaml.safe_load((run / "config.yaml").read_text())
    report = config["run"]["init_report"]
    assert "skipped" in report and "upsample" in report  # the x2 upsampler does not fit x3
    assert config["run"]["accum"] == 1 and config["run"]["effective_batch"] == 2
    assert config["experiment"]["id"] == "sr_light_s_x3" and config["experiment"]["scope"] == "demo"
    assert not (tmp_path / "results" / "demo" / "weights" / "sr_light_s_x3.pth").exists()  # --max-iters < total
    assert sorted(p.name for p in (run / "models").iterdir()) == ["net_g_2.pth"]
    rows = _log_rows(run / "train_log.csv")
    exp = load("sr_light_s_x3", "demo")
    assert config["experiment"] == exp.to_dict()  # the whole experiment, as its file and demo block say
    assert [(int(r["iter"]), float(r["lr"])) for r in rows] == [(i, pytest.approx(lr_at(exp, i))) for i in (1, 2)]


def test_sigterm_then_resume_is_bit_identical(tmp_path: Path, demo_data: Path) -> None:
    """A run killed by SIGTERM mid-way and resumed ends with exactly the weights of an uninterrupted run."""
    exp = "dn_color_s15"  # stochastic depth, on-the-fly noise, Charbonnier: every RNG path of the top level
    full = subprocess.Popen(
        _train_cmd(exp, demo_data, tmp_path / "full", tmp_path / "res_full"),
        env=_env(),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    cut_cmd = _train_cmd(exp, demo_data, tmp_path / "cut", tmp_path / "res_cut", "--checkpoint-every", "7")
    cut = subprocess.Popen(
        cut_cmd, env=_env(), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    _wait_for_iteration(tmp_path / "cut" / "train_log.csv", 3, cut)
    cut.send_signal(signal.SIGTERM)
    _, err = cut.communicate(timeout=240)
    assert cut.returncode == EXIT_STOPPED, err[-3000:]
    marker = json.loads((tmp_path / "cut" / "STOPPED.json").read_text())
    stopped = marker["iteration"]
    assert 3 <= stopped < 30 and marker["signal"] == "SIGTERM"
    assert (tmp_path / "cut" / "training_states" / f"{stopped}.state").is_file()
    assert not (tmp_path / "res_cut").exists()
    resumed = subprocess.run(cut_cmd, env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming {exp}" in resumed.stderr
    _, err = full.communicate(timeout=300)
    assert full.returncode == 0, err[-3000:]
    a, _ = read_state_dict(tmp_path / "res_full" / "demo" / "weights" / f"{exp}.pth")
    b, _ = read_state_dict(tmp_path / "res_cut" / "demo" / "weights" / f"{exp}.pth")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows_full = [(r["iter"], r["loss"], r["lr"]) for r in _log_rows(tmp_path / "full" / "train_log.csv")]
    rows_cut = [(r["iter"], r["loss"], r["lr"]) for r in _log_rows(tmp_path / "cut" / "train_log.csv")]
    assert rows_cut == rows_full and len(rows_full) == 30  # rows after the checkpoint were dropped on resume
    assert not (tmp_path / "cut" / "STOPPED.json").exists()
    # only the last --keep 3 checkpoints remain
    assert len(list((tmp_path / "cut" / "training_states").glob("*.state"))) <= 3


def _ddp_experiment(tmp_path: Path) -> Path:
    """sr_light_t_x2 whose demo runs with 2 per process x 2 processes (effective 4), without stochastic depth."""
    doc = yaml.safe_load((REPO / "params" / "experiments" / "sr_light_t_x2.yaml").read_text())
    doc = copy.deepcopy(doc)
    doc["demo"]["network_kwargs"]["drop_path_rate"] = 0.0
    doc["demo"]["train"].update({"batch_per_gpu": 2, "gpus": 2, "effective_batch": 4})
    path = tmp_path / "sr_light_t_x2_ddp.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_ddp_gloo_stop_resume_and_accumulation_equivalence(tmp_path: Path, demo_data: Path) -> None:
    """2 processes (torchrun started by ``--gpus 2``, gloo), stopped by SIGUSR1 to the launcher and resumed,
    against 1 process with gradient accumulation 2: same samples, same losses up to float rounding."""
    exp_file = str(_ddp_experiment(tmp_path))
    single = subprocess.Popen(
        _train_cmd(exp_file, demo_data, tmp_path / "acc", tmp_path / "res_acc", "--no-val"),
        env=_env(),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    ddp_cmd = _train_cmd(
        exp_file, demo_data, tmp_path / "ddp", tmp_path / "res_ddp", "--gpus", "2", "--checkpoint-every", "5"
    )
    ddp = subprocess.Popen(
        ddp_cmd, env=_env(), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    _wait_for_iteration(tmp_path / "ddp" / "train_log.csv", 2, ddp)
    ddp.send_signal(signal.SIGUSR1)  # SLURM's early warning; the launcher forwards it through torchrun
    _, err = ddp.communicate(timeout=300)
    assert ddp.returncode == EXIT_STOPPED, err[-4000:]
    marker = json.loads((tmp_path / "ddp" / "STOPPED.json").read_text())
    assert marker["iteration"] < 30 and marker["signal"] == "SIGUSR1"
    resumed = subprocess.run(ddp_cmd, env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    _, err = single.communicate(timeout=300)
    assert single.returncode == 0, err[-3000:]
    ddp_cfg = yaml.safe_load((tmp_path / "ddp" / "config.yaml").read_text())["run"]
    acc_cfg = yaml.safe_load((tmp_path / "acc" / "config.yaml").read_text())["run"]
    assert (ddp_cfg["world_size"], ddp_cfg["accum"], ddp_cfg["effective_batch"]) == (2, 1, 4)
    assert (acc_cfg["world_size"], acc_cfg["accum"], acc_cfg["effective_batch"]) == (1, 2, 4)
    ddp_rows = {int(r["iter"]): float(r["loss"]) for r in _log_rows(tmp_path / "ddp" / "train_log.csv")}
    acc_rows = {int(r["iter"]): float(r["loss"]) for r in _log_rows(tmp_path / "acc" / "train_log.csv")}
    assert sorted(ddp_rows) == sorted(acc_rows) == list(range(1, 31))
    assert max(abs(ddp_rows[i] - acc_rows[i]) for i in ddp_rows) < 1e-4
    a, _ = read_state_dict(tmp_path / "res_ddp" / "demo" / "weights" / "sr_light_t_x2.pth")
    b, _ = read_state_dict(tmp_path / "res_acc" / "demo" / "weights" / "sr_light_t_x2.pth")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-3
    val = _log_rows(tmp_path / "ddp" / "val_log.csv")
    assert [r["iter"] for r in val] == ["30"] and float(val[0]["psnr"]) > 10  # rank 0 validated at the end
    assert json.loads((tmp_path / "ddp" / "best.json").read_text())["iter"] == 30


def test_gpu_benchmark_dry_run(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "train_gpu.py"),
            "--device",
            "cpu",
            "--tiny",
            "--experiments",
            "sr_light_t_x2",
            "dn_real",
            "--iters",
            "1",
            "--out",
            str(out),
        ],
        env=_env(),
        cwd=tmp_path,
        check=True,
        capture_output=True,
        timeout=300,
    )
    report = json.loads(out.read_text())
    entries = report["throughput"]
    assert [e["experiment"] for e in entries] == ["sr_light_t_x2", "dn_real", "dn_real", "dn_real"]
    assert all(e["it_per_s"] > 0 for e in entries) and "ddp_vs_accum" not in report


def test_gpu_benchmark_ddp_dry_run(tmp_path: Path) -> None:
    """(a) alone on the CPU (gloo): the 2-process run against 1 process x accumulation 2, losses compared."""
    out = tmp_path / "bench.json"
    subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "train_gpu.py"),
            "--device",
            "cpu",
            "--tiny",
            "--ddp",
            "--ddp-iters",
            "3",
            "--no-throughput",
            "--out",
            str(out),
        ],
        env=_env(),
        cwd=tmp_path,
        check=True,
        capture_output=True,
        timeout=600,
    )
    report = json.loads(out.read_text())
    ddp = report["ddp_vs_accum"]
    assert report["throughput"] == [] and ddp["iterations"] == 3, report
    assert ddp["max_abs_loss_diff"] < 1e-4 and set(ddp["seconds"]) == {"accum2", "ddp2"}


class _KeyDataset(torch.utils.data.Dataset):
    """Returns its (epoch, k) key as a tensor: enough to drive a BatchStream."""

    def __len__(self) -> int:
        return 5

    def __getitem__(self, key):
        return {"key": torch.tensor(key)}


def test_batch_stream_close_stops_its_worker_processes():
    from mair.train.sampler import EnlargedSampler
    from mair.train.trainer import BatchStream

    stream = BatchStream(_KeyDataset(), EnlargedSampler(5, ratio=2), batch_size=2, num_workers=2, pin_memory=False)
    for _ in range(7):  # crosses an epoch boundary (5 batches of 2 per epoch): the persistent workers are reused
        batch = stream.next()
    assert batch["key"].shape == (2, 2)
    workers = list(stream.loader._iterator._workers)
    assert len(workers) == 2 and all(w.is_alive() for w in workers)
    stream.close()
    assert not any(w.is_alive() for w in workers)
    assert stream.loader._iterator is None
    stream.close()  # closing twice is harmless


def test_compiled_training_matches_eager(
    tmp_path: Path, demo_data: Path, one_thread: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--compile`` (here the ``aot_eager`` compiler: Dynamo and AOTAutograd without code generation, so it
    runs in seconds on a CPU) trains to the same losses and weights as eager, and saves plain weights."""
    from mair.models.scan import custom_ops

    monkeypatch.chdir(tmp_path)
    exp_file = str(_ddp_experiment(tmp_path))  # no stochastic depth: both runs see identical computations

    def run(name: str, *extra: str) -> list[float]:
        code = mair_main(
            [
                "train",
                exp_file,
                "--scope",
                "demo",
                "--device",
                "cpu",
                "--data-dir",
                str(demo_data),
                "--run-dir",
                str(tmp_path / name),
                "--results-dir",
                str(tmp_path / f"res_{name}"),
                "--max-iters",
                "3",
                "--no-mlflow",
                "--no-val",
                "--log-every",
                "1",
                *extra,
            ]
        )
        assert code == 0
        return [float(r["loss"]) for r in _log_rows(tmp_path / name / "train_log.csv")]

    try:
        eager = run("eager")
        compiled = run("compiled", "--compile", "aot_eager")
        assert custom_ops.is_enabled()  # the compiled run went through the scan's custom ops
    finally:
        custom_ops.enable(None)
        torch._dynamo.reset()
    assert len(eager) == len(compiled) == 3
    assert compiled == pytest.approx(eager, rel=1e-5, abs=1e-6)
    a, _ = read_state_dict(tmp_path / "eager" / "models" / "net_g_3.pth")
    b, _ = read_state_dict(tmp_path / "compiled" / "models" / "net_g_3.pth")
    assert a.keys() == b.keys() and not any(k.startswith("_orig_mod") for k in b)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4
    config = yaml.safe_load((tmp_path / "compiled" / "config.yaml").read_text())
    assert config["run"]["compile"] == "aot_eager"
