"""What a person reads: Markdown snippets and PNG plots.

Two parts, kept apart: shared helpers (Markdown tables, atomic PNG saves) and the **prune report** (score
distribution with strata, coverage of users / items / popularity deciles, agreement between scores, stage
costs). Experiment tables (arms x budgets x seeds) belong in their own section below the prune report.

Every function takes plain data (numpy arrays, DataFrames, dicts), writes at most one file, and returns a
Markdown snippet or a table. Plots use matplotlib's object API on an Agg canvas: no pyplot, no global backend
switch, no windows. PNGs are written to a temporary file and renamed, so a crash never leaves half an image.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from deft.artifacts import atomic_path, machine_info, write_json, write_text
from deft.scores.combine import average_ranks, check_score
from deft.selection import Selection, pool_strata

if TYPE_CHECKING:
    from matplotlib.figure import Figure

HEXBIN_ABOVE = 5000  # scatter plots switch to hexbin above this many points (overplotting hides density)

# ----------------------------------------------------------------------------------------------- shared helpers


def _figure(width: float = 7.0, height: float = 4.0) -> Figure:
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


# ----------------------------------------------------------------------------------------------- prune report


def plot_score_distribution(scores: np.ndarray, selection: Selection, path: str | Path,
                            title: str = "Selection score") -> str:
    """Histogram of the selection score over the pool, with the strata edges, the hard-pruned region shaded
    and the coreset's histogram on a second axis (it is far smaller than the pool)."""
    s = check_score(scores, "selection score")
    if s.size != selection.params["n"]:
        raise ValueError(f"scores have {s.size} values, the selection was made over {selection.params['n']}")
    fig = _figure()
    ax = fig.subplots()
    bins = np.linspace(s.min(), s.max(), 81) if s.max() > s.min() else 10
    ax.hist(s, bins=bins, color="0.7", label=f"pool (n={s.size})")
    cutoff = selection.params.get("prune_cutoff")
    if cutoff is not None:
        ax.axvspan(cutoff, s.max(), color="tab:red", alpha=0.15,
                   label=f"hard-pruned top {selection.params['pruned']}")
    if selection.edges is not None:
        ax.vlines(selection.edges, 0, 1, transform=ax.get_xaxis_transform(), colors="tab:blue", lw=0.6,
                  alpha=0.5, label=f"{len(selection.edges) - 1} strata edges")
    ax.set_xlabel("selection score (larger = keep)")
    ax.set_ylabel("pool samples")
    twin = ax.twinx()
    twin.hist(s[selection.indices], bins=bins, color="tab:orange", alpha=0.7,
              label=f"coreset (m={len(selection)})")
    twin.set_ylabel("coreset samples")
    handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.legend(handles=handles, fontsize=8, loc="upper left")
    ax.set_title(title)
    return save_figure(fig, path, title)


def popularity_deciles(item_popularity: pd.Series) -> pd.Series:
    """Decile 1..10 of every item by popularity (1 = least popular), ten equal-sized groups of items.

    Ties are split by item id, so the deciles do not depend on the Series' order.
    """
    pop = item_popularity.sort_index(kind="stable")
    ranks = pop.rank(method="first").to_numpy()
    return pd.Series(np.ceil(ranks * 10 / len(pop)).astype(int), index=pop.index)


