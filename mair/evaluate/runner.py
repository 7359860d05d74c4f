"""``mair evaluate``: run an experiment's test protocol on its test sets; write per-image and summary results.

For each test dataset of the experiment the runner reads the prepared pairs, runs the paper protocol (the
200-px tiling for MaIR, padding to a multiple of 8 for the U-Net; MaIR+ on request), quantises the output as
the official ``tensor2img`` (clamp to [0, 1], x255, round, uint8), computes the metrics the experiment names
and writes

* ``results/<weights>/<scope>/eval/<experiment>/<dataset>[+].csv``: one row per image, appended and flushed (fsync) as
  soon as the image is done; a rerun skips the images already there (same weights and settings, checked with
  ``<dataset>[+].resume``), so an interrupted evaluation resumes;
* ``results/<weights>/<scope>/eval/<experiment>/<dataset>[+].json``: the summary of docs/contracts.md, written
  atomically once every image is done;
* for DND (submission only): the benchmark bundle (see :mod:`mair.evaluate.dnd`) instead of metrics.

It logs each summary to MLflow through :mod:`mair.common.tracking` when that is available; a missing or broken
MLflow only warns.
"""

from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import io
import json
import math
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from mair import experiments
from mair.common.atomic import atomic_write_json, atomic_write_text
from mair.common.errors import (
    EvaluationError,
    missing_weights_message,
)
from mair.experiments import Experiment, ExperimentError
from mair.experiments import TestDatasetRef as DatasetRef
from mair.experiments.spec import Noise
from mair.tasks import get_task

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".ppm", ".webp")

__all__ = [
    "DatasetRef",
    "EvalSpec",
    "EvaluationError",
    "ImagePair",
    "build_model",
    "eval_spec",
    "evaluate",
    "evaluate_dataset",
    "experiment_at",
    "list_pairs",
    "run_protocol",
]


# ----------------------------------------------------------------------------------------------------------
# What to evaluate


@dataclass(frozen=True)
class EvalSpec:
    """The test side of an :class:`~mair.experiments.Experiment`, flat (:func:`eval_spec` derives it); its
    fields are also the fingerprint that lets an interrupted evaluation resume."""

    experiment: str
    task: str
    arch: str
    kwargs: dict[str, Any]
    scale: int
    protocol: str  # "tile" | "pad8"
    datasets: tuple[DatasetRef, ...]
    crop_border: int = 0
    test_y_channel: bool = False
    extra_spaces: tuple[str, ...] = ()
    use_image: bool = True
    noise: Noise | None = None
    rgb2bgr: bool = True  # uint8 metrics: channel order given to the Y conversion (metrics.metric_images)

    @property
    def primary_space(self) -> str:
        return "y" if self.test_y_channel else "rgb"

    @property
    def spaces(self) -> list[str]:
        """Primary metric space first, then the extra ones."""
        return [self.primary_space] + [s for s in self.extra_spaces if s != self.primary_space]

    @property
    def unet_metrics(self) -> bool:
        """True for the realDenoising tasks, whose metrics are :func:`calculate_psnr_float` & co."""
        return get_task(self.task).metrics == "realdenoising"

    def dataset(self, dataset_id: str) -> DatasetRef:
        for ref in self.datasets:
            if ref.id == dataset_id:
                return ref
        raise EvaluationError(
            f"{self.experiment} has no test dataset {dataset_id!r}; "
            f"its test sets: {', '.join(r.id for r in self.datasets)}"
        )


def experiment_at(experiment_id: str, scope: str = "paper") -> Experiment:
    """:func:`mair.experiments.load`, its errors as :class:`EvaluationError`."""
    try:
        return experiments.load(experiment_id, scope)
    except ExperimentError as error:
        raise EvaluationError(str(error)) from None


