"""Hostile and broken input on the runtime side (train, evaluate, restore, bench, tables, the scan op).

Every probe runs the real command (in process through ``mair.cli.main``, or as ``python -m mair`` where a
separate process is needed: locks, resource limits, kills) and checks what a user sees: one line naming the
file or option and what was expected, no traceback, an honest exit status; nothing lost or reported stale.
"""

from __future__ import annotations

import json
import math
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
import yaml

from mair.cli import main as mair_main

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------ helpers


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded demo data (``mair data demo``) in a temporary data root."""
    pytest.importorskip("skimage")
    from mair.data.demo import build_demo

    root = tmp_path_factory.mktemp("demo-data")
    build_demo(root)
    return root


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), PYTHONDONTWRITEBYTECODE="1", **extra)
    env.pop("MLFLOW_TRACKING_URI", None)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_STEP_ID"):
        env.pop(key, None)
    return env


def _cli(capsys: pytest.CaptureFixture[str], *argv: Any) -> tuple[int, str]:
    code = mair_main([str(a) for a in argv])
    return code, capsys.readouterr().err


def _assert_one_line(code: int, err: str, *needles: str) -> str:
    """A user error: non-zero status, exactly one non-empty line on stderr holding every needle, no traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0, err
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _long_experiment(tmp_path: Path) -> Path:
    """sr_light_t_x2 whose demo runs for 100000 iterations (a run that is still going when probed)."""
    doc = yaml.safe_load((REPO / "params" / "experiments" / "sr_light_t_x2.yaml").read_text())
    doc["demo"]["train"].update(
        {
            "total_iter": 100000,
            "checkpoint_freq": 100000,
            "scheduler": {"type": "MultiStepLR", "milestones": [50000], "gamma": 0.5},
        }
    )
    doc["demo"]["val"] = {"val_freq": 100000, "val_freq_final": 100000, "val_milestone": 100000}
    path = tmp_path / "sr_light_t_x2_long.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _train_argv(run_dir: Path, data: Path, results: Path, *extra: Any, experiment: Any = "sr_light_t_x2") -> list[str]:
    return [
        "train",
        str(experiment),
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
        *[str(e) for e in extra],
    ]


def _demo_weights(tmp_path: Path, experiment: str = "sr_classic_x2") -> Path:
    """Random weights of ``experiment``'s demo network at results/demo/weights/<experiment>.pth."""
    from mair.experiments import load
    from mair.models import from_official
    from mair.models.checkpoint import save_weights

    net = load(experiment, "demo").network
    torch.manual_seed(0)
    model = from_official(net.arch, **net.constructor_kwargs())
    path = tmp_path / "results" / "demo" / "weights" / f"{experiment}.pth"
    save_weights(model, path)
    return path


def _image(path: Path, h: int = 12, w: int = 14, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    assert cv2.imwrite(str(path), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return path


def _restore_argv(tmp_path: Path, *inputs: Any, out: str = "out") -> list[str]:
    return [
        "restore",
        *[str(i) for i in inputs],
        "-o",
        str(tmp_path / out),
        "--experiment",
        "sr_classic_x2",
        "--scope",
        "demo",
        "--results-dir",
        str(tmp_path / "results"),
        "--device",
        "cpu",
        "--quiet",
    ]


# ------------------------------------------------------------------------------------------------ 9: train options


def test_binary_and_non_utf8_experiment_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("id: caf\xe9\n".encode("latin-1"))
    for path in (binary, latin1):
        code, err = _cli(capsys, "train", path, "--no-mlflow", "--run-dir", tmp_path / "run")
        _assert_one_line(code, err, str(path), "UTF-8")
    assert not (tmp_path / "run").exists()


def test_run_dir_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    afile = tmp_path / "run"
    afile.write_text("not a folder")
    code, err = _cli(capsys, "train", "sr_light_t_x2", "--scope", "demo", "--no-mlflow", "--run-dir", afile)
    _assert_one_line(code, err, str(afile), "not a folder")
    code, err = _cli(capsys, "train", "sr_light_t_x2", "--scope", "demo", "--no-mlflow", "--run-dir", afile / "sub")
    _assert_one_line(code, err, str(afile / "sub"), "not a folder")
    assert afile.read_text() == "not a folder"


@pytest.mark.parametrize(("flag", "value"), [("--num-workers", "-1"), ("--gpus", "0"), ("--gpus", "-2")])
def test_train_count_options_out_of_range(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str
) -> None:
    code, err = _cli(
        capsys, "train", "sr_light_t_x2", "--scope", "demo", "--no-mlflow", "--run-dir", tmp_path / "run", flag, value
    )
    _assert_one_line(code, err, flag, value)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_disk_full_while_writing_a_checkpoint(tmp_path: Path, demo_data: Path) -> None:
    """A real write that fails for lack of space (a file size limit: the kernel refuses the write with EFBIG,
    as a full disk refuses it with ENOSPC): one line naming the checkpoint and the bytes it needs."""
    limit = 40_000  # above the logs and config, below the demo network's weights (about 55 kB)

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails (EFBIG) instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "mair", *_train_argv(run, demo_data, tmp_path / "res", "--max-iters", "1", "--no-val")],
        env=_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=limit_file_size,
    )
    errors = [line for line in proc.stderr.splitlines() if not line.startswith("[mair train]")]
    line = _assert_one_line(proc.returncode, "\n".join(errors), "net_g_1.pth", "space")
    needed = int(line.split("needs ")[1].split(" bytes")[0].replace(",", ""))
    assert needed > limit
    assert not list(run.rglob("*.part")), "the temp file of the failed write is removed"
    assert not (run / "models" / "net_g_1.pth").exists()