def coverage_table(pool: pd.DataFrame, chosen_idx: np.ndarray, item_popularity: pd.Series) -> pd.DataFrame:
    """How much of the pool the coreset covers: users, target items, and each item-popularity decile.

    ``chosen_idx`` are positions in ``pool`` (rows ``user``, ``target_item``). Columns: ``group``, ``decile``
    (1 = least popular; NA for the users / items rows), ``pool`` and ``coreset`` (distinct users or target
    items), ``coverage`` (coreset / pool), ``pool_share`` and ``coreset_share`` (fraction of the pool's and of
    the coreset's samples whose target falls in the decile; NA for the users / items rows).
    """
    deciles = popularity_deciles(item_popularity)
    missing = pd.Index(pool["target_item"].unique()).difference(deciles.index)
    if len(missing):
        raise ValueError(f"{len(missing)} target item(s) have no popularity, e.g. {missing[0]!r}")
    chosen = pool.iloc[np.asarray(chosen_idx)]
    pool_dec = pool["target_item"].map(deciles).to_numpy()
    core_dec = chosen["target_item"].map(deciles).to_numpy()
    rows: list[dict[str, Any]] = []
    for group, col in (("users", "user"), ("target items", "target_item")):
        p, c = pool[col].nunique(), chosen[col].nunique()
        rows.append({"group": group, "decile": pd.NA, "pool": p, "coreset": c, "coverage": c / p if p else np.nan,
                     "pool_share": np.nan, "coreset_share": np.nan})
    for d in range(1, 11):
        p = pool["target_item"][pool_dec == d].nunique()
        c = chosen["target_item"][core_dec == d].nunique()
        rows.append({"group": f"popularity decile {d}", "decile": d, "pool": p, "coreset": c,
                     "coverage": c / p if p else np.nan,
                     "pool_share": float(np.mean(pool_dec == d)) if len(pool) else np.nan,
                     "coreset_share": float(np.mean(core_dec == d)) if len(chosen) else np.nan})
    table = pd.DataFrame(rows)
    table["decile"] = table["decile"].astype("Int64")
    return table


def plot_coverage(table: pd.DataFrame, path: str | Path, title: str = "Coverage by item popularity") -> str:
    """Bars per popularity decile: share of pool samples vs share of coreset samples (from coverage_table)."""
    dec = table[table["decile"].notna()]
    x = dec["decile"].to_numpy(dtype=int)
    fig = _figure()
    ax = fig.subplots()
    ax.bar(x - 0.2, dec["pool_share"], width=0.4, color="0.6", label="pool")
    ax.bar(x + 0.2, dec["coreset_share"], width=0.4, color="tab:orange", label="coreset")
    ax.set_xticks(x)
    ax.set_xlabel("target-item popularity decile (1 = least popular)")
    ax.set_ylabel("share of samples")
    ax.legend(fontsize=8)
    ax.set_title(title)
    return save_figure(fig, path, title)


def _pick_names(scores: Mapping[str, np.ndarray], names: Sequence[str] | None) -> tuple[str, str]:
    if names is None:
        names = ("influence", "effort") if {"influence", "effort"} <= set(scores) else tuple(scores)[:2]
    if len(names) != 2 or any(n not in scores for n in names):
        raise ValueError(f"score agreement needs two score names out of {sorted(scores)}, got {list(names)}")
    return names[0], names[1]


def score_agreement(scores: Mapping[str, np.ndarray], strata: np.ndarray | None = None, *,
                    names: Sequence[str] | None = None, top_fraction: float = 0.1) -> dict[str, Any]:
    """How much two scores agree: Spearman, Jaccard of their top ``top_fraction`` sets, Spearman per stratum.

    ``names`` defaults to influence and effort when both exist, else the first two scores. ``strata`` gives a
    stratum per pool sample (-1 = none, e.g. hard-pruned; see ``deft.selection.pool_strata``).
    """
    na, nb = _pick_names(scores, names)
    a, b = check_score(scores[na], na), check_score(scores[nb], nb)
    if a.size != b.size:
        raise ValueError(f"score '{na}' has {a.size} values, score '{nb}' has {b.size}")
    k = max(1, round(top_fraction * a.size))
    # Stable sort: ties at the top-k boundary go to the lower index, as in deft.selection.
    top_a = set(np.argsort(-a, kind="stable")[:k].tolist())
    top_b = set(np.argsort(-b, kind="stable")[:k].tolist())
    per_stratum = []
    if strata is not None:
        strata = np.asarray(strata)
        for st in np.unique(strata[strata >= 0]):
            mask = strata == st
            per_stratum.append({"stratum": int(st), "n": int(mask.sum()), "spearman": spearman(a[mask], b[mask])})
    return {"a": na, "b": nb, "n": int(a.size), "spearman": spearman(a, b), "top_fraction": top_fraction,
            "top_k": k, "top_jaccard": len(top_a & top_b) / len(top_a | top_b), "per_stratum": per_stratum}