def eval_spec(exp: Experiment) -> EvalSpec:
    """The :class:`EvalSpec` view of an experiment: its network, scale and ``test`` section."""
    network, test, metrics = exp.network, exp.test, exp.test.metrics
    scale = exp.scale if network.arch != "MaIR" or network.kwargs.get("upsampler") else 1
    if test.protocol not in ("tile", "pad8"):
        raise EvaluationError(f"unknown test protocol {test.protocol!r} (expected 'tile' or 'pad8')")
    return EvalSpec(
        experiment=exp.id,
        task=exp.task,
        arch=network.arch,
        kwargs=network.constructor_kwargs(),
        scale=scale,
        protocol=test.protocol,
        datasets=test.datasets,
        crop_border=metrics.crop_border,
        test_y_channel=metrics.test_y_channel,
        extra_spaces=metrics.extra_spaces,
        use_image=metrics.use_image,
        noise=test.noise,
        rgb2bgr=metrics.rgb2bgr,
    )


# ----------------------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class ImagePair:
    """One test image: its name in the results, the input file and the ground-truth file."""

    name: str
    lq: Path | None  # None: synthesised from gt (colour denoising)
    gt: Path


def _images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise EvaluationError(f"missing folder {folder}")
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def list_pairs(ref: DatasetRef, root: Path, scale: int = 1) -> list[ImagePair]:
    """The sorted image pairs of a prepared dataset folder ``root`` (docs/contracts.md layouts)."""
    if ref.pairing == "synthetic_noise":
        return [ImagePair(p.name, None, p) for p in _images(root / (ref.gt or "HR"))]
    if ref.pairing == "same_name":
        gt_dir, lq_dir = root / (ref.gt or "HR"), root / (ref.lq or f"LR_bicubic/X{scale}")
        pairs = []
        lq_names = {p.name for p in _images(lq_dir)}
        for gt in _images(gt_dir):
            name = gt.name
            if name not in lq_names:  # tolerate the EDSR naming <name>x<s>.<ext>
                alt = f"{gt.stem}x{scale}{gt.suffix}"
                if alt not in lq_names:
                    raise EvaluationError(f"{lq_dir} has no input for {gt.name} (expected the same name)")
                name = alt
            pairs.append(ImagePair(gt.name, lq_dir / name, gt))
        if len(pairs) != len(lq_names):
            raise EvaluationError(
                f"{gt_dir} and {lq_dir} hold different numbers of images ({len(pairs)} vs {len(lq_names)})"
            )
        return pairs
    if ref.pairing == "hazy_prefix":
        gt_dir, lq_dir = root / (ref.gt or "gt"), root / (ref.lq or "hazy")
        pairs = []
        for hazy in _images(lq_dir):
            gt = gt_dir / (hazy.name.split("_")[0].split(".")[0] + ".png")
            if not gt.is_file():
                raise EvaluationError(f"no clear image {gt} for hazy image {hazy.name}")
            pairs.append(ImagePair(hazy.name, hazy, gt))
        return pairs
    raise EvaluationError(f"pairing {ref.pairing!r} has no image pairs (DND is a submission bundle)")


