"""The experiment report (arms x budgets x seeds): verdict, quality and cost tables, paired bootstrap,
references, cost ledger, plots, and a banner while runs are pending."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from deft.artifacts import machine_info, machine_label, write_json, write_text
from deft.config import headline_k
from deft.report.common import markdown_table, new_figure, p_text, save_figure


def _pm(row: dict[str, Any], metric: str) -> str:
    if metric not in row:
        return "–"
    std = row.get(f"{metric}_std", 0.0)
    return f"{row[metric]:.4f} ± {std:.4f}" if row.get("seeds", 1) > 1 else f"{row[metric]:.4f}"


def _budget_label(budget: Any) -> str:
    return "all" if budget is None else str(budget)


def _epochs_text(epochs: int, best: float | None, cap: int | None) -> str:
    """ "4 (best 3)"; "8 (best 8, at the cap)" when the validation loss still fell in the last epoch allowed."""
    if best is None or np.isnan(best):
        return str(epochs)
    return f"{epochs} (best {best:g}{', at the cap' if still_improving(best, cap) else ''})"


def still_improving(best: float | None, cap: int | None) -> bool:
    """The kept adapter is from the last epoch allowed: early stopping never fired, so not shown converged."""
    return cap is not None and best is not None and not np.isnan(best) and best >= cap - 1e-9


def _epochs_cell(row: dict[str, Any], cap: int | None = None) -> str:
    """Epochs run per seed, with the epoch of the kept (best-validation) adapter where recorded: "4 (best 3)"."""
    best = row.get("best_epochs") or [None] * len(row["epochs"])
    return ", ".join(_epochs_text(e, b, cap) for e, b in zip(row["epochs"], best, strict=True))


def _fraction_cell(row: dict[str, Any]) -> str:
    if row.get("missing_stage_costs"):
        return f"– (no cost recorded for {', '.join(row['missing_stage_costs'])})"
    frac = row.get("fraction_of_full")
    if frac is None:
        return "–"
    # marked, since its times come from different CPUs (see "measured on more than one machine")
    return f"{100 * frac:.1f}%" + (" †" if row.get("fraction_machines") else "")


def convergence_note(runs: list[dict[str, Any]], cap: int | None) -> list[str]:
    """A warning naming the runs early stopping never ended, since their numbers may still move."""
    capped = [r["key"] for r in runs if still_improving(r["train"].get("best_epoch"), cap)]
    if not capped:
        return []
    return [f"**Not shown converged**: {', '.join(capped)} kept the adapter of the last epoch allowed "
            f"(`training.epochs` = {cap}): the validation loss was still falling, so more epochs may change "
            "these numbers.", ""]


def experiment_table(summary: list[dict[str, Any]], ks: list[int], cap: int | None = None) -> str:
    metrics = [f"{m}@{k}" for k in ks for m in ("recall", "ndcg")]
    head = ["arm", "budget", "seeds", *metrics, "epochs run (best)", "scoring s", "training s", "eval s", "peak MB",
            "pruning+training / full"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in summary:
        cells = [row["arm"], _budget_label(row["budget"]), str(row["seeds"]), *[_pm(row, m) for m in metrics],
                 _epochs_cell(row, cap), f"{row['scoring_s']:.1f}", f"{row['train_s']:.1f}",
                 f"{row['eval_s']:.1f}", f"{row['peak_mb']:.0f}", _fraction_cell(row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def runs_table(runs: list[dict[str, Any]], ks: list[int], cap: int | None = None) -> str:
    """Every finished run on its own line, in run order: the numbers the means above are made of."""
    metrics = [f"{m}@{k}" for k in ks for m in ("recall", "ndcg")]
    rows = []
    for r in runs:
        epochs = _epochs_text(r["train"]["epochs"], r["train"].get("best_epoch"), cap)
        rows.append([r["key"], r["samples"], *[f"{r['metrics'][m]:.4f}" for m in metrics], epochs,
                     f"{r['train']['wall_s']:.0f}", f"{r['eval']['wall_s']:.0f}", f"{r['eval']['s_per_user']:.3f}"])
    return markdown_table(["run", "samples", *metrics, "epochs (best)", "training s", "eval s", "eval s/user"], rows)


def headline_metric(ks: list[int]) -> str:
    """NDCG@10 when 10 is among the cut-offs (the benchmark's headline), else NDCG at the first one."""
    return f"ndcg@{headline_k(ks)}"


def comparison_table(comparisons: list[dict[str, Any]]) -> str:
    if not comparisons:
        return "_no paired comparisons (needs a `random` or `full` arm)_"
    metric = comparisons[0].get("metric", "ndcg@10").upper()
    lines = [f"| arm | budget | against | seeds (arm / against) | mean difference of {metric} | 95% interval | "
             "two-sided p |", "|---|---|---|---|---|---|---|"]
    for c in comparisons:
        seeds = f"{_seed_list(c.get('seeds'))} / {_seed_list(c.get('against_seeds'))}"
        lines.append(f"| {c['arm']} | {_budget_label(c['budget'])} | {c['against']} | {seeds} | "
                     f"{c['mean_diff']:+.4f} | [{c['lo']:+.4f}, {c['hi']:+.4f}] | "
                     f"{p_text(c.get('p_value', float('nan')), c.get('n'))} |")
    return "\n".join(lines)


def _seed_list(seeds: list[int] | None) -> str:
    return "–" if seeds is None else ", ".join(map(str, seeds))


def _against(row: dict[str, Any], other: dict[str, Any], name: str, ci: dict[str, Any] | None,
             metric: str) -> str:
    """dealrec against one arm, worded from the paired interval, never from the point estimates alone."""
    level = f"{name} {other[metric]:.4f}"
    if ci is None:
        higher = "higher" if row[metric] > other[metric] else "not higher"
        return f"{higher} than {level} (point estimates; no paired interval)"
    interval = f"{ci['mean_diff']:+.4f}, 95% [{ci['lo']:+.4f}, {ci['hi']:+.4f}]"
    matched = ci.get("seeds")
    # Against a pruned arm only the seeds both have finished are compared (see experiment.compare).
    if other["arm"] != "full" and matched and {row.get("seeds"), other.get("seeds")} != {len(matched)}:
        interval += f" on {'seed' if len(matched) == 1 else 'seeds'} {_seed_list(matched)}, which both have finished"
    if ci["lo"] > 0:
        return f"BEATS {level} ({interval})"
    if ci["hi"] < 0:
        return f"WORSE than {level} ({interval})"
    return f"no clear difference from {level} ({interval}: the interval includes 0)"


def verdict(summary: list[dict[str, Any]], comparisons: list[dict[str, Any]], metric: str = "ndcg@10") -> list[str]:
    """One plain sentence per budget: does dealrec beat random and match full on ``metric``, at what cost?

    "Beats" and "worse" need the paired bootstrap interval to exclude zero; otherwise the sentence says there is
    no clear difference, whatever the point estimates. Of the other baselines the sentence names the best (by
    mean), with its paired interval where the two share a finished seed, else by point estimate, saying so; the
    comparison table has dealrec against each of them.
    """
    rows = {(r["arm"], r["budget"]): r for r in summary}
    full = next((r for r in summary if r["arm"] == "full"), None)
    label = metric.upper()
    out = []
    for (arm, budget), row in rows.items():
        if arm != "dealrec":
            continue

        def ci(against: str, budget: Any = budget) -> dict[str, Any] | None:
            return next((c for c in comparisons if c["arm"] == "dealrec" and c["budget"] == budget
                         and c["against"] == against), None)

        parts = [f"budget {budget}: dealrec {label} {row[metric]:.4f}"]
        if ("random", budget) in rows:
            parts.append(_against(row, rows[("random", budget)], "random", ci("random"), metric))
        if full is not None:
            parts.append(_against(row, full, "full", ci("full"), metric))
        if row.get("fraction_of_full") is not None:
            mixed = row.get("fraction_machines")
            where = f" (times from different machines: {', '.join(mixed)})" if mixed else ""
            parts.append(f"pruning + training cost {100 * row['fraction_of_full']:.1f}% of the full arm's "
                         f"fine-tuning time{where}")
        others = [r for (a, b), r in rows.items() if b == budget and a not in ("dealrec", "random", "full")]
        if others:
            best = max(others, key=lambda r: r[metric])
            parts.append(_against(row, best, f"the best other baseline ({best['arm']})", ci(best["arm"]), metric))
        out.append("; ".join(parts) + ".")
    return out


def status_lines(status: dict[str, Any] | None) -> list[str]:
    """A banner for an experiment that is still running or was interrupted (empty when every run finished)."""
    if not status or not status.get("pending"):
        return []
    left = status.get("estimated_remaining_s")
    eta = "" if left is None else f" About {left / 3600:.1f} h of compute left at the pace so far."
    verdict_left, headline = status.get("headline_remaining_s"), status.get("headline_pending")
    if verdict_left is not None and headline and headline < len(status["pending"]):
        names = ", ".join(status.get("headline_arms") or ("random", "dealrec", "full"))
        eta += (f" The headline runs ({names}), which run first, need about {verdict_left / 3600:.1f} h "
                f"of it ({headline} run{'' if headline == 1 else 's'}).")
    return [f"> **Partial results: {status['finished']} of {status['planned']} runs finished.** Every table, "
            f"plot and verdict below covers only those; re-run the same command to resume.{eta} "
            f"Pending: {', '.join(status['pending'])}.", ""]


def _speed_bullets(runs: list[dict[str, Any]]) -> list[str]:
    trained = [1.0 / r["train"]["samples_per_s"] for r in runs if r["train"].get("samples_per_s")]
    evaluated = [r["eval"]["s_per_user"] for r in runs if r["eval"].get("s_per_user")]
    if not trained or not evaluated:
        return []

    def spread(values: list[float]) -> str:
        values = sorted(values)
        if len(values) == 1:
            return f"{values[0]:.3f} s (1 run)"
        return f"{float(np.median(values)):.3f} s (median; range {values[0]:.3f}-{values[-1]:.3f}, {len(values)} runs)"

    titles = [r["eval"]["title_embedding_s"] for r in runs if r["eval"].get("title_embedding_s")]
    once = (f"; without embedding the item titles, which the first evaluation does once for all: "
            f"{max(titles):.0f} s") if titles else ""
    return [f"- fine-tuning: {spread(trained)} per training sample, each epoch's pass counted, validation "
            "passes included",
            f"- evaluation: {spread(evaluated)} per test user (generation, grounding and metrics{once})"]


def speed_lines(runs: list[dict[str, Any]], current: str | None = None) -> list[str]:
    """Training seconds per sample and evaluation seconds per test user (median and range over the finished
    runs): what a user needs to size their own run. Runs that name another machine than ``current`` (the one
    writing the report) are summarised per machine, since their speeds do not mix."""
    groups: dict[str | None, list[dict[str, Any]]] = {}
    for run in runs:
        machine = run.get("machine")
        groups.setdefault(None if machine == current else machine, []).append(run)
    blocks = [(machine, bullets) for machine, group in groups.items() if (bullets := _speed_bullets(group))]
    if not blocks:
        return []
    if len(blocks) == 1 and blocks[0][0] is None:
        return ["## Speed on this machine", "", *blocks[0][1], ""]
    lines = ["## Speed by machine", ""]
    for machine, bullets in blocks:
        lines += [f"On {machine or 'this machine'}:", "", *bullets, ""]
    return lines


# A reference line more than this many times above the highest arm would flatten every arm into the axis floor;
# such references are named in a corner instead (the table lists them all).
OFF_SCALE = 3.0


def split_references(summary: list[dict[str, Any]], metric: str,
                     references: dict[str, Any] | None) -> tuple[dict[str, float], dict[str, float]]:
    """The non-LLM references to draw as lines, and those so far above every arm (mean + std, the full pool
    included) that they go in a note instead."""
    values = {name: float(ref[metric]) for name, ref in (references or {}).items()
              if isinstance(ref, dict) and metric in ref}
    top = max((r[metric] + (r.get(f"{metric}_std") or 0.0) for r in summary if metric in r), default=0.0)
    if top <= 0:
        return values, {}
    drawn = {k: v for k, v in values.items() if v <= OFF_SCALE * top}
    return drawn, {k: v for k, v in values.items() if k not in drawn}


def _level_lines(ax: Any, summary: list[dict[str, Any]], metric: str, references: dict[str, Any] | None) -> str:
    """The full pool (dashed) and the non-LLM references (dotted, labelled) as horizontal lines; returns a
    line for the title naming the references too far above to draw (empty if none)."""
    full = next((r for r in summary if r["arm"] == "full" and metric in r), None)
    if full is not None:
        ax.axhline(full[metric], color="black", ls="--", lw=1, label="full pool")
    drawn, off_scale = split_references(summary, metric, references)
    for name, value in drawn.items():
        ax.axhline(value, ls=":", lw=1, color="grey")
        ax.annotate(name, (0.01, value), xycoords=("axes fraction", "data"), fontsize=7, color="grey",
                    va="bottom")
    if not off_scale:
        return ""
    return "non-LLM references above the scale: " + ", ".join(f"{name} {value:.4f}" for name, value in off_scale.items())


def plot_metric_by_arm(summary: list[dict[str, Any]], path: Path, metric: str = "ndcg@10",
                       references: dict[str, Any] | None = None) -> None:
    """Grouped bars: one group per arm, one bar per budget, error bars = std over seeds."""
    arms = list(dict.fromkeys(r["arm"] for r in summary if r["arm"] != "full"))  # full is the dashed line
    budgets = list(dict.fromkeys(r["budget"] for r in summary if r["budget"] is not None))
    fig = new_figure(max(6.0, 0.9 * len(arms) + 2), 4)
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
    note = _level_lines(ax, summary, metric, references)
    ax.set_xticks(range(len(arms)), arms, rotation=30, ha="right")
    ax.set_ylabel(metric.upper())
    ax.set_title(f"{metric.upper()} by arm and budget (mean ± std over seeds)" + (f"\n{note}" if note else ""))
    ax.legend(fontsize=8)
    save_figure(fig, path, metric)


def plot_metric_by_budget(summary: list[dict[str, Any]], path: Path, metric: str = "ndcg@10",
                          references: dict[str, Any] | None = None) -> None:
    """One line per arm over the budgets (error bars = std over seeds); the full pool and the non-LLM
    references as horizontal lines."""
    fig = new_figure(7, 4)
    ax = fig.subplots()
    arms = list(dict.fromkeys(r["arm"] for r in summary if r["budget"] is not None))
    for i, arm in enumerate(arms):
        rows = sorted((r for r in summary if r["arm"] == arm and r["budget"] is not None and metric in r),
                      key=lambda r: r["budget"])
        style = {"lw": 2.5, "zorder": 3} if arm == "dealrec" else {"lw": 1, "alpha": 0.8}
        dodge = 2 ** (0.03 * (i - (len(arms) - 1) / 2))  # arms side by side, so equal means stay visible
        ax.errorbar([r["budget"] * dodge for r in rows], [r[metric] for r in rows],
                    yerr=[r.get(f"{metric}_std", 0.0) for r in rows], marker="o", capsize=3, label=arm, **style)
    note = _level_lines(ax, summary, metric, references)
    ax.set_xscale("log", base=2)
    budgets = sorted({r["budget"] for r in summary if r["budget"] is not None})
    ax.set_xticks(budgets, [str(b) for b in budgets])
    ax.minorticks_off()
    ax.set_ylim(bottom=0)  # from zero: differences within noise should not look like gaps
    ax.set_xlabel("budget (samples, log scale)")
    ax.set_ylabel(metric.upper())
    ax.set_title(f"{metric.upper()} vs budget (mean ± std over seeds)" + (f"\n{note}" if note else ""))
    ax.legend(fontsize=7, ncol=2)
    save_figure(fig, path, f"{metric} vs budget")


def plot_quality_vs_cost(summary: list[dict[str, Any]], path: Path, metric: str = "ndcg@10") -> bool:
    """The trade-off the toolkit exists for: each arm-budget's quality (mean ± std over seeds) against its
    pruning + training time as a share of the full arm's fine-tuning time (log axis; full sits at 100%).
    A share whose times come from different machines is marked †. False (nothing drawn) without a full arm."""
    # A share rounded to 0 has no place on a log axis, and a missing metric no height: both are left out.
    rows = [r for r in summary if (r.get("fraction_of_full") or 0) > 0 and np.isfinite(r.get(metric, np.nan))]
    if not any(r["arm"] == "full" for r in rows) or len(rows) < 2:
        path.unlink(missing_ok=True)  # a plot from an earlier report would otherwise stay beside this one
        return False
    fig = new_figure(7, 4.5)
    ax = fig.subplots()
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    colors = {arm: f"C{i % 10}" for i, arm in enumerate(arms)}
    for arm in arms:
        mine = [r for r in rows if r["arm"] == arm]
        ax.errorbar([100 * r["fraction_of_full"] for r in mine], [r[metric] for r in mine],
                    yerr=[r.get(f"{metric}_std", 0.0) for r in mine], fmt="o", capsize=3, color=colors[arm],
                    label=arm, ms=8 if arm == "dealrec" else 6, zorder=3 if arm == "dealrec" else 2)
        for r in mine:
            text = _budget_label(r["budget"]) + (" †" if r.get("fraction_machines") else "")
            ax.annotate(text, (100 * r["fraction_of_full"], r[metric]), xytext=(5, 3), textcoords="offset points",
                        fontsize=7, color=colors[arm])
    ax.set_xscale("log")
    # A pruned arm can cost more than full (scoring the whole of a small pool), so the ticks go past 100%.
    shares = [100 * r["fraction_of_full"] for r in rows]
    ticks = [t for t in (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
             if min(shares) / 2 <= t <= max(shares) * 2]
    ax.set_xticks(ticks, [f"{t:g}%" for t in ticks])
    ax.minorticks_off()
    ax.set_ylim(bottom=0)
    ax.set_xlabel("pruning + fine-tuning time, share of the full arm's (log scale)")
    ax.set_ylabel(metric.upper())
    marked = any(r.get("fraction_machines") for r in rows)
    ax.set_title(f"{metric.upper()} vs cost (labels: budget" + ("; † times from different machines" if marked
                                                                 else "") + ")", fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    save_figure(fig, path, f"{metric} vs cost")
    return True


def selection_images(runs: list[dict[str, Any]]) -> list[str]:
    """Markdown images of the stratified arms' score distributions (first seed of each arm and budget)."""
    seen, lines = set(), []
    for run in runs:
        key = (run["arm"], run["budget"])
        if run.get("score_plot") and key not in seen:
            seen.add(key)
            lines.append(f"![{run['arm']} at budget {run['budget']}]({run['score_plot']})")
    return lines


def plot_cost_by_arm(summary: list[dict[str, Any]], path: Path) -> None:
    """Stacked bars: scoring and training seconds for each arm-budget, each labelled with its fraction of the
    full arm's time where there is one.

    The axis is linear: on a log axis the upper part of a stacked bar looks far smaller than it is, and the
    question the plot answers (what share of full fine-tuning does pruning cost) is a ratio of heights.
    """
    labels = [f"{r['arm']}\n{_budget_label(r['budget'])}" for r in summary]
    scoring = np.array([r["scoring_s"] for r in summary], dtype=float)
    training = np.array([r["train_s"] for r in summary], dtype=float)
    fig = new_figure(max(6.0, 0.6 * len(labels) + 2), 4)
    ax = fig.subplots()
    ax.bar(labels, scoring, label="scoring (surrogate + scores)")
    ax.bar(labels, training, bottom=scoring, label="LoRA fine-tuning")
    for x, (total, row) in enumerate(zip(scoring + training, summary, strict=True)):
        if row.get("fraction_of_full") is not None and row["arm"] != "full":
            ax.annotate(_fraction_cell(row), (x, total), xytext=(0, 2), textcoords="offset points",
                        ha="center", va="bottom", fontsize=7)
    ax.set_ylabel("wall time (s)")
    ax.set_title("Cost of pruning + fine-tuning per arm\n(labels: share of the full arm's time)", fontsize=10)
    ax.tick_params(axis="x", labelsize=7)
    ax.legend(fontsize=8)
    save_figure(fig, path, "cost")


def _no_verdict(payload: dict[str, Any]) -> str:
    pending = (payload.get("status") or {}).get("pending", [])
    if any(key.startswith("dealrec-") for key in pending):
        return "no `dealrec` run has finished yet."
    return "no `dealrec` arm in this experiment."


def _users_phrase(payload: dict[str, Any]) -> str:
    refs = [r.get("users") for r in (payload.get("references") or {}).values() if isinstance(r, dict)]
    n = payload["test_users"]
    return f"all {n} of them" if refs and all(u == n for u in refs) else f"only the first {n}"


def _protocol_phrase(config: dict[str, Any]) -> str:
    """How the references rank, next to how the LLM arms do: a different history rule changes every number."""
    refs = bool(config.get("surrogate", {}).get("exclude_history", False))
    llm = bool(config.get("evaluation", {}).get("exclude_history", False))

    def rule(excluded: bool) -> str:
        return "excluding each user's history items" if excluded else "history items included"

    text = (f"They rank every item ({rule(refs)}, `surrogate.exclude_history`); the LLM arms ground to items and "
            f"rank them with shared titles tied at their best rank ({rule(llm)}, `evaluation.exclude_history`).")
    return text if refs == llm else f"{text} **The two history rules differ, so the rows are not comparable.**"


def settings_lines(config: dict[str, Any]) -> list[str]:
    """The settings a reader needs to judge the numbers, in words (the whole config is in results.json)."""
    if not config:
        return []
    model, lora, train, sel = (config.get(k, {}) for k in ("model", "lora", "training", "selection"))
    lines = [
        f"- fine-tuning: {model.get('name')}, LoRA r={lora.get('r')} on {', '.join(lora.get('target_modules', []))}; "
        f"lr {train.get('lr')}, at most {train.get('epochs')} epochs, early stopping with patience "
        f"{train.get('patience')} on {train.get('valid_samples')} validation samples (the best adapter is kept)",
    ]
    arms = set((config.get("experiment") or {}).get("arms", []))
    parts = []
    if arms & {"dealrec", "greedy"}:
        parts.append(f"λ = {sel.get('lambda_')} as configured (`deft tune` chooses it on validation)")
    if arms & {"dealrec", "ccs", "influence_only", "effort_only"}:
        parts.append(f"K = {sel.get('strata')} strata, hard prune β = {sel.get('hard_prune')}")
    return lines + ([f"- selection: {'; '.join(parts)}"] if parts else [])


def measured_on(payload: dict[str, Any]) -> dict[str, list[str]]:
    """Which stages and runs each machine measured: a long experiment can be carried between machines, and
    then its cost ledger compares times taken on different CPUs. Stages and runs recorded before machines were
    recorded are left out."""
    where: dict[str, list[str]] = {}
    for name, cost in (payload.get("shared_stages") or {}).items():
        if cost.get("machine"):
            where.setdefault(cost["machine"], []).append(f"stage {name}")
    for run in payload.get("runs") or []:
        sessions = (run.get("train") or {}).get("sessions") or []
        parts = [(s["machine"], f"training from step {s['step']}") for s in sessions]
        parts += [(run["machine"], "evaluation")] if run.get("machine") else []
        if len({machine for machine, _ in parts}) == 1:
            where.setdefault(parts[0][0], []).append(run["key"])
        else:  # carried between machines midway: say which part ran where
            for machine, part in parts:
                where.setdefault(machine, []).append(f"{run['key']} ({part})")
    return where


def machine_lines(payload: dict[str, Any], current: str) -> list[str]:
    """Nothing when every recorded time comes from the machine writing the report; else which machine
    measured what, since a cost fraction across machines is not a like-for-like comparison."""
    where = measured_on(payload)
    if not where or set(where) == {current}:
        return []
    lines = ["- **measured on more than one machine**: the cost fractions below compare times taken on "
             "different CPUs"]
    for machine, what in where.items():
        lines.append(f"  - {machine}: {', '.join(what)}")
    return lines


def write_experiment_report(root: str | Path, payload: dict[str, Any]) -> tuple[Path, Path]:
    """results.json (everything) and results.md (tables, verdict, cost ledger, plots) in ``root``."""
    root = Path(root)
    summary, comparisons = payload["summary"], payload["comparisons"]
    ks = payload["config"]["evaluation"]["ks"]
    cap = (payload["config"].get("training") or {}).get("epochs")
    metric = headline_metric(ks)
    plot_metric_by_arm(summary, root / "ndcg_by_arm.png", metric, payload.get("references"))
    plot_metric_by_budget(summary, root / "ndcg_by_budget.png", metric, payload.get("references"))
    plot_cost_by_arm(summary, root / "cost_by_arm.png")
    traded = plot_quality_vs_cost(summary, root / "quality_vs_cost.png", metric)
    json_path = root / "results.json"
    write_json(json_path, payload)
    machine = payload.get("machine") or machine_info()
    refs = payload.get("references") or {}
    ref_lines = [f"| {name} | " + " | ".join(f"{ref.get(f'{m}@{k}', float('nan')):.4f}"
                                             for k in ks for m in ("recall", "ndcg")) + " |"
                 for name, ref in refs.items() if isinstance(ref, dict)]
    stage_lines = [f"| {name} | {c.get('wall_s', 0):.1f} | {c.get('peak_mb', 0):.0f} |"
                   for name, c in payload.get("shared_stages", {}).items()]
    images = selection_images(payload["runs"])
    spanned = machine_lines(payload, machine_label(machine))
    md = [
        "# Experiment results",
        "",
        f"- command: `{payload.get('command') or 'deft run'}`",
        f"- date: {payload['date']}",
        f"- machine: {machine_label(machine)}",
        *spanned,
        f"- pool: {payload['pool_size']} samples; test users: {payload['test_users']}",
        *settings_lines(payload.get("config") or {}),
        "",
        *status_lines(payload.get("status")),
        "## Verdict",
        "",
        *([f"- {line}" for line in verdict(summary, comparisons, metric)] or [f"- {_no_verdict(payload)}"]),
        "",
        "## Quality and cost (mean ± std over seeds)",
        "",
        experiment_table(summary, ks, cap),
        "",
        *convergence_note(payload["runs"], cap),
        "`pruning+training / full` = (scoring stages the arm needs + selection + fine-tuning) / the `full` arm's "
        f"fine-tuning time, measured in this run {'on the machines listed above' if spanned else 'on this machine'}. "
        "A shared stage is charged in full to every arm "
        "that needs it: `grand` and `el2n` (and `ccs` when it stratifies one of them) each pay the whole `baselines` "
        "stage, which computes GraNd and EL2N in one pass; `dealrec`, `greedy` and `influence_only` each pay the "
        "surrogate. "
        "`epochs run (best)`: epochs trained per seed, and the epoch of the kept best-validation adapter.",
        *(["", "† this fraction divides times measured on different machines (listed above), so it is not like "
               "for like: a slower machine on either side moves it."]
          if any(r.get("fraction_machines") for r in summary) else []),
        "",
        "![NDCG by arm](ndcg_by_arm.png)",
        "",
        "![NDCG vs budget](ndcg_by_budget.png)",
        "",
        *([f"![{metric.upper()} vs cost](quality_vs_cost.png)", ""] if traded else []),
        f"## Paired bootstrap (per-user {metric.upper()}, mean over seeds)",
        "",
        "Each user's score is first averaged over the arm's seeds (against a pruned arm: the seeds both arms have "
        "finished); the interval resamples test users, so it measures how much the result depends on which users "
        "were tested, not on the training seed (see ± std above for that).",
        "",
        comparison_table(comparisons),
        "",
        *(["## Non-LLM references (full ranking over all items)",
            "",
            f"The references are scored on every test user of the split, the LLM arms above on "
            f"{_users_phrase(payload)}. " + _protocol_phrase(payload["config"]),
            "",
            "| model | " + " | ".join(f"{m}@{k}" for k in ks for m in ("recall", "ndcg")) + " |",
            "|---|" + "---|" * (2 * len(ks)),
            *ref_lines,
            ""] if ref_lines else []),
        "## Every run",
        "",
        runs_table(payload["runs"], ks, cap),
        "",
        *speed_lines(payload["runs"], machine_label(machine)),
        "## Cost ledger: shared stages",
        "",
        "| stage | wall s | peak MB |",
        "|---|---|---|",
        *stage_lines,
        "",
        "![cost by arm](cost_by_arm.png)",
        "",
        *(["## What the stratified arms chose (selection score over the pool, strata, coreset)", "",
           *images, ""] if images else []),
    ]
    md_path = root / "results.md"
    write_text(md_path, "\n".join(md))
    return json_path, md_path
