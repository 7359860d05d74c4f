"""``mair restore`` on real files: bit depths, grey, RGBA, JPEG, corrupt inputs, tiling and the CLI."""

from __future__ import annotations

import argparse
import types
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
from torch import nn

import mair
import mair.experiments
from mair.cli import CommandError
from mair.evaluate import cli as ev_cli
from mair.evaluate import restore as R
from mair.evaluate.protocol import official_tile_forward, tensor2img
from mair.experiments import Experiment, ExperimentError, load
from mair.experiments.spec import Network


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    """Tiny tensors: one intra-op thread avoids oversubscription on shared CPUs (10-100x faster here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TINY_SR = {
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


def _tiny_experiment(exp_id: str = "tiny_sr", **kw: Any) -> Experiment:
    """A light-SR x2 experiment with a tiny network (the test section of sr_light_t_x2, Set5 only)."""
    real = load("sr_light_t_x2")
    return replace(
        real,
        id=exp_id,
        network=Network("MaIR", types.MappingProxyType({**TINY_SR, **kw})),
        test=replace(real.test, datasets=real.test.datasets[:1]),
    )


@pytest.fixture(scope="module")
def tiny_sr() -> nn.Module:
    from mair.models import from_official

    torch.manual_seed(0)
    return from_official("MaIR", **TINY_SR).eval()


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rgb8 = rng.integers(0, 256, (18, 22, 3), dtype=np.uint8)
    cv2.imwrite(str(folder / "rgb8.png"), rgb8)
    cv2.imwrite(str(folder / "rgb16.png"), rng.integers(0, 65536, (18, 22, 3), dtype=np.uint16))
    cv2.imwrite(str(folder / "grey.png"), rng.integers(0, 256, (18, 22), dtype=np.uint8))
    bgra = np.dstack([rgb8, np.tile(np.linspace(0, 255, 22, dtype=np.uint8), (18, 1))])
    cv2.imwrite(str(folder / "sub" / "rgba.png"), bgra)
    cv2.imwrite(str(folder / "photo.jpg"), rgb8)
    cv2.imwrite(str(folder / "scan.tif"), rgb8)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    (folder / "notes.txt").write_text("skipped: not an image")
    return folder


def test_restore_folder_all_formats(tmp_path: Path, inputs: Path, tiny_sr: nn.Module) -> None:
    restorer = R.Restorer(tiny_sr, scale=2, protocol="tile")
    out = tmp_path / "out"
    written, failures = R.restore_files(restorer, [inputs], out, progress=False)
    assert written == 6
    assert [(p.name, "not a readable image" in msg) for p, msg in failures] == [("broken.png", True)]
    assert not (out / "broken.png").exists() and not (out / "notes.txt").exists()

    rgb8 = cv2.imread(str(out / "rgb8.png"), cv2.IMREAD_UNCHANGED)
    assert rgb8.shape == (36, 44, 3) and rgb8.dtype == np.uint8
    # the pixels are the paper protocol's output, quantised as the official tensor2img
    src = cv2.cvtColor(cv2.imread(str(inputs / "rgb8.png")), cv2.COLOR_BGR2RGB)
    with torch.no_grad():
        ref = tensor2img(
            official_tile_forward(tiny_sr, torch.from_numpy(src.transpose(2, 0, 1).astype(np.float32) / 255)[None])
        )
    assert np.abs(cv2.cvtColor(rgb8, cv2.COLOR_BGR2RGB).astype(int) - ref.astype(int)).max() <= 1

    rgb16 = cv2.imread(str(out / "rgb16.png"), cv2.IMREAD_UNCHANGED)
    assert rgb16.dtype == np.uint16 and rgb16.shape == (36, 44, 3)
    grey = cv2.imread(str(out / "grey.png"), cv2.IMREAD_UNCHANGED)
    assert grey.shape == (36, 44) and grey.dtype == np.uint8
    rgba = cv2.imread(str(out / "sub" / "rgba.png"), cv2.IMREAD_UNCHANGED)
    assert rgba.shape == (36, 44, 4)
    alpha_in = cv2.imread(str(inputs / "sub" / "rgba.png"), cv2.IMREAD_UNCHANGED)[..., 3]
    alpha_in = alpha_in.astype(np.float32) / 255
    expected_alpha = np.clip(cv2.resize(alpha_in, (44, 36), interpolation=cv2.INTER_CUBIC), 0, 1)
    assert np.abs(rgba[..., 3].astype(np.float32) / 255 - expected_alpha).max() <= 0.5 / 255 + 1e-6
    assert cv2.imread(str(out / "photo.jpg")).shape == (36, 44, 3)
    assert cv2.imread(str(out / "scan.tif")).shape == (36, 44, 3)


def test_alpha_drop(tmp_path: Path, inputs: Path, tiny_sr: nn.Module) -> None:
    restorer = R.Restorer(tiny_sr, scale=2)
    written, failures = R.restore_files(
        restorer, [inputs / "sub" / "rgba.png"], tmp_path / "o", keep_alpha=False, progress=False
    )
    assert (written, failures) == (1, [])
    assert cv2.imread(str(tmp_path / "o" / "rgba.png"), cv2.IMREAD_UNCHANGED).shape == (36, 44, 3)


def test_identity_round_trips_bit_depths_and_grey(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    src = tmp_path / "src"
    src.mkdir()
    img16 = rng.integers(0, 65536, (9, 11, 3), dtype=np.uint16)
    grey8 = rng.integers(0, 256, (9, 11), dtype=np.uint8)
    rgba8 = rng.integers(0, 256, (9, 11, 4), dtype=np.uint8)
    cv2.imwrite(str(src / "a.png"), img16)
    cv2.imwrite(str(src / "g.png"), grey8)
    cv2.imwrite(str(src / "t.png"), rgba8)
    restorer = R.Restorer(nn.Identity(), scale=1, protocol="pad8")
    written, failures = R.restore_files(restorer, [src], tmp_path / "out", progress=False)
    assert (written, failures) == (3, [])
    assert np.array_equal(cv2.imread(str(tmp_path / "out/a.png"), cv2.IMREAD_UNCHANGED), img16)
    assert np.array_equal(cv2.imread(str(tmp_path / "out/g.png"), cv2.IMREAD_UNCHANGED), grey8)
    assert np.array_equal(cv2.imread(str(tmp_path / "out/t.png"), cv2.IMREAD_UNCHANGED), rgba8)


def test_user_tiles_equal_whole_image_for_equivariant_net(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (70, 53, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "big.png"), img)
    calls: list[tuple[int, ...]] = []
    up = nn.Upsample(scale_factor=2, mode="nearest")

    def net(x: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(x.shape[-2:]))
        return up(x)

    for blend in (True, False):
        restorer = R.Restorer(net, scale=2, tile=24, tile_overlap=6, tile_blend=blend)
        R.restore_files(restorer, [tmp_path / "big.png"], tmp_path / "out", progress=False)
        out = cv2.imread(str(tmp_path / "out" / "big.png"))
        assert np.array_equal(out, cv2.resize(img, (106, 140), interpolation=cv2.INTER_NEAREST))
    assert max(max(c) for c in calls) == 24


def test_self_ensemble_restore_of_identity_is_identity(tmp_path: Path) -> None:
    img = np.random.default_rng(3).integers(0, 256, (13, 21, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "x.png"), img)
    for tile in (None, 8):
        restorer = R.Restorer(nn.Identity(), scale=1, tile=tile, tile_overlap=2, self_ensemble=True)
        R.restore_files(restorer, [tmp_path / "x.png"], tmp_path / "o", progress=False)
        assert np.array_equal(cv2.imread(str(tmp_path / "o/x.png")), img)


def test_read_image_errors(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ValueError):
        R.read_image(tmp_path / "empty.png")
    restorer = R.Restorer(nn.Identity())
    written, failures = R.restore_files(restorer, [tmp_path / "missing.png"], tmp_path / "o", progress=False)
    assert written == 0 and failures[0][1] == "no such file"


# ---------------------------------------------------------------------------------------------------------
# The command line, with a stand-in experiment registry


@pytest.fixture
def fake_experiments(monkeypatch: pytest.MonkeyPatch) -> dict[str, Experiment]:
    registry = {"tiny_sr": _tiny_experiment(), "tiny_sr_wide": _tiny_experiment("tiny_sr_wide", embed_dim=12)}

    def load_tiny(exp_id: str, scope: str = "paper") -> Experiment:
        if exp_id not in registry:
            raise ExperimentError(f"unknown experiment {exp_id!r}")
        return registry[exp_id]

    monkeypatch.setattr(mair.experiments, "load", load_tiny)
    monkeypatch.setattr(mair.experiments, "experiment_ids", lambda: list(registry))
    return registry


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mair")
    ev_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.handler(args))


def test_cli_restore_with_experiment_and_weights(
    tmp_path: Path, inputs: Path, tiny_sr: nn.Module, fake_experiments: dict[str, Any]
) -> None:
    from mair.models.checkpoint import save_weights

    weights = tmp_path / "w.pth"
    # official layout with DDP prefixes and both keys
    state = {f"module.{k}": v for k, v in tiny_sr.state_dict().items()}
    torch.save({"params": state, "params_ema": state}, weights)
    code = _cli(
        [
            "restore",
            str(inputs / "rgb8.png"),
            str(inputs / "grey.png"),
            "-o",
            str(tmp_path / "o"),
            "--experiment",
            "tiny_sr",
            "--weights",
            str(weights),
            "--device",
            "cpu",
            "--quiet",
        ]
    )
    assert code == 0 and (tmp_path / "o" / "grey.png").is_file()
    # one corrupt input: the others are written, exit status 1
    code = _cli(
        [
            "restore",
            str(inputs),
            "-o",
            str(tmp_path / "o2"),
            "--experiment",
            "tiny_sr",
            "--weights",
            str(weights),
            "--device",
            "cpu",
            "--quiet",
        ]
    )
    assert code == 1 and (tmp_path / "o2" / "rgb16.png").is_file()
    # weights only: the experiment is found from the tensor shapes
    code = _cli(
        [
            "restore",
            str(inputs / "rgb8.png"),
            "-o",
            str(tmp_path / "o3"),
            "--weights",
            str(weights),
            "--device",
            "cpu",
            "--quiet",
        ]
    )
    assert code == 0
    # default weights location
    save_weights(tiny_sr, tmp_path / "results" / "paper" / "weights" / "tiny_sr.pth")
    code = _cli(
        [
            "restore",
            str(inputs / "rgb8.png"),
            "-o",
            str(tmp_path / "o4"),
            "--experiment",
            "tiny_sr",
            "--results-dir",
            str(tmp_path / "results"),
            "--device",
            "cpu",
            "--tile",
            "12",
            "--tile-overlap",
            "4",
            "--tile-mode",
            "crop",
            "--quiet",
        ]
    )
    assert code == 0 and cv2.imread(str(tmp_path / "o4" / "rgb8.png")).shape == (36, 44, 3)


def test_cli_restore_clear_errors(
    tmp_path: Path, inputs: Path, tiny_sr: nn.Module, fake_experiments: dict[str, Any]
) -> None:
    from mair.models.checkpoint import save_weights

    weights = tmp_path / "w.pth"
    save_weights(tiny_sr, weights)
    with pytest.raises(CommandError, match="do not fit"):
        _cli(
            [
                "restore",
                str(inputs),
                "-o",
                str(tmp_path / "o"),
                "--experiment",
                "tiny_sr_wide",
                "--weights",
                str(weights),
                "--device",
                "cpu",
            ]
        )
    with pytest.raises(CommandError, match=r"nothing.paper.weights.tiny_sr\.pth"):
        _cli(
            [
                "restore",
                str(inputs),
                "-o",
                str(tmp_path / "o"),
                "--experiment",
                "tiny_sr",
                "--results-dir",
                str(tmp_path / "nothing"),
                "--device",
                "cpu",
            ]
        )
    with pytest.raises(CommandError, match="name the network"):
        _cli(["restore", str(inputs), "-o", str(tmp_path / "o")])
    with pytest.raises(CommandError, match="tile-overlap"):
        _cli(
            [
                "restore",
                str(inputs),
                "-o",
                str(tmp_path / "o"),
                "--experiment",
                "tiny_sr",
                "--tile",
                "8",
                "--tile-overlap",
                "8",
            ]
        )
    assert not (tmp_path / "o").exists()


def test_restore_with_a_real_demo_experiment(tmp_path: Path, inputs: Path) -> None:
    """End to end with the project's experiment files (demo-size network)."""
    from mair.models import from_official
    from mair.models.checkpoint import save_weights

    net = load("sr_classic_x2", "demo").network
    model = from_official(net.arch, **net.constructor_kwargs())
    save_weights(model, tmp_path / "results" / "demo" / "weights" / "sr_classic_x2.pth")
    code = _cli(
        [
            "restore",
            str(inputs / "rgb8.png"),
            "-o",
            str(tmp_path / "o"),
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
    )
    assert code == 0 and cv2.imread(str(tmp_path / "o" / "rgb8.png")).shape == (36, 44, 3)


@pytest.mark.parametrize("ensemble", [False, True])
def test_tile_progress_counts_every_tile_of_every_pass(ensemble: bool) -> None:
    """40x50 in 24-px tiles with 8 px overlap: 2 x 3 tiles (3 x 2 when transposed), times 8 passes for MaIR+."""
    calls: list[tuple[int, int]] = []
    restorer = R.Restorer(
        nn.Upsample(scale_factor=2, mode="nearest"),
        scale=2,
        protocol="tile",
        tile=24,
        tile_overlap=8,
        self_ensemble=ensemble,
    )
    restorer.on_tile = lambda done, total: calls.append((done, total))
    out = restorer.restore_array(np.random.default_rng(0).random((40, 50, 3), dtype=np.float32))
    assert out.shape == (80, 100, 3)
    total = 6 * (8 if ensemble else 1)
    assert calls == [(k, total) for k in range(1, total + 1)]


def test_restore_files_shows_tile_progress(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cv2.imwrite(str(tmp_path / "a.png"), np.full((40, 50, 3), 90, np.uint8))
    restorer = R.Restorer(
        nn.Upsample(scale_factor=2, mode="nearest"), scale=2, protocol="tile", tile=24, tile_overlap=8
    )
    written, failures = R.restore_files(restorer, [tmp_path / "a.png"], tmp_path / "out", progress=True)
    assert (written, failures) == (1, [])
    assert "tiles" in capsys.readouterr().err
    assert restorer.on_tile is None  # detached after the run
