"""LaTeX output: one booktabs ``table`` fragment per paper table and a standalone ``tables.tex``.

The output is plain ASCII: every text goes through :func:`latex_escape`, which also spells the few Unicode
signs we use (×, σ, Δ, −, dashes, daggers) as LaTeX. Numbers are plain with fixed decimals; best values are
``\\textbf``, second best ``\\underline``; missing numbers print ``--``. The fragments need only ``booktabs``
and ``graphicx`` (a too-wide table is scaled to the line width); ``tables.tex`` adds ``geometry``.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

from mair.report import DEMO_BANNER
from mair.report.tables import Cell, ColumnSpec, ReportTable, Row, format_number

_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "|": r"\textbar{}",
    "×": r"$\times$",
    "σ": r"$\sigma$",
    "Δ": r"$\Delta$",
    "−": r"$-$",
    "–": "--",
    "—": "---",
    "†": r"$^\dagger$",
    "‡": r"$^\ddagger$",
    "±": r"$\pm$",
    "µ": r"$\mu$",
    "≈": r"$\approx$",
    "§": r"\S{}",
    "‘": "`",
    "’": "'",
    "“": "``",
    "”": "''",
    "\u00a0": "~",
}

_MARKS = {"*": r"$^{*}$", "†": r"$^{\dagger}$", "‡": r"$^{\ddagger}$", "§": r"$^{\S}$"}
MISSING = "--"


def latex_escape(text: str) -> str:
    """Escape ``text`` for LaTeX text mode; the result is ASCII (other accents are dropped, unknowns -> ?)."""
    out: list[str] = []
    for char in str(text):
        if char in _SPECIAL:
            out.append(_SPECIAL[char])
        elif ord(char) < 128:
            out.append(char if char.isprintable() or char == " " else " ")
        else:
            plain = unicodedata.normalize("NFKD", char).encode("ascii", "ignore").decode("ascii")
            out.append(plain or "?")
    return "".join(out)


def render_cell(cell: Cell, col: ColumnSpec, signed: bool = False) -> str:
    """One cell: number (bold/underlined by rank, mark as superscript), text, or ``--``."""
    if cell.value is None:
        return latex_escape(cell.text) if cell.text else MISSING
    text = format_number(cell.value, col.decimals, signed) or MISSING
    if cell.mark:
        text += _MARKS.get(cell.mark, latex_escape(cell.mark))
    if cell.rank == 1:
        return rf"\textbf{{{text}}}"
    if cell.rank == 2:
        return rf"\underline{{{text}}}"
    return text


def _row_cells(row: Row, columns: Sequence[ColumnSpec]) -> list[str]:
    """Rendered cells; neighbouring cells of one dataset with the same text merge into a \\multicolumn."""
    out: list[str] = []
    i = 0
    while i < len(columns):
        cell = row.cells[columns[i].key]
        if cell.value is None and cell.text:
            j = i + 1
            while (
                j < len(columns)
                and columns[j].group == columns[i].group
                and row.cells[columns[j].key].value is None
                and row.cells[columns[j].key].text == cell.text
            ):
                j += 1
            out.append(
                rf"\multicolumn{{{j - i}}}{{c}}{{{latex_escape(cell.text)}}}" if j - i > 1 else latex_escape(cell.text)
            )
            i = j
            continue
        out.append(render_cell(cell, columns[i], signed=row.kind == "diff"))
        i += 1
    return out


def _header(table: ReportTable, lead: int) -> list[str]:
    """Header lines: dataset groups with \\cmidrule, then metric names (one line if one metric a set)."""
    cols = table.columns
    lead_names = ([latex_escape(table.spec.group_label)] if lead == 2 else []) + ["Method"]
    if len(table.spec.metrics) == 1:
        names = [latex_escape(c.group or c.header) for c in cols]
        return [" & ".join(lead_names + names) + r" \\"]
    top = [""] * lead
    rules: list[str] = []
    i = 0
    while i < len(cols):
        if not cols[i].group:
            top.append("")
            i += 1
            continue
        j = i
        while j < len(cols) and cols[j].group == cols[i].group:
            j += 1
        top.append(rf"\multicolumn{{{j - i}}}{{c}}{{{latex_escape(cols[i].group)}}}")
        rules.append(rf"\cmidrule(lr){{{lead + i + 1}-{lead + j}}}")
        i = j
    bottom = lead_names + [latex_escape(c.header) for c in cols]
    return [" & ".join(top) + r" \\", "".join(rules), " & ".join(bottom) + r" \\"]


def render_tabular(table: ReportTable) -> str:
    """The ``tabular`` of a table."""
    lead = 2 if table.spec.group_label else 1
    ncols = lead + len(table.columns)
    lines = [r"\begin{tabular}{" + "l" * lead + "c" * len(table.columns) + "}", r"\toprule"]
    if table.demo:
        lines += [rf"\multicolumn{{{ncols}}}{{l}}{{\textbf{{{latex_escape(DEMO_BANNER)}}}}} \\", r"\midrule"]
    lines += _header(table, lead)
    for group in table.groups():
        lines.append(r"\midrule")
        rows = [r for r in table.rows if r.group == group]
        for k, row in enumerate(rows):
            if row.first_of_method and k > 0:
                lines.append(r"\addlinespace[3pt]")
            lead_cells = [latex_escape(group) if k == 0 else ""] if lead == 2 else []
            lead_cells.append(latex_escape(row.label) + _MARKS.get(row.mark, ""))
            lines.append(" & ".join(lead_cells + _row_cells(row, table.columns)) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines)


def render_table(table: ReportTable) -> str:
    """A ``table`` float (booktabs), scaled down to the line width when wider."""
    head = [f"% Generated by `mair tables` (scope: {table.scope}); do not edit by hand."]
    if table.demo:
        head.append(f"% {latex_escape(DEMO_BANNER)}")
    body = [
        r"\begin{table}[htbp]",
        r"\centering",
        rf"\caption{{{latex_escape(table.caption())}}}",
        rf"\label{{tab:mair-{table.id.replace('_', '-')}}}",
        r"\ifdefined\mairfitbox\else\newsavebox{\mairfitbox}\fi",
        r"\sbox{\mairfitbox}{\footnotesize%",
        render_tabular(table) + "}%",
        r"\ifdim\wd\mairfitbox>\linewidth\resizebox{\linewidth}{!}{\usebox{\mairfitbox}}"
        r"\else\usebox{\mairfitbox}\fi",
    ]
    if table.footnotes:
        notes = [(_MARKS.get(m, "") + " " if m else "") + latex_escape(t) for m, t in table.footnotes]
        body += [r"\par\smallskip", r"{\scriptsize " + r" \par ".join(notes) + r"\par}"]
    body.append(r"\end{table}")
    return "\n".join(head + body) + "\n"


def render_document(tables: Sequence[ReportTable], scope: str, figures: Sequence[str] = ()) -> str:
    """A standalone article that ``\\input``s every table fragment (compile it inside the tables folder)."""
    lines = [
        f"% Generated by `mair tables` (scope: {scope}). Compile here: pdflatex tables.tex",
        r"\documentclass[10pt]{article}",
        r"\usepackage[a3paper,margin=1.5cm]{geometry}",
        r"\usepackage{booktabs}",
        r"\usepackage{graphicx}",
        r"\begin{document}",
        rf"\section*{{{latex_escape(f'MaIR reproduction: tables (scope: {scope})')}}}",
    ]
    if scope == "demo":
        lines.append(rf"\noindent\textbf{{{latex_escape(DEMO_BANNER)}}}\par")
    for table in tables:
        lines += [rf"\input{{{table.id}}}", r"\clearpage"]
    for name in figures:
        lines += [
            r"\begin{figure}[htbp]",
            r"\centering",
            rf"\includegraphics[width=0.8\linewidth]{{{name}}}",
            rf"\caption{{{latex_escape(name)}}}",
            r"\end{figure}",
        ]
    lines.append(r"\end{document}")
    return "\n".join(lines) + "\n"
