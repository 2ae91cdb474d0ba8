"""Shared helpers of the reports: Markdown tables and number formatting, atomic PNG saves on an Agg canvas.

Plots use matplotlib's object API: no pyplot, no global backend switch, no windows. PNGs are written to a
temporary file and renamed, so a crash never leaves half an image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from deft.artifacts import atomic_path
from deft.scores.combine import average_ranks

if TYPE_CHECKING:
    from matplotlib.figure import Figure




def new_figure(width: float = 7.0, height: float = 4.0) -> Figure:
    # Imported lazily: building tables and Markdown should not pay matplotlib's import time.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def save_figure(fig: Figure, path: str | Path, title: str) -> str:
    """Write ``fig`` as a PNG atomically and return the Markdown image link (relative to the PNG's folder)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return f"![{title}]({path.name})"


def fmt(value: Any) -> str:
    """One cell: integers as is, floats to 4 significant digits, missing values as a dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.4g}"
    return str(value)


def p_text(p: float, n: int | None) -> str:
    """A paired-bootstrap p-value for people: one that no resample reached reads "< 2/n", not a p of zero (the
    two-sided p is twice a tail share, so one resample on the other side would already give 2/n)."""
    return f"< {2 / n:.3g}" if p == 0 and n else f"{p:.3f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table; cells go through :func:`fmt`."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman correlation (Pearson of average ranks); NaN when either side is constant or n < 2."""
    if len(a) < 2:
        return float("nan")
    ra, rb = average_ranks(a), average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = math.sqrt(float(ra @ ra) * float(rb @ rb))
    return float(ra @ rb) / denom if denom > 0 else float("nan")


