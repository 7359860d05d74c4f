"""Figures (PNG, matplotlib's Agg canvas, no pyplot state): training curves and PSNR versus parameters.

A missing input skips that figure with a note; it is never an error.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import pandas as pd

from mair.common.atomic import atomic_write_bytes
from mair.report import DEMO_BANNER
from mair.report.collect import read_log, run_dirs

TRAIN_COLUMNS = ("iter", "loss", "lr")
VAL_COLUMNS = ("iter", "dataset", "psnr")
# Preferred (setting, dataset) for the PSNR-versus-parameters chart: Urban100 x4 first, then what exists.
PSNR_PARAMS_ORDER = [(s, d) for s in ("x4", "x3", "x2") for d in ("Urban100", "Manga109", "B100", "Set14", "Set5")]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "run"


def _save(fig: object, path: Path) -> Path:
    """Render a Figure to PNG bytes and write them atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)  # type: ignore[arg-type]
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)  # type: ignore[attr-defined]
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _title(text: str, scope: str) -> str:
    return f"{text}\n{DEMO_BANNER}" if scope == "demo" else text


def training_curves(run: Path, out_dir: Path, scope: str = "paper") -> tuple[Path | None, str | None]:
    """``curves_<experiment>.png``: loss and lr (train_log.csv) and PSNR (val_log.csv) vs iteration."""
    from matplotlib.figure import Figure

    train = read_log(run / "train_log.csv", TRAIN_COLUMNS)
    val = read_log(run / "val_log.csv", VAL_COLUMNS)
    if train is None and val is None:
        return (
            None,
            f"training curves for {run.name} skipped: no usable train_log.csv or val_log.csv in {run}",
        )
    panels = (["loss", "lr"] if train is not None else []) + (["psnr"] if val is not None else [])
    fig = Figure(figsize=(4.2 * len(panels), 3.4), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels, strict=True):
        if panel in ("loss", "lr") and train is not None:
            ax.plot(train["iter"], train[panel], lw=1.0)
            ax.set_ylabel("learning rate" if panel == "lr" else "training loss")
            if (train[panel] > 0).all():
                ax.set_yscale("log")
        elif val is not None:
            for dataset, part in val.groupby("dataset", sort=True):
                ax.plot(part["iter"], part["psnr"], marker="o", ms=3, lw=1.0, label=str(dataset))
            ax.set_ylabel("validation PSNR (dB)")
            ax.legend(fontsize=8)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    fig.suptitle(_title(run.name, scope), fontsize=10)
    return _save(fig, out_dir / f"curves_{_safe(run.name)}.png"), None


def _points(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.dropna(subset=["params_k", "psnr"])


def psnr_params_points(ours: pd.DataFrame, paper: pd.DataFrame) -> tuple[str, str, pd.DataFrame, pd.DataFrame]:
    """The chosen (setting, dataset) and the (label, params_k, psnr) points of ours and of the published rows.

    Returns empty frames when no lightweight-SR result of ours has both a PSNR and a parameter count.
    """
    empty = pd.DataFrame(columns=["label", "params_k", "psnr"])
    light = ours[ours["table"] == "sr_light"] if not ours.empty else ours
    if light.empty:
        return "", "", empty, empty
    for setting, dataset in PSNR_PARAMS_ORDER:
        rows = []
        part = light[light["setting"] == setting]
        for (method, variant), grp in part.groupby(["method", "variant"], sort=True):
            params = grp.loc[grp["metric"] == "params", "value"]
            psnr = grp.loc[(grp["metric"] == "PSNR") & (grp["dataset"] == dataset), "value"]
            if not params.empty and not psnr.dropna().empty:
                rows.append(
                    {
                        "label": f"{method}{variant} (ours)",
                        "params_k": float(params.iloc[0]) / 1e3,
                        "psnr": float(psnr.dropna().iloc[0]),
                    }
                )
        if rows:
            mine = pd.DataFrame(rows)
            break
    else:
        return "", "", empty, empty
    published = []
    pub = paper[(paper["table"] == "sr_light") & (paper["setting"] == setting)] if not paper.empty else paper
    for (method, variant), grp in pub.groupby(["method", "variant"], sort=False):
        params = grp[grp["metric"].str.startswith("Params(") & grp["number"].notna()]
        psnr = grp[(grp["metric"] == "PSNR") & (grp["dataset"] == dataset) & grp["number"].notna()]
        if params.empty or psnr.empty:
            continue
        value = float(params["number"].iloc[0])
        params_k = value if params["metric"].iloc[0].startswith("Params(K)") else value * 1e3
        published.append({"label": f"{method}{variant}", "params_k": params_k, "psnr": float(psnr["number"].iloc[0])})
    return setting, dataset, mine, pd.DataFrame(published, columns=["label", "params_k", "psnr"])


def psnr_vs_params(
    ours: pd.DataFrame, paper: pd.DataFrame, out_dir: Path, scope: str = "paper"
) -> tuple[Path | None, str | None]:
    """``psnr_vs_params.png``: lightweight SR PSNR against parameters, ours beside the published baselines."""
    from matplotlib.figure import Figure

    setting, dataset, mine, published = psnr_params_points(ours, paper)
    if mine.empty:
        return None, (
            "PSNR-versus-parameters chart skipped: no lightweight-SR result with both a PSNR and a "
            "parameter count (params in the summary JSON)"
        )
    fig = Figure(figsize=(6.0, 4.2), layout="constrained")
    ax = fig.subplots()
    if not published.empty:
        ax.scatter(published["params_k"], published["psnr"], c="0.45", s=22, label="published")
        for rec in published.itertuples():
            ax.annotate(rec.label, (rec.params_k, rec.psnr), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.scatter(mine["params_k"], mine["psnr"], c="tab:red", marker="*", s=110, label="ours", zorder=3)
    for rec in mine.itertuples():
        ax.annotate(
            rec.label,
            (rec.params_k, rec.psnr),
            fontsize=8,
            color="tab:red",
            xytext=(4, -10),
            textcoords="offset points",
        )
    ax.set_xlabel("parameters (K)")
    ax.set_ylabel(f"PSNR (dB), {dataset} ×{setting.lstrip('x')}")
    fig.suptitle(_title("Lightweight SR: PSNR vs parameters", scope), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out_dir / "psnr_vs_params.png"), None


def write_figures(
    ours: pd.DataFrame, paper: pd.DataFrame, runs_dir: Path, scope: str, out_dir: Path
) -> tuple[list[Path], list[str]]:
    """Every figure that its inputs allow; the rest become notes."""
    made: list[Path] = []
    notes: list[str] = []
    runs = run_dirs(runs_dir, scope)
    if not runs:
        notes.append(f"training curves skipped: no experiment folders in {Path(runs_dir) / scope}")
    for run in runs:
        path, note = training_curves(run, out_dir, scope)
        made += [path] if path else []
        notes += [note] if note else []
    path, note = psnr_vs_params(ours, paper, out_dir, scope)
    made += [path] if path else []
    notes += [note] if note else []
    return made, notes