def plot_score_agreement(scores: Mapping[str, np.ndarray], path: str | Path, *,
                         names: Sequence[str] | None = None, title: str | None = None) -> str:
    """Rank-vs-rank plot of two scores (quantiles in [0, 1]); a hexbin density for large pools."""
    na, nb = _pick_names(scores, names)
    a, b = check_score(scores[na], na), check_score(scores[nb], nb)
    qa, qb = average_ranks(a) / max(a.size - 1, 1), average_ranks(b) / max(b.size - 1, 1)
    title = title or f"{na} vs {nb} (Spearman {spearman(a, b):.3f})"
    fig = _figure(5.0, 4.5)
    ax = fig.subplots()
    if a.size > HEXBIN_ABOVE:
        art = ax.hexbin(qa, qb, gridsize=50, mincnt=1, cmap="viridis")
        fig.colorbar(art, ax=ax, label="samples")
    else:
        ax.scatter(qa, qb, s=6, alpha=0.5)
    ax.set_xlabel(f"{na} rank quantile")
    ax.set_ylabel(f"{nb} rank quantile")
    ax.set_title(title, fontsize=10)
    return save_figure(fig, path, title)


def plot_stage_costs(costs: Mapping[str, Mapping[str, float]], path: str | Path,
                     title: str = "Wall time per stage") -> str:
    """Horizontal bars of each stage's wall time, labelled with its peak memory."""
    if not costs:
        raise ValueError("plot_stage_costs needs at least one stage, got none")
    stages = list(costs)
    wall = [float(costs[s].get("wall_s", 0.0)) for s in stages]
    fig = _figure(7.0, 1.0 + 0.4 * len(stages))
    ax = fig.subplots()
    bars = ax.barh(stages, wall, color="tab:blue")
    labels = [f"{w:.1f} s, {fmt(costs[s].get('peak_mb'))} MB" for s, w in zip(stages, wall, strict=True)]
    ax.bar_label(bars, labels=labels, fontsize=8, padding=3)
    ax.invert_yaxis()  # pipeline order top to bottom
    ax.set_xlabel("wall time (s)")
    ax.set_xlim(0, max(wall) * 1.35 or 1.0)
    ax.set_title(title)
    return save_figure(fig, path, title)


def _flatten(config: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in config.items():
        if isinstance(value, Mapping):
            out += _flatten(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value if not isinstance(value, (list, tuple)) else list(value)))
    return out


def _strata_rows(selection: Selection) -> list[list[Any]]:
    edges, counts = selection.edges, selection.stratum_counts
    if edges is None:
        return []
    return [[k, f"[{edges[k]:.4g}, {edges[k + 1]:.4g}{']' if k == len(counts) - 1 else ')'}", int(p), int(c)]
            for k, (p, c) in enumerate(counts) if p > 0]


