"""The prune report: score distribution with strata, coverage of users / items / popularity deciles,
agreement between scores, stage costs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from deft.artifacts import write_text
from deft.report.common import fmt, markdown_table, new_figure, save_figure, spearman
from deft.scores.combine import average_ranks, check_score
from deft.selection import Selection, pool_strata

HEXBIN_ABOVE = 5000  # scatter plots switch to hexbin above this many points (overplotting hides density)


def plot_score_distribution(scores: np.ndarray, selection: Selection, path: str | Path,
                            title: str = "Selection score") -> str:
    """Histogram of the selection score over the pool, with the strata edges, the hard-pruned region shaded
    and the coreset's histogram on a second axis (it is far smaller than the pool)."""
    s = check_score(scores, "selection score")
    if s.size != selection.params["n"]:
        raise ValueError(f"scores have {s.size} values, the selection was made over {selection.params['n']}")
    fig = new_figure()
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
    fig = new_figure()
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
    fig = new_figure(5.0, 4.5)
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
    fig = new_figure(7.0, 1.0 + 0.4 * len(stages))
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
                                 config=_prune_settings(manifest, method), coverage=coverage, agreement=agreement,
                                 costs=costs, images=images)
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


def _prune_settings(manifest: Mapping[str, Any], method: str) -> dict[str, Any]:
    """Where the samples came from, then the settings sections this method's coreset depends on, without unset
    values (the manifest keeps everything). A table of samples was not built from ``data``, ``samples`` and
    ``prompt``: their defaults would name a source (ml-100k) the run never read."""
    from deft.pipeline import method_stages

    config, given = manifest.get("config", {}), manifest.get("input", {})
    stages = set(method_stages(method, ccs_score=config.get("selection", {}).get("ccs_score", "el2n")))
    # a source's samples are built with the model's tokenizer (prompt.max_tokens), so the model shapes them too
    keep = [] if "samples_file" in given or "samples" in given else ["data", "samples", "prompt", "model"]
    keep += [k for k in ("model", "lora", "effort") if k not in keep] if "effort" in stages else []
    keep += ["surrogate"] if stages & {"surrogate", "baselines"} else []
    keep += ["baselines"] if "baselines" in stages else []
    keep += ["influence"] if "influence" in stages else []
    keep.append("selection")
    settings = {"input": dict(given)} if given else {}
    return settings | {k: {f: v for f, v in config[k].items() if v is not None} for k in keep if k in config}


def _surrogate_metrics(report: Any) -> list[tuple[str, dict[str, float]]]:
    if not isinstance(report, Mapping):
        return []
    out = []
    for name, key in (("SASRec", "test"), ("most popular", "popularity")):
        metrics = report.get(key)
        if isinstance(metrics, Mapping):
            out.append((name, {k: float(v) for k, v in metrics.items() if "@" in k}))
    return [(n, m) for n, m in out if m]


