"""The docs and comments cite only what a user has: no developer-only notes, and every pointer to a section of
docs/<file>.md or of the README (the file, then the heading in double quotes) names a file and a heading that
exist."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCANNED_DIRS = ("mair", "tests", "docs", "workflow", "params", "benchmarks", ".ci")
SCANNED_FILES = ("README.md", "Snakefile", "pyproject.toml")
TEXT_SUFFIXES = {".py", ".md", ".smk", ".yaml", ".yml", ".json", ".toml", ".txt", ".sh", ""}

SECTION_SIGN = "\u00a7"
#: Citations of the team's developer-only notes on the official code, which users do not have.
CITATIONS = re.compile(
    "|".join(
        (
            "official_mair" + "_spec",
            rf"\bspec\s*{SECTION_SIGN}",
            rf"{SECTION_SIGN}\s*\d",
            r"\bspec\s+\d",
            r"\bthe spec\b",
            r"\bspec's\b",
        )
    ),
    re.IGNORECASE,
)
#: ``docs/<file>.md`` with an optional quoted section: ``docs/pipeline.md "SLURM"``, ``docs/data.md, "Lock file"``.
#: A quote right after the name closes a string, so the next quoted text is no section.
DOCS_POINTER = re.compile(r'\bdocs/([\w.-]+\.md)\b(?:(?!")[ \t]*[,:]?\s*"([^"\n]+)")?')
README_POINTER = re.compile(r'\bREADME(?:\.md)?(?!")[ \t]*,?[ \t]*"([^"\n]+)"')
MARKDOWN_LINK = re.compile(r"\]\(([\w./-]+\.md)(?:#[\w-]*)?\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$")


def scanned_files() -> list[Path]:
    """Every text file a user gets that may hold comments or docs (symbolic links are not followed)."""
    files = [REPO / name for name in SCANNED_FILES if (REPO / name).is_file()]
    for folder in SCANNED_DIRS:
        for root, dirs, names in os.walk(REPO / folder):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.startswith("."))
            for name in sorted(names):
                path = Path(root) / name
                if path.suffix in TEXT_SUFFIXES and not path.is_symlink():
                    files.append(path)
    return files


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def line_of(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1


def headings(path: Path) -> set[str]:
    """The heading texts of a Markdown file (outside code blocks), each also without a trailing ``(...)``."""
    found: set[str] = set()
    fenced = False
    for line in read(path).splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        match = None if fenced else HEADING.match(line)
        if match:
            text = match.group(1)
            found.add(text)
            found.add(re.sub(r"\s*\([^()]*\)$", "", text))
    return found


def test_the_scan_covers_the_package_docs_and_tests() -> None:
    names = {p.relative_to(REPO).as_posix() for p in scanned_files()}
    assert {"README.md", "mair/models/blocks.py", "docs/networks.md", "tests/test_docs.py"} <= names
    assert any(n.startswith("workflow/rules/") for n in names)


def test_the_patterns_catch_citations_and_spare_ordinary_text() -> None:
    spec = "spec"  # written apart so that this file does not cite what it forbids
    cited = [
        f"({spec} {SECTION_SIGN}1.8)",
        f"Spec {SECTION_SIGN}1.4 steps",
        f"see {SECTION_SIGN}8.21",
        f"({spec} 8.19)",
    ]
    cited += [f"the {spec}'s vectors", f"as the {spec} says", "reference/official_mair" + "_spec.md"]
    for text in cited:
        assert CITATIONS.search(text), text
    plain = ["spec: EvalSpec", "BackendSpec(", f"{SECTION_SIGN} on a row label", "importlib.util.find_spec(x)"]
    for text in plain:
        assert not CITATIONS.search(text), text


def test_no_file_cites_the_developers_notes() -> None:
    hits = [
        f"{path.relative_to(REPO)}:{line_of(text, m.start())}: {m.group(0)!r}"
        for path in scanned_files()
        for text in [read(path)]
        for m in CITATIONS.finditer(text)
    ]
    assert not hits, "cite docs/ instead of the developers' notes:\n" + "\n".join(hits)


def test_docs_pointers_name_existing_files_and_headings() -> None:
    docs = REPO / "docs"
    problems: list[str] = []
    seen = 0
    for path in scanned_files():
        text = read(path)
        where = path.relative_to(REPO)
        for m in DOCS_POINTER.finditer(text):
            seen += 1
            target, section = docs / m.group(1), m.group(2)
            if not target.is_file():
                problems.append(f"{where}:{line_of(text, m.start())}: no file docs/{m.group(1)}")
            elif section is not None and section not in headings(target):
                problems.append(f'{where}:{line_of(text, m.start())}: docs/{m.group(1)} has no heading "{section}"')
        for m in README_POINTER.finditer(text):
            seen += 1
            if m.group(1) not in headings(REPO / "README.md"):
                problems.append(f'{where}:{line_of(text, m.start())}: README.md has no heading "{m.group(1)}"')
        if path.suffix == ".md":
            for m in MARKDOWN_LINK.finditer(text):
                seen += 1
                if not (path.parent / m.group(1)).is_file():
                    problems.append(f"{where}:{line_of(text, m.start())}: link to a missing {m.group(1)}")
    assert seen > 50  # the pattern still finds the pointers
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("doc", sorted(p.name for p in (REPO / "docs").glob("*.md")))
def test_docs_hold_no_history(doc: str) -> None:
    """History belongs in git log: no "round N", "session N" or "N-th round" in the docs."""
    text = read(REPO / "docs" / doc)
    ordinal = r"(first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|eleventh|twelfth|\d+(st|nd|rd|th))"
    history = re.compile(rf"\b(round|session)\s+\d+\b|\b{ordinal}\s+(round|session)\b", re.IGNORECASE)
    hits = [f"{doc}:{line_of(text, m.start())}: {m.group(0)!r}" for m in history.finditer(text)]
    assert not hits, "\n".join(hits)
