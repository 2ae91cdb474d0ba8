"""The λ-tuning report's plot: validation quality against λ (see :mod:`deft.tuning`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deft.report.common import new_figure, save_figure


def plot_lambda_sweep(rows: list[dict[str, Any]], path: Path, metric: str, best: float) -> str:
    """``metric`` (mean ± std over seeds) against λ, the chosen λ marked; returns the Markdown image link."""
    fig = new_figure(6, 3.5)
    ax = fig.subplots()
    xs = [r["lambda"] for r in rows]
    ax.errorbar(xs, [r[metric] for r in rows], yerr=[r.get(f"{metric}_std", 0.0) for r in rows], marker="o",
                capsize=3)
    ax.axvline(best, color="tab:green", ls="--", lw=1, label=f"chosen λ = {best:g}")
    # λ grids are usually geometric; a symmetric log axis also shows λ = 0
    ax.set_xscale("symlog", linthresh=min([x for x in xs if x > 0], default=1.0))
    ax.set_xticks(xs, [f"{x:g}" for x in xs])
    ax.minorticks_off()
    ax.set_ylim(bottom=0)
    ax.set_xlabel("λ (weight of effort in S = minmax(I) + λ·minmax(δ))")
    ax.set_ylabel(f"validation {metric.upper()}")
    ax.set_title(f"Validation {metric.upper()} by λ (mean ± std over seeds)")
    ax.legend(fontsize=8)
    return save_figure(fig, path, f"validation {metric} by lambda")