def prune_report_markdown(title: str, selection: Selection, *, config: Mapping[str, Any] | None = None,
                          coverage: pd.DataFrame | None = None, agreement: Mapping[str, Any] | None = None,
                          costs: Mapping[str, Mapping[str, float]] | None = None,
                          images: Sequence[str] | Mapping[str, str] = ()) -> str:
    """report.md for one pruning run: results first, each plot beside its table, settings last.

    ``images`` maps a section (``distribution``, ``coverage``, ``agreement``, ``costs``) to its Markdown image
    link; a plain sequence of links is shown together at the end. Sections with no data are left out.
    """
    placed = dict(images) if isinstance(images, Mapping) else {}
    p = selection.params
    parts = [f"# {title}"]
    counts = [("pool samples", p["n"]), ("hard-pruned (top by score)", p["pruned"]),
              ("eligible", p["n"] - p["pruned"]), ("budget", p["budget"]), ("chosen", len(selection)),
              ("non-empty strata", p.get("nonempty_strata")), ("topped up after allocation", p["topped_up"])]
    parts += ["## Counts", markdown_table(["", "count"], counts)]
    parts += [placed["distribution"]] if "distribution" in placed else []
    rows = _strata_rows(selection)
    if rows:
        empty = len(selection.stratum_counts) - len(rows)
        parts += ["## Strata", f"Equal-width strata of the selection score; {empty} empty strata not shown.",
                  markdown_table(["stratum", "score range", "pool", "chosen"], rows)]
    if coverage is not None:
        cols = ["group", "pool", "coreset", "coverage", "pool_share", "coreset_share"]
        parts += ["## Coverage", markdown_table(cols, coverage[cols].itertuples(index=False))]
        parts += [placed["coverage"]] if "coverage" in placed else []
    if agreement is not None:
        parts += [f"## Score agreement: {agreement['a']} vs {agreement['b']}",
                  "Do the surrogate-side and the LLM-side scores rank the pool alike? (per stratum below)",
                  markdown_table(["measure", "value"], [
                      ("Spearman", agreement["spearman"]),
                      (f"Jaccard of top {agreement['top_fraction']:.0%} sets", agreement["top_jaccard"])])]
        parts += [placed["agreement"]] if "agreement" in placed else []
        if agreement.get("per_stratum"):
            # Inside one stratum of a combined score a + lambda*b is nearly constant, so a and b must trade
            # off: per-stratum correlations are about -1 by construction and say nothing about agreement.
            parts.append("Per-stratum correlations are not shown: inside a stratum of the combined score the "
                         "two scores trade off by construction (their weighted sum is nearly constant).")
    if costs:
        parts += ["## Stage costs", markdown_table(["stage", "wall s", "peak MB"],
                                                   [(s, c.get("wall_s"), c.get("peak_mb")) for s, c in costs.items()])]
        parts += [placed["costs"]] if "costs" in placed else []
    if images and not placed:
        parts += ["## Plots", *images]
    if config:
        parts += ["## Settings", markdown_table(["setting", "value"], _flatten(config))]
    return "\n\n".join(parts) + "\n"


def write_prune_report(root: str | Path, samples: pd.DataFrame, scores: pd.DataFrame,
                       selections: Mapping[int, Selection], manifest: Mapping[str, Any],
                       surrogate_report: Any = None) -> Path:
    """OUT/report.md with its plots, for the smallest budget in detail and every budget in a summary."""
    from deft.selection import selection_score

    root = Path(root)
    cfg = manifest.get("config", {}).get("selection", {})
    columns = {c: scores[c].to_numpy(np.float64) for c in scores.columns if c != "sample_id"}
    budget = min(selections)
    selection = selections[budget]
    method = selection.params["method"]
    images: dict[str, str] = {}
    combined = selection_score(method, columns, lambda_=cfg.get("lambda_", 0.5),
                               normalization=cfg.get("normalization", "minmax"), ccs_score=cfg.get("ccs_score", "el2n"))
    if combined is not None:
        images["distribution"] = plot_score_distribution(combined, selection, root / "score_distribution.png",
                                                         f"{method} selection score (budget {budget})")
    popularity = samples["target_item"].value_counts() if "target_item" in samples.columns else None
    coverage = None
    if popularity is not None:
        coverage = coverage_table(samples, selection.indices, popularity)
        images["coverage"] = plot_coverage(coverage, root / "coverage.png")
    agreement = None
    if {"influence", "effort"} <= set(columns):
        strata = pool_strata(combined, selection) if combined is not None and selection.edges is not None else None
        agreement = score_agreement(columns, strata, names=("influence", "effort"))
        images["agreement"] = plot_score_agreement(columns, root / "score_agreement.png", names=("influence", "effort"))
    costs = manifest.get("stages", {})
    if costs:
        images["costs"] = plot_stage_costs(costs, root / "stage_costs.png")
    text = prune_report_markdown(f"DEFT coreset: {method}, {budget} of {len(samples)} samples", selection,
                                 config=_prune_settings(manifest.get("config", {})), coverage=coverage, agreement=agreement, costs=costs,
                                 images=images)
    extra = []
    if len(selections) > 1:
        extra += ["## All budgets", markdown_table(["budget", "chosen", "file"],
                  [(b, len(s), manifest.get("coresets", {}).get(str(b), "")) for b, s in sorted(selections.items())])]
    if surrogate_report is not None:
        metrics = _surrogate_metrics(surrogate_report)
        if metrics:
            extra += ["## Surrogate (SASRec) and most-popular references, full ranking on the test users",
                      markdown_table(["model", *metrics[0][1].keys()], [(n, *m.values()) for n, m in metrics])]
    path = root / "report.md"
    write_text(path, text + ("\n" + "\n\n".join(extra) + "\n" if extra else ""))
    return path


