"""Result files and printed tables of the evaluation experiments.

Paper: "Learn To Pay Attention", Jetley et al., ICLR 2018, https://arxiv.org/abs/1804.02391.

Every experiment writes its numbers under fixed file names with fixed columns (``eval.json``, ``attack.csv``,
``segment.csv``, ``localize.csv``, ``transfer.csv``) so that scripts can read them; files are replaced
atomically so a crash never leaves half a table.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ltpa.utils import atomic_write, json_safe

__all__ = ["figure_png", "format_table", "model_colours", "save_figure", "write_csv", "write_json"]

# One colour per model, in the order the models are given, the same in every figure of a command or report.
MODEL_COLOURS: tuple[str, ...] = (
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22",
)  # fmt: skip


def model_colours(names: Sequence[str]) -> dict[str, str]:
    """A colour per model name, assigned in order (the first model blue, the second red, ...), so that a
    model keeps its colour in every panel and figure drawn from the same list."""
    unique = list(dict.fromkeys(names))
    return {name: MODEL_COLOURS[i % len(MODEL_COLOURS)] for i, name in enumerate(unique)}


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else "nan"
    return value


def write_csv(
    path: str | os.PathLike[str], rows: Sequence[Mapping[str, Any]], columns: Sequence[str]
) -> Path:
    """Writes ``rows`` with exactly ``columns`` (in that order) to ``path``; floats keep full precision."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n", extrasaction="raise")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: _cell(row[c]) for c in columns})
    path = Path(path)
    atomic_write(path, lambda tmp: Path(tmp).write_text(buffer.getvalue()))
    return path


def save_figure(fig: Any, path: str | os.PathLike[str], *, dpi: int = 100) -> Path:
    """Saves a matplotlib figure (PNG unless ``path`` names another format), creating the folder; atomically, so
    an interrupted save never leaves half a picture where the previous one was, and never through a symbolic
    link."""
    path = Path(path)
    fmt = path.suffix[1:].lower() or "png"  # the temporary file's own suffix is .tmp
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format=fmt))
    return path


def figure_png(fig: Any, *, dpi: int = 100) -> bytes:
    """A matplotlib figure as PNG bytes (for pages that embed their pictures)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=dpi, format="png")
    return buffer.getvalue()


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """Writes ``data`` as indented JSON (NaN becomes null, which every JSON reader accepts)."""
    text = json.dumps(json_safe(data), indent=2) + "\n"
    path = Path(path)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return path


def format_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str], *, percent: Sequence[str] = ()
) -> str:
    """A plain-text table; the columns named in ``percent`` are fractions printed as percentages."""

    def show(column: str, value: Any) -> str:
        if isinstance(value, float):
            if not math.isfinite(value):
                return "-"
            return f"{100 * value:.2f}" if column in percent else f"{value:.4g}"
        return str(value)

    cells = [[show(c, row[c]) for c in columns] for row in rows]
    headers = [f"{c} %" if c in percent else c for c in columns]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for r in cells:
        lines.append("  ".join(v.rjust(w) if _numeric(v) else v.ljust(w) for v, w in zip(r, widths)).rstrip())
    return "\n".join(lines)


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
