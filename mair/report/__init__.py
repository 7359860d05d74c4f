"""Reporting: evaluation summaries -> pandas -> LaTeX / Markdown / CSV tables beside the published numbers.

``mair tables`` (mair/report/cli.py) drives it; :func:`mair.report.write.write_report` does the work.
Importing this package is cheap: pandas and matplotlib are imported by the submodules that need them.
"""

from __future__ import annotations

DEMO_BANNER = "DEMO SCOPE — tiny models on the embedded demo data; not the paper's numbers"

__all__ = ["DEMO_BANNER"]