def _prune_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The sections that shape a coreset, without unset values (the manifest keeps everything)."""
    keep = ("data", "samples", "prompt", "model", "surrogate", "influence", "effort", "selection")
    return {k: {f: v for f, v in config[k].items() if v is not None} for k in keep if k in config}


def _surrogate_metrics(report: Any) -> list[tuple[str, dict[str, float]]]:
    if not isinstance(report, Mapping):
        return []
    out = []
    for name, key in (("SASRec", "test"), ("most popular", "popularity")):
        metrics = report.get(key)
        if isinstance(metrics, Mapping):
            out.append((name, {k: float(v) for k, v in metrics.items() if "@" in k}))
    return [(n, m) for n, m in out if m]


# ----------------------------------------------------------------------------------------------- experiment tables


def _pm(row: dict[str, Any], metric: str) -> str:
    if metric not in row:
        return "–"
    std = row.get(f"{metric}_std", 0.0)
    return f"{row[metric]:.4f} ± {std:.4f}" if row.get("seeds", 1) > 1 else f"{row[metric]:.4f}"


def _budget_label(budget: Any) -> str:
    return "all" if budget is None else str(budget)


def experiment_table(summary: list[dict[str, Any]], ks: list[int]) -> str:
    metrics = [f"{m}@{k}" for k in ks for m in ("recall", "ndcg")]
    head = ["arm", "budget", "seeds", *metrics, "epochs", "scoring s", "training s", "eval s", "peak MB",
            "pruning+training / full"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in summary:
        frac = row.get("fraction_of_full")
        cells = [row["arm"], _budget_label(row["budget"]), str(row["seeds"]), *[_pm(row, m) for m in metrics],
                 ",".join(map(str, row["epochs"])), f"{row['scoring_s']:.1f}", f"{row['train_s']:.1f}",
                 f"{row['eval_s']:.1f}", f"{row['peak_mb']:.0f}",
                 "–" if frac is None else f"{100 * frac:.1f}%"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def comparison_table(comparisons: list[dict[str, Any]]) -> str:
    if not comparisons:
        return "_no paired comparisons (needs a `random` or `full` arm)_"
    lines = ["| arm | budget | against | mean difference of NDCG@10 | 95% interval | two-sided p |",
             "|---|---|---|---|---|---|"]
    for c in comparisons:
        lines.append(f"| {c['arm']} | {_budget_label(c['budget'])} | {c['against']} | {c['mean_diff']:+.4f} | "
                     f"[{c['lo']:+.4f}, {c['hi']:+.4f}] | {c.get('p_value', float('nan')):.3f} |")
    return "\n".join(lines)


def verdict(summary: list[dict[str, Any]], comparisons: list[dict[str, Any]]) -> list[str]:
    """One plain sentence per budget: does dealrec beat random and match full on NDCG@10, at what cost?"""
    rows = {(r["arm"], r["budget"]): r for r in summary}
    full = next((r for r in summary if r["arm"] == "full"), None)
    out = []
    for (arm, budget), row in rows.items():
        if arm != "dealrec":
            continue
        parts = [f"budget {budget}: dealrec NDCG@10 {row['ndcg@10']:.4f}"]
        rnd = rows.get(("random", budget))
        if rnd is not None:
            ci = next((c for c in comparisons if c["arm"] == "dealrec" and c["budget"] == budget
                       and c["against"] == "random"), None)
            sig = "" if ci is None else (" (interval excludes 0)" if ci["lo"] > 0 or ci["hi"] < 0
                                         else " (interval includes 0: not a clear difference)")
            word = "beats" if row["ndcg@10"] > rnd["ndcg@10"] else "does NOT beat"
            parts.append(f"{word} random ({rnd['ndcg@10']:.4f}){sig}")
        if full is not None:
            word = "matches or beats" if row["ndcg@10"] >= full["ndcg@10"] else "falls short of"
            parts.append(f"{word} full ({full['ndcg@10']:.4f})")
        if row.get("fraction_of_full") is not None:
            parts.append(f"at {100 * row['fraction_of_full']:.1f}% of the full arm's fine-tuning time")
        others = [r for (a, b), r in rows.items() if b == budget and a not in ("dealrec", "random", "full")]
        if others:
            best = max(others, key=lambda r: r["ndcg@10"])
            word = "beats" if row["ndcg@10"] > best["ndcg@10"] else "does NOT beat"
            parts.append(f"{word} the best other baseline ({best['arm']}, {best['ndcg@10']:.4f})")
        out.append("; ".join(parts) + ".")
    return out


def status_lines(status: dict[str, Any] | None) -> list[str]:
    """A banner for an experiment that is still running or was interrupted (empty when every run finished)."""
    if not status or not status.get("pending"):
        return []
    left = status.get("estimated_remaining_s")
    eta = "" if left is None else f" About {left / 3600:.1f} h of compute left at the pace so far."
    return [f"> **Partial results: {status['finished']} of {status['planned']} runs finished.** Every table, "
            f"plot and verdict below covers only those; re-run the same command to resume.{eta} "
            f"Pending: {', '.join(status['pending'])}.", ""]


def plot_metric_by_arm(summary: list[dict[str, Any]], path: Path, metric: str = "ndcg@10",
                       references: dict[str, Any] | None = None) -> None:
    """Grouped bars: one group per arm, one bar per budget, error bars = std over seeds."""
    arms = list(dict.fromkeys(r["arm"] for r in summary if r["arm"] != "full"))  # full is the dashed line
    budgets = list(dict.fromkeys(r["budget"] for r in summary if r["budget"] is not None))
    fig = _figure(max(6.0, 0.9 * len(arms) + 2), 4)
    ax = fig.subplots()
    width = 0.8 / max(1, len(budgets))
    for j, budget in enumerate(budgets):
        xs, ys, es = [], [], []
        for i, arm in enumerate(arms):
            row = next((r for r in summary if r["arm"] == arm and r["budget"] == budget), None)
            if row is not None and metric in row:
                xs.append(i + (j - (len(budgets) - 1) / 2) * width)
                ys.append(row[metric])
                es.append(row.get(f"{metric}_std", 0.0))
        ax.bar(xs, ys, width, yerr=es, capsize=3, label=f"budget {budget}")
    full = next((r for r in summary if r["arm"] == "full"), None)
    if full is not None:
        ax.axhline(full[metric], color="black", ls="--", lw=1, label="full pool")
    for name, ref in (references or {}).items():
        if isinstance(ref, dict) and metric in ref:
            ax.axhline(ref[metric], ls=":", lw=1, color="grey")
            ax.text(-0.45, ref[metric], name, fontsize=7, va="bottom", ha="left", color="grey")
    ax.set_xticks(range(len(arms)), arms, rotation=30, ha="right")
    ax.set_ylabel(metric.upper())
    ax.set_title(f"{metric.upper()} by arm and budget (mean ± std over seeds)")
    ax.legend(fontsize=8)
    save_figure(fig, path, metric)


def plot_cost_by_arm(summary: list[dict[str, Any]], path: Path) -> None:
    """Stacked bars: scoring and training seconds for each arm-budget."""
    labels = [f"{r['arm']}\n{_budget_label(r['budget'])}" for r in summary]
    scoring = [r["scoring_s"] for r in summary]
    training = [r["train_s"] for r in summary]
    fig = _figure(max(6.0, 0.6 * len(labels) + 2), 4)
    ax = fig.subplots()
    ax.bar(labels, scoring, label="scoring (surrogate + scores)")
    ax.bar(labels, training, bottom=scoring, label="LoRA fine-tuning")
    ax.set_ylabel("wall time (s)")
    ax.set_yscale("log")
    ax.set_title("Cost of pruning + fine-tuning per arm")
    ax.tick_params(axis="x", labelsize=7)
    ax.legend(fontsize=8)
    save_figure(fig, path, "cost")


def write_experiment_report(root: str | Path, payload: dict[str, Any]) -> tuple[Path, Path]:
    """results.json (everything) and results.md (tables, verdict, cost ledger, plots) in ``root``."""
    root = Path(root)
    summary, comparisons = payload["summary"], payload["comparisons"]
    ks = payload["config"]["evaluation"]["ks"]
    plot_metric_by_arm(summary, root / "ndcg_by_arm.png", f"ndcg@{ks[0]}", payload.get("references"))
    plot_cost_by_arm(summary, root / "cost_by_arm.png")
    json_path = root / "results.json"
    write_json(json_path, payload)
    machine = payload.get("machine") or machine_info()
    refs = payload.get("references") or {}
    ref_lines = [f"| {name} | " + " | ".join(f"{ref.get(f'{m}@{k}', float('nan')):.4f}"
                                             for k in ks for m in ("recall", "ndcg")) + " |"
                 for name, ref in refs.items() if isinstance(ref, dict)]
    stage_lines = [f"| {name} | {c.get('wall_s', 0):.1f} | {c.get('peak_mb', 0):.0f} |"
                   for name, c in payload.get("shared_stages", {}).items()]
    md = [
        "# Experiment results",
        "",
        f"- command: `{payload.get('command') or 'deft run'}`",
        f"- date: {payload['date']}",
        f"- machine: {machine.get('cpu')} ({machine.get('cores')} cores){', GPU ' + machine['gpu'] if machine.get('gpu') else ''}",
        f"- pool: {payload['pool_size']} samples; test users: {payload['test_users']}",
        "",
        *status_lines(payload.get("status")),
        "## Verdict",
        "",
        *([f"- {line}" for line in verdict(summary, comparisons)] or ["- no `dealrec` arm in this experiment."]),
        "",
        "## Quality and cost (mean ± std over seeds)",
        "",
        experiment_table(summary, ks),
        "",
        "`pruning+training / full` = (scoring stages the arm needs + selection + fine-tuning) / the `full` arm's "
        "fine-tuning time, measured in this run on this machine.",
        "",
        "![NDCG by arm](ndcg_by_arm.png)",
        "",
        "## Paired bootstrap (per-user NDCG@10, mean over seeds)",
        "",
        comparison_table(comparisons),
        "",
        "## Non-LLM references (full ranking over all items)",
        "",
        f"Computed on every test user of the split; the LLM arms above on the first {payload['test_users']}.",
        "",
        "| model | " + " | ".join(f"{m}@{k}" for k in ks for m in ("recall", "ndcg")) + " |",
        "|---|" + "---|" * (2 * len(ks)),
        *ref_lines,
        "",
        "## Cost ledger: shared stages",
        "",
        "| stage | wall s | peak MB |",
        "|---|---|---|",
        *stage_lines,
        "",
        "![cost by arm](cost_by_arm.png)",
        "",
    ]
    md_path = root / "results.md"
    write_text(md_path, "\n".join(md))
    return json_path, md_path
