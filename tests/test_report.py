"""``mair tables``: LaTeX, Markdown and CSV tables, figures and tables.tex from a small results set."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from mair.common import tracking
from mair.report import DEMO_BANNER
from mair.report.collect import (
    PAPER_COLUMNS,
    infer_experiment,
    load_paper_results,
    merge_sources,
    normalise_reference,
    read_mlflow,
    read_summaries,
)
from mair.report.latex import latex_escape
from mair.report.tables import to_frame
from mair.report.write import ReportResult, write_report

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# A small published set with known ranks: x2 Set5 PSNR among SwinIR 38.42, MambaIR 38.57, MaIR (paper) 38.56,
# MaIR (ours) 38.60, MaIR+ (paper) 38.62, MaIR+ (ours) 38.70 -> best MaIR+ ours, second MaIR+ paper.
PAPER_ROWS = [
    ("sr_classic", "SwinIR", "", "x2", "Set5", "PSNR", "38.42", "baseline table", "high", ""),
    ("sr_classic", "SwinIR", "", "x2", "Set5", "SSIM", "0.9623", "baseline table", "high", ""),
    ("sr_classic", "MambaIR", "", "x2", "Set5", "PSNR", "38.57", "baseline table", "high", ""),
    ("sr_classic", "MambaIR", "", "x2", "Set5", "SSIM", "0.9627", "baseline table", "high", ""),
    ("sr_classic", "MaIR", "", "x2", "Set5", "PSNR", "38.56", "paper note", "low-medium: secondary", ""),
    ("sr_classic", "MaIR", "+", "x2", "Set5", "PSNR", "38.62", "paper note", "low-medium: secondary", ""),
    (
        "sr_classic",
        "MambaIR",
        "+",
        "x4",
        "Set5",
        "PSNR",
        "31.13",
        "baseline table",
        "verbatim, but a probable typo",
        "PROBABLE TYPO in the printed source table, kept as printed",
    ),
    ("sr_light", "SwinIR-light", "", "x4", "", "Params(K)", "897", "baseline table", "high", ""),
    ("sr_light", "SwinIR-light", "", "x4", "", "MACs(G)@1280x720", "49.6", "baseline table", "high", ""),
    ("sr_light", "SwinIR-light", "", "x4", "Urban100", "PSNR", "26.47", "baseline table", "high", ""),
    (
        "sr_light",
        "MaIR-T",
        "",
        "x4",
        "",
        "Params(M)",
        "0.897",
        "official config",
        "derived (computed)",
        "derived",
    ),
    ("dn_real", "MambaIR", "", "", "SIDD", "PSNR", "39.89", "baseline table", "high", ""),
    ("dn_real", "MambaIR", "", "", "DND", "PSNR", "40.04", "baseline table", "high", ""),
    ("dn_real", "MaIR", "", "", "SIDD", "PSNR", "39.92", "survey", "low: secondary, mislabelled", ""),
]


def _summary(
    root: Path, scope: str, experiment: str, dataset: str, metrics: dict, plus: bool = False, **extra: object
) -> None:
    path = root / "results" / scope / "eval" / experiment / f"{dataset}{'+' if plus else ''}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    summary = {
        "experiment": experiment,
        "dataset": dataset,
        "variant": "MaIR+" if plus else "MaIR",
        "scope": scope,
        "metrics": metrics,
        "metric_space": "y",
        "crop_border": 2,
        "n_images": 3,
        "complete": True,
        "weights": "w.pth",
        "created": "2025-01-01T00:00:00",
    }
    summary.update(extra)
    path.write_text(json.dumps(summary))


def make_inputs(root: Path, scope: str) -> Path:
    """Summaries, training logs and a small paper_results.csv under ``root``; returns the paper CSV."""
    _summary(root, scope, "sr_classic_x2", "set5", {"psnr": 38.60, "ssim": 0.9631})
    _summary(root, scope, "sr_classic_x2", "set5", {"psnr": 38.70, "ssim": 0.9640}, plus=True)
    _summary(root, scope, "sr_classic_x2", "urban100", {"psnr": 34.00, "ssim": 0.9400})
    _summary(root, scope, "sr_classic_x2", "manga109", {"psnr": 99.0}, complete=False)  # must not show
    _summary(
        root,
        scope,
        "sr_light_t_x4",
        "urban100",
        {"psnr": 26.60, "ssim": 0.8000},
        info={"params": 897228, "flops": 53.07e9},
    )
    _summary(root, scope, "sr_light_s_x4", "urban100", {"psnr": 26.90, "ssim": 0.8100}, params=1374156)
    _summary(root, scope, "dn_real", "sidd_val", {"psnr": 39.90, "ssim": 0.9601})
    _summary(root, scope, "dn_real", "dnd", {}, submission="results/dnd_submission.zip")
    _summary(root, scope, "mystery", "foo", {"psnr": 1.0})
    _summary(root, scope, "sr_classic_x2", "div2k_val", {"psnr": 35.0, "ssim": 0.95})  # not a column
    run = root / "runs" / scope / "sr_classic_x2"
    run.mkdir(parents=True)
    (run / "train_log.csv").write_text(
        "iter,epoch,loss,lr,seconds\n"
        + "".join(f"{i},{i // 10},{1.0 / i:.5f},{2e-4 if i < 30 else 1e-4},{i * 0.5}\n" for i in range(1, 61))
    )
    (run / "val_log.csv").write_text(
        "iter,dataset,psnr,ssim\n" + "".join(f"{i},set14,{30 + i / 20:.3f},0.9\n" for i in range(10, 61, 10))
    )
    (root / "runs" / scope / "no_logs").mkdir()
    paper = root / "paper_results.csv"
    pd.DataFrame(PAPER_ROWS, columns=list(PAPER_COLUMNS)).to_csv(paper, index=False)
    return paper


def _report(root: Path, scope: str, paper: Path) -> ReportResult:
    return write_report(
        scope=scope,
        results_dir=root / "results",
        runs_dir=root / "runs",
        paper_results=paper,
        experiments_dir=None,
    )


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ReportResult]:
    """One report per scope (built once: writing figures imports matplotlib)."""
    out = {}
    for scope in ("paper", "demo"):
        root = tmp_path_factory.mktemp(scope)
        out[scope] = _report(root, scope, make_inputs(root, scope))
    return out


def _lines(text: str, label: str) -> list[str]:
    """The table lines of ``text`` (LaTeX or Markdown) whose row label is ``label``, in order."""
    found = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.replace(r"\\", "").split("&" if "&" in line else "|")]
        if label in cells[:3]:
            found.append(line)
    return found


def _line(text: str, label: str) -> str:
    """The first table line labelled ``label`` (rows of the first group come first)."""
    found = _lines(text, label)
    assert found, f"no row {label!r} in:\n{text}"
    return found[0]


def test_latex_bold_second_underline_and_dashes(reports: dict[str, ReportResult]) -> None:
    tex = (reports["paper"].out_dir / "sr_classic.tex").read_text()
    assert r"\usebox{\mairfitbox}" in tex and r"\toprule" in tex and r"\bottomrule" in tex
    plus_ours = _line(tex, "MaIR+ (ours)")
    assert r"\textbf{38.70}" in plus_ours and r"\textbf{0.9640}" in plus_ours
    assert r"\underline{38.62}" in _line(tex, "MaIR+ (paper)")
    ours = _line(tex, "MaIR (ours)")
    assert r"\underline{0.9631}" in ours and r"\textbf" not in ours
    swinir = _line(tex, "SwinIR")
    assert "38.42" in swinir and r"\textbf" not in swinir and r"\underline" not in swinir
    # B100 and Manga109 of ours are missing (Manga109 only in an incomplete summary): dashes, never 0 or 99.
    cells = [c.strip() for c in ours.rstrip("\\ ").split("&")]
    assert cells[2:4] == ["38.60", r"\underline{0.9631}"]
    assert cells[6:8] == ["--", "--"] and cells[10:12] == ["--", "--"]
    assert "99.00" not in tex
    # The difference rows: ours - paper, signed, never ranked.
    diffs = [line for line in tex.splitlines() if line.lstrip(" &").startswith(r"$\Delta$")]
    assert "+0.04" in diffs[0] and "+0.08" in diffs[1]
    assert all(r"\textbf" not in d and r"\underline" not in d for d in diffs)
    assert "DEMO" not in tex


def test_markdown_bold_underline_dash_and_difference(reports: dict[str, ReportResult]) -> None:
    md = (reports["paper"].out_dir / "sr_classic.md").read_text()
    assert "**38.70**" in _line(md, "MaIR+ (ours)") and "**0.9640**" in _line(md, "MaIR+ (ours)")
    assert "<u>38.62</u>" in _line(md, "MaIR+ (paper)")
    ours = [c.strip() for c in _line(md, "MaIR (ours)").strip()[1:-1].split("|")]
    assert ours[:4] == ["", "MaIR (ours)", "38.60", "<u>0.9631</u>"]  # the scale is on the group's first row
    assert ours[6:8] == ["–", "–"] and ours[10:12] == ["–", "–"]  # B100 and Manga109 missing
    assert _line(md, "SwinIR").startswith("| ×2 | SwinIR | 38.42 |")
    assert "+0.04" in md and "DEMO" not in md


def test_published_flags_typo_derived_and_low_confidence(reports: dict[str, ReportResult]) -> None:
    out = reports["paper"].out_dir
    tex = (out / "sr_classic.tex").read_text()
    assert "31.13$^{*}$" in _line(tex, "MambaIR+")
    assert "probable typo" in tex
    md = (out / "sr_classic.md").read_text()
    assert "31.13\\*" in md
    light = (out / "sr_light.tex").read_text()
    x2, x3, x4 = _lines(light, "MaIR-T (paper)")
    assert r"897$^{\dagger}$" in x4 and r"\dagger" not in x2 + x3  # derived count, published for x4 only
    assert r"39.92$^{\ddagger}$" in _line((out / "dn_real.tex").read_text(), "MaIR (paper)")


def test_lightweight_params_flops_and_dnd_text(reports: dict[str, ReportResult]) -> None:
    out = reports["paper"].out_dir
    light = to_frame(next(t for t in reports["paper"].tables if t.id == "sr_light"))
    t_ours = light[(light["setting"] == "x4") & (light["method"] == "MaIR-T") & (light["row"] == "ours")].iloc[0]
    assert t_ours["Params (K)"] == pytest.approx(897.228)
    assert t_ours["FLOPs (G)"] == pytest.approx(53.07)
    assert t_ours["Urban100 PSNR"] == pytest.approx(26.60)
    s_ours = light[(light["setting"] == "x4") & (light["method"] == "MaIR-S") & (light["row"] == "ours")].iloc[0]
    assert s_ours["Params (K)"] == pytest.approx(1374.156) and pd.isna(s_ours["FLOPs (G)"])
    swin = _line((out / "sr_light.tex").read_text(), "SwinIR-light")
    assert "897 & 49.6" in swin
    real_tex = _line((out / "dn_real.tex").read_text(), "MaIR (ours)")
    assert r"\multicolumn{2}{c}{online benchmark}" in real_tex
    real = to_frame(next(t for t in reports["paper"].tables if t.id == "dn_real"))
    ours = real[real["row"] == "ours"].iloc[0]
    assert pd.isna(ours["DND PSNR"]) and pd.isna(ours["DND SSIM"]) and "online benchmark" in ours["note"]
    assert ours["SIDD PSNR"] == pytest.approx(39.90)
    assert "online benchmark" in (out / "dn_real.md").read_text()


def test_demo_scope_marks_every_table(reports: dict[str, ReportResult]) -> None:
    out = reports["demo"].out_dir
    for table in ("sr_classic", "sr_light", "dn_color", "dn_real", "deblur", "dehaze"):
        tex = (out / f"{table}.tex").read_text()
        banner = latex_escape(DEMO_BANNER)
        caption = next(line for line in tex.splitlines() if line.startswith(r"\caption{"))
        assert banner in caption
        assert r"\multicolumn" in tex and rf"\textbf{{{banner}}}" in tex
        md = (out / f"{table}.md").read_text()
        assert md.splitlines()[0] == f"> **{DEMO_BANNER}**"
        csv = pd.read_csv(out / f"{table}.csv", keep_default_na=False)
        assert set(csv["scope"]) == {"demo"}
    assert DEMO_BANNER in (out / "tables.md").read_text()
    assert latex_escape(DEMO_BANNER) in (out / "tables.tex").read_text()


def test_csv_round_trip_and_empty_missing(reports: dict[str, ReportResult]) -> None:
    for table in reports["paper"].tables:
        path = reports["paper"].out_dir / f"{table.id}.csv"
        back = pd.read_csv(path, dtype={"setting": str, "note": str}, keep_default_na=False, na_values=[""])
        expected = to_frame(table)
        number_columns = [
            c for c in expected.columns if c not in ("scope", "table", "setting", "method", "row", "note")
        ]
        for column in ("setting", "note"):
            back[column] = back[column].fillna("")
        pd.testing.assert_frame_equal(back[number_columns], expected[number_columns].round(6), check_dtype=False)
        assert back["method"].tolist() == expected["method"].tolist()
        assert back["row"].tolist() == expected["row"].tolist()
        raw = path.read_text()
        assert "nan" not in raw.lower().replace("nanoseconds", "")
    sr = pd.read_csv(reports["paper"].out_dir / "sr_classic.csv")
    ours = sr[(sr["method"] == "MaIR") & (sr["row"] == "ours") & (sr["setting"] == "x2")].iloc[0]
    assert pd.isna(ours["B100 PSNR"]) and ours["Set5 PSNR"] == pytest.approx(38.60)


def test_notes_for_skipped_inputs(reports: dict[str, ReportResult]) -> None:
    notes = "\n".join(reports["paper"].notes)
    assert "manga109.json: summary is marked incomplete" in notes
    assert "'mystery'" in notes
    assert "not shown: div2k_val is not a column of the sr_classic table" in notes
    assert "no_logs" in notes  # a run folder without logs: figure skipped with a note
    assert "Notes" in (reports["paper"].out_dir / "tables.md").read_text()


def test_figures_written(reports: dict[str, ReportResult]) -> None:
    out = reports["paper"].out_dir
    for name in ("curves_sr_classic_x2.png", "psnr_vs_params.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000
    assert not (out / "curves_no_logs.png").exists()
    assert "psnr_vs_params.png" in (out / "tables.tex").read_text()


def test_missing_inputs_skip_figures_without_error(tmp_path: Path) -> None:
    result = write_report(
        scope="paper",
        results_dir=tmp_path / "results",
        runs_dir=tmp_path / "runs",
        paper_results=None,
        experiments_dir=None,
        figures=True,
    )
    notes = "\n".join(result.notes)
    assert "no evaluation results" in notes and "training curves skipped" in notes
    assert "PSNR-versus-parameters chart skipped" in notes
    assert not list(result.out_dir.glob("*.png"))
    # Every table is still written, with dashes only for ours.
    tex = (result.out_dir / "sr_classic.tex").read_text()
    assert all(cell.strip() == "--" for cell in _line(tex, "MaIR (ours)").rstrip("\\ ").split("&")[2:])


@pytest.mark.skipif(
    shutil.which("pdflatex") is None,
    reason="pdflatex not installed (CI: apt-get install texlive-latex-base texlive-latex-recommended)",
)
def test_tables_tex_compiles_with_pdflatex(tmp_path: Path) -> None:
    """Both scopes, with the real published numbers (every table, every escape); figures in the demo one."""
    for scope in ("demo", "paper"):
        root = tmp_path / scope
        make_inputs(root, scope)
        result = write_report(
            scope=scope,
            results_dir=root / "results",
            runs_dir=root / "runs",
            paper_results=REPO / "params" / "paper_results.csv",
            figures=scope == "demo",
        )
        assert ("includegraphics" in (result.out_dir / "tables.tex").read_text()) == (scope == "demo")
        proc = subprocess.run(
            ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "tables.tex"],
            cwd=result.out_dir,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, proc.stdout[-3000:]
        assert (result.out_dir / "tables.pdf").stat().st_size > 10000
        log = (result.out_dir / "tables.log").read_text(errors="replace")
        assert "Float too large" not in log and "Missing character" not in log


def test_latex_escape() -> None:
    assert latex_escape("a_b & 50% #1 {x} $y ~ ^") == r"a\_b \& 50\% \#1 \{x\} \$y \textasciitilde{} \textasciicircum{}"
    assert latex_escape("×2 σ=15 Δ − — –") == r"$\times$2 $\sigma$=15 $\Delta$ $-$ --- --"
    assert latex_escape("back\\slash") == r"back\textbackslash{}slash"
    assert latex_escape("café 中").isascii()


@pytest.mark.parametrize(
    ("experiment", "expected"),
    [
        ("sr_classic_x2", ("sr_classic", "x2", "MaIR")),
        ("sr_light_t_x3", ("sr_light", "x3", "MaIR-T")),
        ("sr_light_s_x4", ("sr_light", "x4", "MaIR-S")),
        ("dn_color_s25", ("dn_color", "sigma25", "MaIR")),
        ("dn_real", ("dn_real", "", "MaIR")),
        ("deblur_motion", ("deblur", "", "MaIR")),
        ("dehaze_its", ("dehaze", "", "MaIR")),
        ("dehaze_r6k", ("dehaze", "", "MaIR")),
    ],
)
def test_infer_experiment(experiment: str, expected: tuple[str, str, str]) -> None:
    info = infer_experiment(experiment)
    assert info is not None and (info.table, info.setting, info.method) == expected


def test_infer_experiment_explicit_keys_and_unknowns() -> None:
    info = infer_experiment("whatever", {"table": "sr_light", "scale": 2, "method": "MaIR-T"})
    assert info is not None and (info.table, info.setting, info.method) == ("sr_light", "x2", "MaIR-T")
    assert infer_experiment("sr_light_x2") is None  # MaIR-S or MaIR-T?
    assert infer_experiment("sr_classic") is None  # which scale?
    assert infer_experiment("mystery") is None


def test_infer_experiment_from_experiment_file(tmp_path: Path) -> None:
    (tmp_path / "odd_name.yaml").write_text(
        "id: odd_name\ntask: sr_light\npaper_results: {task: sr_light, variants: [MaIR-T], setting: x3}\n"
    )
    info = infer_experiment("odd_name", {}, tmp_path)
    assert info is not None and (info.table, info.setting, info.method) == ("sr_light", "x3", "MaIR-T")


def test_mlflow_fills_gaps_json_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _summary(tmp_path, "paper", "dn_real", "sidd_val", {"psnr": 39.90, "ssim": 0.9601})
    runs = [  # type: ignore[attr-defined]
        {
            "experiment": "dn_real",
            "dataset": "sidd_val",
            "variant": "MaIR",
            "metrics": {"psnr": 10.0},
            "complete": True,
            "run_id": "r1",
        },
        {
            "experiment": "deblur_gopro",
            "dataset": "gopro",
            "variant": "MaIR",
            "metrics": {"psnr": 33.1},
            "complete": True,
            "run_id": "r2",
        },
    ]
    monkeypatch.setattr(tracking, "eval_summaries", lambda uri, scope: runs)  # what the store returns
    merged = merge_sources(read_summaries(tmp_path / "results", "paper"), read_mlflow("sqlite:///x.db", "paper"))
    frame = merged.frame.set_index(["table", "dataset", "metric"])["value"]
    assert frame[("dn_real", "SIDD", "PSNR")] == pytest.approx(39.90)
    assert frame[("deblur", "GoPro", "PSNR")] == pytest.approx(33.1)


def test_mlflow_unreadable_store_is_a_note(tmp_path: Path) -> None:
    """A store that cannot be opened leaves the tables to the JSON summaries, with a note saying why."""
    with pytest.warns(tracking.TrackingWarning, match="no-such-folder of the SQLite store does not exist"):
        collected = read_mlflow(f"sqlite:///{tmp_path}/no-such-folder/mlflow.db", "paper")
    assert collected.frame.empty


def test_cli_tables_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mair.cli import COMMAND_MODULES, CommandError
    from mair.report import cli

    assert "mair.report.cli" in COMMAND_MODULES
    paper = make_inputs(tmp_path, "demo")
    monkeypatch.chdir(tmp_path)
    parser = argparse.ArgumentParser(prog="mair")
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["tables", "--scope", "demo", "--results-dir", "results", "--paper-results", str(paper), "--no-figures"]
    )
    assert args.handler(args) == 0
    out = tmp_path / "results" / "demo" / "tables"
    assert {p.name for p in out.iterdir()} >= {
        "sr_classic.tex",
        "sr_classic.md",
        "sr_classic.csv",
        "tables.tex",
        "tables.md",
        "dehaze.csv",
    }
    assert not list(out.glob("*.png"))
    args = parser.parse_args(["tables", "--paper-results", str(tmp_path / "absent.csv")])
    with pytest.raises(CommandError, match="no such file"):
        args.handler(args)


def test_registration_is_cheap() -> None:
    code = "import sys, mair.report.cli; print(any(m in sys.modules for m in ('pandas', 'matplotlib')))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert proc.stdout.strip() == "False"


def test_paper_results_file() -> None:
    paper = load_paper_results(REPO / "params" / "paper_results.csv")
    assert list(paper.columns[: len(PAPER_COLUMNS)]) == list(PAPER_COLUMNS)
    assert len(paper) == 976
    typo = paper[
        (paper["method"] == "MambaIR")
        & (paper["variant"] == "+")
        & (paper["setting"] == "x4")
        & (paper["dataset"] == "Set5")
        & (paper["metric"] == "PSNR")
    ].iloc[0]
    assert typo["value"] == "31.13" and "TYPO" in typo["note"]
    assert paper["number"].notna().all()
    assert set(paper["table"]) == {"sr_classic", "sr_light", "dn_color", "dn_real", "deblur", "dehaze"}
    reference = REPO.parent / "shared" / "reference" / "paper_results.csv"
    if reference.is_file():  # the team's reference copy: ours is exactly its tidy form
        pd.testing.assert_frame_equal(paper[list(PAPER_COLUMNS)], normalise_reference(reference))
