"""One module per section of docs/results.md; each returns its markdown and writes its CSVs and figures.

Every section function has the signature ``section(res: Results, out: Output) -> str``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ltpa.evaluate import write_csv
from ltpa.study.stats import format_mean_std

__all__ = ["Output", "md_table", "mean_cell"]


@dataclass
class Output:
    """Where a section writes: ``docs`` (results.md's folder), CSVs under ``docs/results``, figures under
    ``docs/figures``; links in the markdown are relative to ``docs``."""

    docs: Path

    def csv(self, name: str, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
        write_csv(self.docs / "results" / name, rows, columns)
        return f"results/{name}"

    def figure(self, name: str) -> tuple[Path, str]:
        return self.docs / "figures" / name, f"figures/{name}"


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str = "") -> str:
    """A markdown table; ``align`` gives one character per column (l or r; default: left for the first)."""
    align = align or "l" + "r" * (len(headers) - 1)
    rule = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def mean_cell(values: Sequence[float], digits: int = 1) -> str:
    """``mean ± std`` of the replicates (``-`` when there are none)."""
    finite = [v for v in values if math.isfinite(v)]
    return format_mean_std(finite, digits) if finite else "-"