# ------------------------------------------------------------------------------------------------ 4, 8: run folder


def _kill_during_atomic_write(target: Path) -> None:
    """Leave the temp file of an atomic write behind as SIGKILL does: a real process killed mid-write."""
    code = (
        "import sys, time\nfrom mair.common.atomic import atomic_open\n"
        "with atomic_open(sys.argv[1], 'wb') as h:\n    h.write(b'half a checkpoint')\n    h.flush()\n"
        "    print('writing', flush=True)\n    time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(target)], env=_env(), stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"
    proc.kill()
    proc.wait(timeout=30)


@pytest.mark.slow
def test_run_folder_lock_and_stale_temp_files(tmp_path: Path, demo_data: Path) -> None:
    """A kill mid-checkpoint leaves ``.part`` files: the next start removes them. A second ``mair train`` on
    a run folder in use is refused with one line while the first goes on."""
    run = tmp_path / "run"
    _kill_during_atomic_write(run / "models" / "net_g_15.pth")
    _kill_during_atomic_write(run / "training_states" / "15.state")
    _kill_during_atomic_write(run / "train_log.csv")
    stale = sorted(run.rglob(".*.part"))
    assert len(stale) == 3
    unrelated = run / "models" / "notes.part"
    unrelated.write_text("not ours")

    long = _long_experiment(tmp_path)
    first = subprocess.Popen(
        [sys.executable, "-m", "mair", *_train_argv(run, demo_data, tmp_path / "res", "--no-val", experiment=long)],
        env=_env(),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 240
        log = run / "train_log.csv"
        while time.monotonic() < deadline:
            assert first.poll() is None, first.communicate()[1][-3000:]
            if log.is_file() and len(log.read_text().splitlines()) > 1:
                break
            time.sleep(0.05)
        assert not any(p.exists() for p in stale), "stale temp files of the run's targets are removed"
        assert unrelated.exists()
        second = subprocess.run(
            [sys.executable, "-m", "mair", *_train_argv(run, demo_data, tmp_path / "res2", experiment=long)],
            env=_env(),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        errors = [line for line in second.stderr.splitlines() if not line.startswith("[mair train]")]
        _assert_one_line(second.returncode, "\n".join(errors), str(run), "in use")
        assert first.poll() is None, "the first run goes on"
    finally:
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=240)
    assert first.returncode == 75, err[-3000:]  # stopped by the signal, checkpoint written


def test_unread_experiment_fields_are_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Fields no code implements cannot be set: the schema refuses them with one line naming the key."""
    doc = yaml.safe_load((REPO / "params" / "experiments" / "sr_light_t_x2.yaml").read_text())
    for section, key, value in (("train", "ema_decay", 0.999), ("train", "warmup_iter", 100)):
        edited = json.loads(json.dumps(doc))
        edited[section][key] = value
        path = tmp_path / f"{key}.yaml"
        path.write_text(yaml.safe_dump(edited, sort_keys=False))
        code, err = _cli(capsys, "train", path, "--scope", "demo", "--no-mlflow", "--run-dir", tmp_path / "run")
        _assert_one_line(code, err, str(path), key)


def test_num_workers_per_gpu_is_the_default_loader_size() -> None:
    from dataclasses import replace

    from mair.experiments import load
    from mair.train.trainer import default_workers

    paper = load("sr_classic_x2")
    exp = replace(paper, train=replace(paper.train, num_workers_per_gpu=3))
    assert default_workers(exp, "cuda", 1, cpus=64) == 3
    assert default_workers(exp, "cuda", 4, cpus=8) == 1  # never more than the CPUs of a process
    none = replace(paper, train=replace(paper.train, num_workers_per_gpu=0))
    assert default_workers(none, "cuda", 1, cpus=64) == 0
    assert default_workers(exp, "cpu", 1, cpus=64) == 0


def test_validation_rgb2bgr_is_applied() -> None:
    """rgb2bgr false: the metric sees RGB where the official conversion to Y expects BGR (as the official
    validation does); true: the usual Y. Only Y-channel metrics differ."""
    from mair.evaluate import metrics as m
    from mair.evaluate.metrics import metric_images

    rng = np.random.default_rng(0)
    out, gt = (rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(2))
    same = metric_images(out, gt, rgb2bgr=True)
    swapped = metric_images(out, gt, rgb2bgr=False)
    assert np.array_equal(same[0], out) and np.array_equal(swapped[0], out[..., ::-1])
    assert m.calculate_psnr(*same, 0, True) != m.calculate_psnr(*swapped, 0, True)
    assert m.calculate_psnr(*same, 0, False) == pytest.approx(m.calculate_psnr(*swapped, 0, False))


# ------------------------------------------------------------------------------------------------ 9: bench, tables


def test_bench_refuses_unknown_names_and_unwritable_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _cli(capsys, "bench", "no_such_workload", "--device", "cpu")
    _assert_one_line(code, err, "no_such_workload")
    code, err = _cli(capsys, "bench", "scan_fwd", "--precision", "fp32,fp8", "--device", "cpu")
    _assert_one_line(code, err, "fp8", "--precision")
    afile = tmp_path / "afile"
    afile.write_text("")
    code, err = _cli(capsys, "bench", "scan_fwd", "--device", "cpu", "--out", afile / "bench.json")
    _assert_one_line(code, err, str(afile / "bench.json"))


def test_bench_exits_non_zero_when_a_workload_failed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The GPU-only backend fails on the CPU: the other results are written, the exit status says so."""
    from mair.bench import workloads as bench

    monkeypatch.setitem(bench.WORKLOADS, "tiny_infer", bench.Workload("tiny_infer", "infer", "sr_light_t_x4", 1, 12))
    out = tmp_path / "bench.json"
    code = mair_main(
        [
            "bench",
            "tiny_infer",
            "--backends",
            "torch,mamba",
            "--device",
            "cpu",
            "--warmup",
            "0",
            "--repeat",
            "1",
            "--out",
            str(out),
        ]
    )
    captured = capsys.readouterr()
    assert code == 1, captured.err
    assert [r["backend"] for r in json.loads(out.read_text())["rows"]] == ["torch"]
    assert "1 of 2 runs failed" in captured.err and "tiny_infer mamba fp32" in captured.err


def test_restore_of_an_empty_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no image here")
    code, err = _cli(capsys, *_restore_argv(tmp_path, empty))
    _assert_one_line(code, err, str(empty), "no images")
    assert not (tmp_path / "out").exists()


def test_tables_without_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _cli(
        capsys,
        "tables",
        "--scope",
        "demo",
        "--results-dir",
        tmp_path / "results",
        "--no-figures",
        "--runs-dir",
        tmp_path / "runs",
    )
    _assert_one_line(code, err, str(tmp_path / "results" / "demo" / "eval"), "mair evaluate")
    assert not (tmp_path / "results" / "demo" / "tables").exists()


# ------------------------------------------------------------------------------------------------ 9: messages


def test_random_bytes_as_weights_are_not_called_python_objects(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mair.models.checkpoint import CheckpointError, read_state_dict

    blob = tmp_path / "blob.pth"
    blob.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(CheckpointError) as info:
        read_state_dict(blob)
    assert "Python objects" not in str(info.value) and "not a PyTorch weights file" in str(info.value)
    code, err = _cli(
        capsys, "restore", _image(tmp_path / "in.png"), "-o", tmp_path / "out", "--weights", blob, "--device", "cpu"
    )
    line = _assert_one_line(code, err, str(blob), "not a PyTorch weights file")
    assert "Python objects" not in line

    class Evil:
        def __reduce__(self) -> tuple[Any, tuple[()]]:
            return (os.getcwd, ())

    evil = tmp_path / "evil.pth"
    torch.save({"params": {"w": torch.ones(1)}, "extra": Evil()}, evil)
    with pytest.raises(CheckpointError, match="Python objects"):
        read_state_dict(evil)


def test_fifo_is_not_called_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mair.models.checkpoint import CheckpointError, read_state_dict

    fifo = tmp_path / "weights.pth"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError) as info:
        read_state_dict(fifo)
    assert "no such" not in str(info.value) and "FIFO" in str(info.value)
    code, err = _cli(
        capsys, "restore", _image(tmp_path / "in.png"), "-o", tmp_path / "out", "--weights", fifo, "--device", "cpu"
    )
    line = _assert_one_line(code, err, str(fifo), "FIFO")
    assert "not found" not in line and "no such" not in line
    experiment = tmp_path / "experiment.yaml"
    os.mkfifo(experiment)
    code, err = _cli(capsys, "train", experiment, "--no-mlflow", "--run-dir", tmp_path / "run")
    assert "no such" not in _assert_one_line(code, err, str(experiment), "FIFO")
    # a FIFO named as an image: a per-file failure that says what it is
    _demo_weights(tmp_path)
    image_fifo = tmp_path / "image.png"
    os.mkfifo(image_fifo)
    code, err = _cli(capsys, *_restore_argv(tmp_path, image_fifo, tmp_path / "in.png"))
    assert code == 1 and "FIFO" in err and "no such file" not in err and "Traceback" not in err
    assert (tmp_path / "out" / "in.png").is_file()


# ------------------------------------------------------------------------------------------------ 6: restore


def test_restore_refuses_two_inputs_for_one_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _demo_weights(tmp_path)
    a, b = _image(tmp_path / "a" / "x.png", seed=1), _image(tmp_path / "b" / "x.png", seed=2)
    code, err = _cli(capsys, *_restore_argv(tmp_path, a, b))
    _assert_one_line(code, err, str(a), str(b), str(tmp_path / "out" / "x.png"))
    assert not (tmp_path / "out").exists()
    # two folders with the same relative path
    _image(tmp_path / "d1" / "sub" / "y.png", seed=3)
    _image(tmp_path / "d2" / "sub" / "y.png", seed=4)
    code, err = _cli(capsys, *_restore_argv(tmp_path, tmp_path / "d1", tmp_path / "d2"))
    _assert_one_line(code, err, str(tmp_path / "out" / "sub" / "y.png"))
    assert not (tmp_path / "out").exists()
    # the same file named twice is restored once
    code, err = _cli(capsys, *_restore_argv(tmp_path, a, tmp_path / "a" / ".." / "a" / "x.png"))
    assert code == 0, err
    assert "wrote 1 image" in err


def _huge_png(path: Path, side: int) -> None:
    """A valid 1-bit grey PNG of side x side zeros: a few hundred kB that decode to side**2 bytes or more."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.parent.mkdir(parents=True, exist_ok=True)
    row = b"\x00" * (1 + (side + 7) // 8)
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(row * 1000) for _ in range(side // 1000))
    body += packer.compress(row * (side % 1000)) + packer.flush()
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
        + chunk(b"IDAT", body)
        + chunk(b"IEND", b"")
    )


@pytest.mark.slow
def test_restore_huge_image_is_a_per_file_failure(tmp_path: Path) -> None:
    """A 30000 x 30000 PNG of a few hundred kB: refused from its header (--max-pixels), the batch goes on.
    The process runs under an address-space limit so that a regression fails with MemoryError, not the host."""
    _demo_weights(tmp_path)
    folder = tmp_path / "in"
    _huge_png(folder / "bomb.png", 30000)
    assert (folder / "bomb.png").stat().st_size < 2_000_000
    _image(folder / "ok.png")

    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))

    proc = subprocess.run(
        [sys.executable, "-m", "mair", *_restore_argv(tmp_path, folder)],
        env=_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=limit_memory,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "MemoryError" not in proc.stderr, proc.stderr[-3000:]
    assert "bomb.png" in proc.stderr and "900,000,000 pixels" in proc.stderr and "--max-pixels" in proc.stderr
    assert (tmp_path / "out" / "ok.png").is_file() and not (tmp_path / "out" / "bomb.png").exists()


def test_restore_max_pixels_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _demo_weights(tmp_path)
    small, large = _image(tmp_path / "in" / "small.png", 8, 8), _image(tmp_path / "in" / "large.png", 12, 14)
    code, err = _cli(capsys, *_restore_argv(tmp_path, small, large), "--max-pixels", "100")
    assert code == 1 and "large.png" in err and "168 pixels" in err and "--max-pixels 100" in err, err
    assert (tmp_path / "out" / "small.png").is_file() and not (tmp_path / "out" / "large.png").exists()
    code, err = _cli(capsys, *_restore_argv(tmp_path, small), "--max-pixels", "0")
    _assert_one_line(code, err, "--max-pixels")
    # other formats: the size comes from their header too
    from mair.evaluate.restore import header_size

    for suffix in (".jpg", ".tif", ".bmp"):
        assert header_size(_image(tmp_path / f"photo{suffix}", 9, 13)) == (9, 13)


def test_restore_keeps_the_file_dtype_until_a_tile_needs_it(tmp_path: Path) -> None:
    """8- and 16-bit images stay integer in memory; tiles are converted one by one, with the same result."""
    from mair.evaluate import restore as R

    rng = np.random.default_rng(0)
    p8, p16 = tmp_path / "a.png", tmp_path / "b.png"
    cv2.imwrite(str(p8), rng.integers(0, 256, (20, 26, 3), dtype=np.uint8))
    cv2.imwrite(str(p16), rng.integers(0, 65536, (20, 26, 3), dtype=np.uint16))

    def net(x: torch.Tensor) -> torch.Tensor:
        assert x.dtype == torch.float32 and x.shape[-1] <= 16, "the network sees float tiles only"
        return x * 0.5 + 0.25

    for path, dtype in ((p8, np.uint8), (p16, np.uint16)):
        img = R.read_image(path)
        assert img.pixels.dtype == dtype
        tiled = R.Restorer(net, scale=1, protocol="pad8", tile=16, tile_overlap=4).restore_array(img.pixels)
        whole = img.rgb * 0.5 + 0.25
        np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-6)
        ensemble = R.Restorer(net, scale=1, protocol="pad8", tile=16, tile_overlap=4, self_ensemble=True)
        np.testing.assert_allclose(ensemble.restore_array(img.pixels), whole, rtol=0, atol=1e-6)


def test_non_finite_weights_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mair.evaluate import runner
    from mair.models.checkpoint import CheckpointError, read_state_dict

    path = _demo_weights(tmp_path)
    state = torch.load(path, weights_only=True)
    name = sorted(state["params"])[3]
    for bad in (math.nan, math.inf):
        state["params"][name].view(-1)[0] = bad
        torch.save(state, path)
        with pytest.raises(CheckpointError, match=f"{name}.*NaN or Inf"):
            read_state_dict(path)
        code, err = _cli(capsys, *_restore_argv(tmp_path, _image(tmp_path / "in.png")))
        _assert_one_line(code, err, str(path), name, "NaN or Inf")
        assert not (tmp_path / "out").exists()
        spec = runner.eval_spec(runner.experiment_at("sr_classic_x2", "demo"))
        with pytest.raises(runner.EvaluationError, match="NaN or Inf"):
            runner.build_model(spec, path)


# ------------------------------------------------------------------------------------------------ 7: evaluate


def _sr_set(root: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(3):
        hr = cv2.GaussianBlur(rng.integers(0, 256, (24, 28, 3), dtype=np.uint8), (5, 5), 1.0)
        _image(root / "HR" / f"img{i}.png").write_bytes(cv2.imencode(".png", hr)[1].tobytes())
        lr = cv2.resize(hr, (14, 12), interpolation=cv2.INTER_AREA)
        _image(root / "LR_bicubic" / "X2" / f"img{i}.png").write_bytes(cv2.imencode(".png", lr)[1].tobytes())
    (root / ".prepared.json").write_text("{}")
    return root


def test_evaluate_resume_notices_changed_test_data(tmp_path: Path) -> None:
    """Changed ground truth, a changed input, or another data root: re-evaluated, never reported as fresh."""
    from mair.evaluate import runner

    weights = _demo_weights(tmp_path)
    from dataclasses import replace

    exp = runner.experiment_at("sr_classic_x2", "demo")
    exp = replace(exp, test=replace(exp.test, datasets=tuple(d for d in exp.test.datasets if d.id == "set5")))
    root = _sr_set(tmp_path / "data" / "set5")

    def evaluate(data_root: Path, results: Path) -> dict[str, Any]:
        return runner.evaluate(
            exp,
            weights,
            dataset_roots={"set5": data_root},
            results_dir=results,
            device="cpu",
            track=False,
            progress=False,
        )[0]

    results = tmp_path / "results"
    first = evaluate(root, results)
    assert evaluate(root, results)["metrics"] == first["metrics"]  # unchanged data: resumed as it was
    # the ground truth of one image changes (same name, same size)
    gt = root / "HR" / "img0.png"
    cv2.imwrite(str(gt), 255 - cv2.imread(str(gt)))
    changed = evaluate(root, results)
    fresh = evaluate(root, tmp_path / "fresh")
    assert changed["metrics"] == fresh["metrics"] != first["metrics"]
    # an input changes
    lq = root / "LR_bicubic" / "X2" / "img1.png"
    cv2.imwrite(str(lq), 255 - cv2.imread(str(lq)))
    assert evaluate(root, results)["metrics"] == evaluate(root, tmp_path / "fresh2")["metrics"]
    # another data root with other images of the same names
    other = _sr_set(tmp_path / "elsewhere" / "set5", seed=7)
    assert evaluate(other, results)["metrics"] == evaluate(other, tmp_path / "fresh3")["metrics"]


# ------------------------------------------------------------------------------------------------ 10: scan precision


def test_scan_mixed_groupings_sum_gradients_in_float32() -> None:
    """bf16 B with one group and C with eight: B's gradient is the sum over the eight repeats; summed in
    bf16 it loses digits. Measured against float64: one bf16 rounding of the float32 sum."""
    from mair.models.scan import selective_scan

    gen = torch.Generator().manual_seed(0)
    batch, dch, n, length, gc = 2, 16, 4, 24, 8

    def rnd(*shape: int, scale: float = 1.0) -> torch.Tensor:  # values that bf16 holds exactly
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(torch.bfloat16).double()

    u, delta = rnd(batch, dch, length), rnd(batch, dch, length, scale=0.5)
    A = (-torch.rand(dch, n, generator=gen, dtype=torch.float64) - 0.5).to(torch.bfloat16).double()
    B, C = rnd(batch, 1, n, length), rnd(batch, gc, n, length)
    grad_y = rnd(batch, dch, length)

    def grads(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        b = B.to(dtype).detach().requires_grad_()
        c = C.to(dtype).detach().requires_grad_()
        y = selective_scan(u.to(dtype), delta.to(dtype), A.to(dtype), b, c, None, None, True, backend="torch")
        y.backward(grad_y.to(dtype))
        return b.grad.double(), c.grad.double()

    ref_b, ref_c = grads(torch.float64)
    got_b, got_c = grads(torch.bfloat16)
    once_b = ref_b.to(torch.bfloat16).double()  # the best a bf16 result can be: one rounding
    err, best = (got_b - ref_b).abs().mean().item(), (once_b - ref_b).abs().mean().item()
    assert err <= 1.1 * best, (err, best)  # summed in bf16: 3-10x the error of one rounding
    once_c = ref_c.to(torch.bfloat16).double()
    assert (got_c - ref_c).abs().mean().item() <= 1.1 * (once_c - ref_c).abs().mean().item()