def read_rgb(path: Path) -> np.ndarray:
    """An image as uint8 HWC RGB, read as the official code (``cv2.IMREAD_COLOR``: grey gives 3 channels)."""
    data = np.fromfile(str(path), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        raise EvaluationError(f"cannot read image {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def load_pair(pair: ImagePair, spec: EvalSpec) -> tuple[np.ndarray, np.ndarray]:
    """``(lq, gt)``: the network input as float32 HWC RGB (unclipped for noise) and the uint8 RGB target.

    SR targets are cropped to ``lq * scale`` (the official implicit mod-crop); colour-denoising inputs get the
    official test noise (:func:`mair.evaluate.noise.add_test_noise`).
    """
    gt = read_rgb(pair.gt)
    if pair.lq is None:
        from mair.evaluate.noise import add_test_noise, check_official_noise

        if not spec.noise:
            raise EvaluationError(f"{spec.experiment}: synthetic-noise pairing without test.noise settings")
        noise = spec.noise
        try:
            check_official_noise(noise)
        except ValueError as error:
            raise EvaluationError(str(error)) from None
        lq = add_test_noise(gt, float(noise.sigma), seed=noise.seed).astype(np.float32)
        return lq, gt
    lq = read_rgb(pair.lq).astype(np.float32) / np.float32(255.0)
    s = spec.scale
    if s > 1 or lq.shape[:2] != gt.shape[:2]:
        gt = gt[: lq.shape[0] * s, : lq.shape[1] * s]
        if gt.shape[:2] != (lq.shape[0] * s, lq.shape[1] * s):
            raise EvaluationError(f"{pair.name}: target {gt.shape[:2]} is smaller than input x{s}")
    return lq, gt


def dataset_root(dataset_id: str, scope: str, data_root: str | os.PathLike[str] | None = None) -> Path:
    """The prepared folder of ``dataset_id`` in ``scope``; it must be complete (marker present)."""
    from mair.data import paths

    root = paths.prepared_dir(dataset_id, scope, data_root)
    if not (root / paths.PREPARED_MARKER).is_file():
        raise EvaluationError(
            f"dataset {dataset_id!r} ({scope}) is not prepared: {root / paths.PREPARED_MARKER} is missing. "
            f"Download and prepare it first (see `mair data --help`)."
        )
    return root


# ----------------------------------------------------------------------------------------------------------
# Model and protocol


def build_model(spec: EvalSpec, weights: str | os.PathLike[str] | None, device: Any = "cpu") -> Any:
    """The experiment's network with ``weights`` loaded strictly, in eval mode on ``device``."""
    from mair.models import from_official
    from mair.models.checkpoint import CheckpointError, CheckpointMismatch, load_weights

    model = from_official(spec.arch, **spec.kwargs)
    if weights is not None:
        try:
            load_weights(model, weights, strict=True)
        except CheckpointMismatch as error:
            raise EvaluationError(f"weights do not fit experiment {spec.experiment} ({spec.arch}): {error}") from None
        except CheckpointError as error:  # unreadable or damaged: the message names the file and the problem
            raise EvaluationError(str(error)) from None
    return model.eval().to(device)


def run_protocol(model: Callable[[Any], Any], x: Any, protocol: str, self_ensemble: bool = False) -> Any:
    """The paper's test forward of one batch: ``tile`` (MaIR) or ``pad8`` (U-Net), optionally MaIR+."""
    import torch

    from mair.evaluate import protocol as proto

    with torch.no_grad():
        if protocol == "tile":
            if self_ensemble:
                return proto.self_ensemble(model, x, tile=True)
            return proto.official_tile_forward(model, x)
        if protocol == "pad8":

            def padded(t: torch.Tensor) -> torch.Tensor:
                return proto.pad_forward(model, t, 8)

            return proto.self_ensemble(padded, x, tile=False) if self_ensemble else padded(x)
    raise EvaluationError(f"unknown protocol {protocol!r}")


# ----------------------------------------------------------------------------------------------------------
# Per-image results (resumable CSV)


def _columns(spec: EvalSpec) -> list[str]:
    cols = ["name", "psnr", "ssim"]
    for space in spec.spaces[1:]:
        cols += [f"psnr_{space}", f"ssim_{space}"]
    if spec.unet_metrics and not spec.use_image:
        cols.append("psnr_official_unclamped")
    return cols


def image_metrics(out: Any, gt: np.ndarray, spec: EvalSpec) -> dict[str, float]:
    """Metrics of one output tensor (1, 3, H, W) against the uint8 RGB target, as the experiment asks."""
    from mair.evaluate import metrics as m
    from mair.evaluate.protocol import tensor2img

    out_u8, gt_u8 = m.metric_images(tensor2img(out), gt, spec.rgb2bgr)
    row: dict[str, float] = {}
    out_float = None
    if spec.unet_metrics and not spec.use_image:
        out_float = out[0].detach().float().cpu().numpy().transpose(1, 2, 0)
        gt_float = gt.astype(np.float32) / np.float32(255.0)
    for i, space in enumerate(spec.spaces):
        y = space == "y"
        suffix = "" if i == 0 else f"_{space}"
        if not spec.unet_metrics:
            psnr = m.calculate_psnr(out_u8, gt_u8, spec.crop_border, y)
            ssim = m.calculate_ssim(out_u8, gt_u8, spec.crop_border, y)
        elif out_float is None:
            psnr = m.calculate_psnr_float(out_u8, gt_u8, spec.crop_border, y)
            ssim = m.calculate_ssim_float(out_u8, gt_u8, spec.crop_border, y)
        else:
            psnr = m.calculate_psnr_float(out_float, gt_float, spec.crop_border, y)
            ssim = m.calculate_ssim_float(out_float, gt_float, spec.crop_border, y)
        row[f"psnr{suffix}"] = psnr
        row[f"ssim{suffix}"] = ssim
    if out_float is not None:
        row["psnr_official_unclamped"] = m.official_psnr_unclamped(out_float, gt_float, spec.crop_border)
    return row


class ResultsCSV:
    """A per-image CSV that is appended and fsynced row by row and can be resumed after a crash.

    On open, rows that do not parse (a line cut short by a crash) are dropped by rewriting the file
    atomically; a file with other columns or another fingerprint (weights, settings, test data) is started
    afresh.
    """

    def __init__(self, path: Path, columns: Sequence[str], fingerprint: Mapping[str, Any]) -> None:
        self.path = path
        self.columns = list(columns)
        self.resume_path = path.with_suffix(".resume")
        self.rows: dict[str, dict[str, Any]] = {}
        self._handle: io.TextIOWrapper | None = None
        fp = json.loads(json.dumps(dict(fingerprint), sort_keys=True, default=str))
        old_fp = None
        if self.resume_path.is_file():
            try:
                old_fp = json.loads(self.resume_path.read_text())
            except (OSError, ValueError):
                old_fp = None
        if path.is_file() and old_fp == fp:
            self.rows, clean = self._read()
            if not clean:
                self._rewrite()
        else:
            if path.is_file():
                print(
                    f"note: {path} was made with other weights or settings; starting it again "
                    f"(the fingerprint covers weights, settings and test data)",
                    file=sys.stderr,
                )
            self._rewrite()
        atomic_write_text(self.resume_path, json.dumps(fp, sort_keys=True, indent=2) + "\n")

    def _read(self) -> tuple[dict[str, dict[str, Any]], bool]:
        rows: dict[str, dict[str, Any]] = {}
        clean = True
        text = self.path.read_text(encoding="utf-8", errors="replace")
        lines = text.splitlines(keepends=True)
        if not lines or next(csv.reader([lines[0]])) != self.columns:
            return {}, False
        for line in lines[1:]:
            if not line.endswith("\n"):
                clean = False
                continue
            try:
                fields = next(csv.reader([line]))
            except (csv.Error, StopIteration):
                clean = False
                continue
            if len(fields) != len(self.columns):
                clean = False
                continue
            try:
                row = {c: (v if c == "name" else float(v)) for c, v in zip(self.columns, fields, strict=True)}
            except ValueError:
                clean = False
                continue
            rows[str(row["name"])] = row
        return rows, clean

    def _format(self, row: Mapping[str, Any]) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow([row["name"]] + [repr(float(row[c])) for c in self.columns[1:]])
        return buf.getvalue()

    def _rewrite(self) -> None:
        text = self._format_header() + "".join(self._format(r) for r in self.rows.values())
        atomic_write_text(self.path, text)

    def _format_header(self) -> str:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(self.columns)
        return buf.getvalue()

    def append(self, row: Mapping[str, Any]) -> None:
        """Append one row and make it durable (flush + fsync) before returning."""
        if self._handle is None:
            self._handle = open(self.path, "a", encoding="utf-8", newline="")  # noqa: SIM115
        self._handle.write(self._format(row))
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self.rows[str(row["name"])] = dict(row)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def data_identity(root: Path, files: Iterable[Path | None]) -> dict[str, Any]:
    """What identifies the test data of a result: the data folder and each file's path, size and modification
    time (nanoseconds). Any change (new ground truth, another input, another ``MAIR_DATA_DIR``) changes it."""
    base = root.resolve()
    entries = []
    for path in sorted({Path(f) for f in files if f is not None}):
        st = path.stat()
        try:
            name = path.resolve().relative_to(base).as_posix()
        except ValueError:
            name = str(path.resolve())
        entries.append([name, st.st_size, st.st_mtime_ns])
    return {"root": str(base), "files": entries}


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _progress(items: Sequence[Any], desc: str, enabled: bool) -> Iterator[Any]:
    if not enabled:
        yield from items
        return
    from tqdm import tqdm

    yield from tqdm(items, desc=desc, unit="img", file=sys.stderr)


def _mean(values: Iterable[float]) -> float:
    vals = list(values)
    return float(sum(vals) / len(vals)) if vals else math.nan


def evaluate_dataset(
    model: Callable[[Any], Any],
    spec: EvalSpec,
    ref: DatasetRef,
    root: Path,
    out_dir: Path,
    *,
    self_ensemble: bool = False,
    scope: str = "paper",
    device: Any = "cpu",
    weights: str | None = None,
    weights_sha256: str | None = None,
    progress: bool = True,
    runtime: Mapping[str, Any] | None = None,
    weights_source: str | None = None,
) -> dict[str, Any]:
    """Evaluate one dataset (resuming), write its CSV and summary JSON; return the summary. ``runtime``: the
    :meth:`mair.runtime.resolve.RuntimeSettings.as_dict` record of how the network runs (kept in the summary; a rerun
    on another path starts the CSV again rather than mixing rows of both). ``weights_source`` (``published``
    for the authors' checkpoints) is recorded in the summary when given."""
    import torch

    tag = ref.id + ("+" if self_ensemble else "")
    variant = "MaIR+" if self_ensemble else "MaIR"
    base = {
        "experiment": spec.experiment,
        "dataset": ref.id,
        "variant": variant,
        "scope": scope,
        "weights": weights,
        "created": None,
        **({"runtime": dict(runtime)} if runtime else {}),
    }
    if weights_source is not None:
        base["weights_source"] = weights_source
    fingerprint = {
        "weights_sha256": weights_sha256,
        "spec": asdict(spec),
        "dataset": asdict(ref),
        "variant": variant,
        "scope": scope,
    }
    if runtime:
        fingerprint["runtime"] = {
            k: runtime.get(k) for k in ("precision", "scan_backend_resolved", "compile_backend", "compile_mode")
        }
    if ref.submission_only or ref.pairing == "dnd_bboxes":
        from mair.evaluate.dnd import write_dnd_submission

        images = root / (ref.lq or "images_srgb")
        mats = sorted(images.glob("*.mat")) if images.is_dir() else []
        info = root / "info.mat"
        fingerprint["data"] = data_identity(root, [*mats, info if info.is_file() else None])

        def restore_patch(patch: np.ndarray) -> np.ndarray:
            x = torch.from_numpy(np.ascontiguousarray(patch.transpose(2, 0, 1)))[None].float().to(device)
            out = run_protocol(model, x, spec.protocol, self_ensemble)
            return out[0].clamp(0, 1).float().cpu().numpy().transpose(1, 2, 0)

        bundle = write_dnd_submission(
            restore_patch,
            root / (ref.lq or "images_srgb"),
            root / "info.mat",
            out_dir / tag,
            fingerprint=fingerprint,
            progress=progress,
        )
        summary = {
            **base,
            "metrics": {},
            "submission": str(bundle),
            "n_images": _count_mats(out_dir / tag),
            "complete": True,
            "created": _now(),
        }
        atomic_write_json(out_dir / f"{tag}.json", summary)
        return summary

    pairs = list_pairs(ref, root, spec.scale)
    if not pairs:
        raise EvaluationError(f"{root}: no test images for {ref.id}")
    fingerprint["data"] = data_identity(root, [f for p in pairs for f in (p.gt, p.lq)])
    results = ResultsCSV(out_dir / f"{tag}.csv", _columns(spec), fingerprint)
    try:
        todo = [p for p in pairs if p.name not in results.rows]
        samples = {p.name for p in pairs[:SAMPLE_IMAGES]}
        if len(todo) < len(pairs):
            print(
                f"{tag}: {len(pairs) - len(todo)} of {len(pairs)} images already done" + (", resuming" if todo else ""),
                file=sys.stderr,
            )
        for pair in _progress(todo, f"{spec.experiment}/{tag}", progress):
            lq, gt = load_pair(pair, spec)
            x = torch.from_numpy(np.ascontiguousarray(lq.transpose(2, 0, 1)))[None].to(device)
            out = run_protocol(model, x, spec.protocol, self_ensemble)
            if tuple(out.shape[-2:]) != gt.shape[:2]:
                raise EvaluationError(f"{pair.name}: output {tuple(out.shape[-2:])} vs target {gt.shape[:2]}")
            if pair.name in samples:
                _save_sample(sample_path(out_dir, tag, pair.name), out)
            results.append({"name": pair.name, **image_metrics(out, gt, spec)})
    finally:
        results.close()
    rows = [results.rows[p.name] for p in pairs]
    summary = {
        **base,
        "metrics": {"psnr": _mean(r["psnr"] for r in rows), "ssim": _mean(r["ssim"] for r in rows)},
        "metric_space": spec.primary_space,
        "crop_border": spec.crop_border,
        "extra_metrics": {
            s: {"psnr": _mean(r[f"psnr_{s}"] for r in rows), "ssim": _mean(r[f"ssim_{s}"] for r in rows)}
            for s in spec.spaces[1:]
        },
        "n_images": len(rows),
        "complete": True,
        "protocol": spec.protocol,
        "metric_input": ("uint8" if (spec.use_image or not spec.unet_metrics) else "float_clamped"),
        "created": _now(),
    }
    if spec.unet_metrics and not spec.use_image:
        official = [r["psnr_official_unclamped"] for r in rows]
        summary["clamping_check"] = {
            "official_unclamped_psnr": _mean(official),
            "images_changed": sum(1 for r, o in zip(rows, official, strict=True) if abs(r["psnr"] - o) > 1e-9),
        }
    atomic_write_json(out_dir / f"{tag}.json", summary)
    return summary


#: Restored images kept per test set and variant (the first ones by name), logged to MLflow as samples.
SAMPLE_IMAGES = 3


def sample_path(out_dir: Path, tag: str, name: str) -> Path:
    """``results/<weights>/<scope>/eval/<exp>/samples/<dataset>[+]/<image>.png``: a restored sample image."""
    return out_dir / "samples" / tag / f"{Path(name).stem}.png"


def _save_sample(path: Path, out: Any) -> None:
    from mair.common.atomic import atomic_write_bytes
    from mair.evaluate.protocol import tensor2img

    img = tensor2img(out)
    ok, buf = cv2.imencode(".png", img if img.ndim == 2 else img[..., ::-1])
    if ok:
        atomic_write_bytes(path, buf.tobytes())


def _count_mats(folder: Path) -> int:
    return sum(1 for p in folder.glob("*.mat")) if folder.is_dir() else 0


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _log_mlflow(summary: Mapping[str, Any], spec: EvalSpec, files: Sequence[Path], images: Sequence[Path] = ()) -> None:
    """Log one summary through :mod:`mair.common.tracking`; never raise."""
    from mair.common import tracking

    try:
        params = {
            "arch": spec.arch,
            "protocol": spec.protocol,
            "task": spec.task,
            **{f"net.{k}": v for k, v in spec.kwargs.items()},
        }
        tracking.log_evaluation(
            summary=dict(summary),
            params=params,
            artifacts=[str(f) for f in files if Path(f).exists()],
            images=[str(f) for f in images if Path(f).is_file()],
        )
    except Exception as error:  # tracking must never break an evaluation
        warnings.warn(
            f"MLflow logging failed ({type(error).__name__}: {error}); results are in the files", stacklevel=2
        )


def default_weights(
    experiment_id: str, scope: str = "paper", results_dir: str | os.PathLike[str] = "results/trained"
) -> Path:
    """``results/trained/<scope>/weights/<experiment>.pth``, where training puts final weights."""
    return Path(results_dir) / scope / "weights" / f"{experiment_id}.pth"


def resolve_device(device: str | None) -> str:
    """``cuda`` when available unless ``device`` names one; a clear error for an unavailable CUDA."""
    import torch

    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise EvaluationError(f"device {device!r} requested but CUDA is not available here; use --device cpu")
    return str(device)


def inference_runtime(device: str, exact: bool = False, compile: bool | None = None) -> Any:
    """The :class:`mair.runtime.resolve.RuntimeSettings` of inference on ``device``, applied to this process
    (TF32 switches, compile cache)."""
    from mair.runtime.resolve import RuntimeSettingsError, resolve_runtime

    try:
        runtime = resolve_runtime(device, exact, workload="infer", compile=compile)
    except RuntimeSettingsError as error:
        raise EvaluationError(str(error)) from None
    runtime.apply()
    return runtime


def evaluate(
    experiment: str | Experiment,
    weights: str | os.PathLike[str] | None = None,
    *,
    datasets: Sequence[str] | None = None,
    self_ensemble: bool = False,
    scope: str = "paper",
    device: str | None = None,
    results_dir: str | os.PathLike[str] = "results/trained",
    data_root: str | os.PathLike[str] | None = None,
    model: Any = None,
    dataset_roots: Mapping[str, Path] | None = None,
    track: bool = True,
    progress: bool = True,
    exact: bool = False,
    weights_source: str | None = None,
) -> list[dict[str, Any]]:
    """Evaluate an experiment (id, or a loaded :class:`~mair.experiments.Experiment`) on its test sets; return
    the summaries.

    ``model`` replaces the network built from the experiment (tests); ``dataset_roots`` maps dataset ids to
    prepared folders instead of :func:`mair.data.paths.prepared_dir`. ``exact``: true fp32 (``--exact``);
    otherwise :func:`mair.runtime.resolve_runtime`'s default for inference.
    """
    exp = experiment_at(experiment, scope) if isinstance(experiment, str) else experiment
    spec = eval_spec(exp)
    refs = spec.datasets if not datasets else [spec.dataset(d) for d in datasets]
    dev = resolve_device(device)
    runtime = inference_runtime(dev, exact)
    print(runtime.describe(), file=sys.stderr)
    weights_path: str | None = None
    if model is None:
        path = Path(weights) if weights is not None else default_weights(spec.experiment, scope, results_dir)
        if not path.is_file():
            raise EvaluationError(
                missing_weights_message(path)
                + ("" if weights is not None else f" (train {spec.experiment} or pass --weights PATH)")
            )
        weights_path = str(path)
        model = runtime.prepare_model(build_model(spec, path, dev))
    else:
        if hasattr(model, "modules"):  # a network given by the caller gets the same scan backend
            runtime.prepare_model(model)
        if weights is not None:
            weights_path = str(weights)
    sha = sha256_file(weights_path) if weights_path and Path(weights_path).is_file() else None
    if self_ensemble and spec.arch != "MaIR":
        print(
            "note: MaIR+ (self-ensemble) is defined for the MaIR network; applying it to the U-Net anyway",
            file=sys.stderr,
        )
    out_dir = Path(results_dir) / scope / "eval" / spec.experiment
    summaries = []
    for ref in refs:
        root = (
            Path(dataset_roots[ref.id])
            if dataset_roots and ref.id in dataset_roots
            else dataset_root(ref.id, scope, data_root)
        )
        summary = evaluate_dataset(
            model,
            spec,
            ref,
            root,
            out_dir,
            self_ensemble=self_ensemble,
            scope=scope,
            device=dev,
            weights=weights_path,
            weights_sha256=sha,
            progress=progress,
            runtime=runtime.as_dict(),
            weights_source=weights_source,
        )
        tag = ref.id + ("+" if self_ensemble else "")
        if summary["metrics"]:
            extra = "".join(
                f", {s}: {v['psnr']:.4f} dB / {v['ssim']:.4f}" for s, v in summary.get("extra_metrics", {}).items()
            )
            print(
                f"{spec.experiment} {tag}: PSNR {summary['metrics']['psnr']:.4f} dB, "
                f"SSIM {summary['metrics']['ssim']:.4f} ({summary['metric_space']}{extra}) "
                f"over {summary['n_images']} images"
            )
        else:
            print(f"{spec.experiment} {tag}: submission bundle {summary['submission']}")
        if track:
            samples = sorted((out_dir / "samples" / tag).glob("*.png"))
            _log_mlflow(summary, spec, [out_dir / f"{tag}.csv", out_dir / f"{tag}.json"], samples)
        summaries.append(summary)
    return summaries
