"""Arms x budgets x seeds: select, fine-tune, evaluate, and compare quality and cost (benchmark.md).

The pool, the surrogate and every score are computed once in the experiment directory and shared by all
arms. Each finished arm-budget-seed writes ``arms/<key>/record.json``; a re-run reads those records and
computes only what is missing, so an interrupted experiment resumes where it stopped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from deft.artifacts import (
    fingerprint,
    frame_fingerprint,
    machine_label,
    measure,
    read_json,
    read_parquet,
    with_code,
    write_json,
    write_parquet,
)
from deft.config import DeftConfig, headline_k, resolve_budget, to_dict
from deft.errors import ArtifactMismatchError, ConfigError
from deft.pipeline import SCORE_STAGE, Pipeline, Pool, method_scores, method_stages
from deft.selection import settings_used

log = logging.getLogger(__name__)


@dataclass
class ArmRun:
    """One arm at one budget and seed."""

    arm: str
    budget: int | None  # None for the full pool
    seed: int

    @property
    def key(self) -> str:
        return f"{self.arm}-{'all' if self.budget is None else self.budget}-s{self.seed}"


@dataclass
class ExperimentResult:
    json: Path
    markdown: Path
    records: list[dict[str, Any]]


HEADLINE_ARMS = ("random", "dealrec")


def plan_runs(cfg: DeftConfig, pool_size: int) -> list[ArmRun]:
    """Every arm-budget-seed, the headline comparison first.

    First ``random`` and ``dealrec`` at each budget for every seed, then the full pool (each of its seeds),
    then the other arms, seed by seed. The full pool goes after the pruned headline runs because it alone
    costs about as much as all of them together (it trains on every sample): an experiment that takes days
    then has its first question (does ``dealrec`` beat ``random``, over every seed) answered in a fraction of
    that time, and the second (does it match ``full``, at what cost) next, before any other baseline.
    """
    e = cfg.experiment
    budgets = _check_budgets(cfg, pool_size)
    pruned = [a for a in e.arms if a != "full"]
    headline = [a for a in pruned if a in HEADLINE_ARMS]
    others = [a for a in pruned if a not in HEADLINE_ARMS]
    runs = [ArmRun(a, b, seed) for seed in e.seeds for b in budgets for a in headline]
    if "full" in e.arms:
        runs.extend(ArmRun("full", None, seed) for seed in e.full_seeds)
    for seed in e.seeds:
        runs.extend(ArmRun(a, b, seed) for b in budgets for a in others)
    return runs


def _check_budgets(cfg: DeftConfig, pool_size: int) -> list[int]:
    """The budgets as sample counts, refused now (not when their turn comes, hours in) if two are the same
    count or one asks for more samples than an arm can take from this pool."""
    from deft.selection import COVERAGE_METHODS, capacity

    e = cfg.experiment
    budgets = [resolve_budget(b, pool_size) for b in e.budgets]
    problems = []
    if len(set(budgets)) != len(budgets):
        problems.append(f"`experiment.budgets` {e.budgets!r} give the sample counts {budgets} for a pool of "
                        f"{pool_size}: one count twice")
    coverage = [a for a in e.arms if a in COVERAGE_METHODS]
    unpruned = capacity(coverage[0], pool_size, cfg.selection.hard_prune) if coverage else pool_size
    for given, count in zip(e.budgets, budgets, strict=True):
        if count > pool_size:
            problems.append(f"budget {given!r} ({count} samples) exceeds the pool of {pool_size}")
        elif coverage and count > unpruned:
            problems.append(f"budget {given!r} ({count} samples) exceeds the {unpruned} samples left after "
                            f"hard-pruning {cfg.selection.hard_prune:g} of the pool, which {', '.join(coverage)} "
                            "select from")
    if problems:
        raise ConfigError(problems)
    return budgets


def remaining_seconds(done: list[dict[str, Any]], pending: list[ArmRun], pool_size: int,
                      spent: Mapping[str, float] | None = None, machine: str | None = None) -> float | None:
    """Projected wall time of the pending runs from the finished ones: training seconds per sample (epochs
    included) times each run's sample count, less what a run's checkpoint says it has trained already
    (``spent``, by run key), plus the mean evaluation time.

    The pace comes from the most alike finished runs: those that finished on ``machine`` (this one) when there
    are any, since CPUs differ by tens of percent; and among them pruned runs for a pruned run, full runs for a
    full one, when there are any, since the full pool trains a different number of epochs."""
    if not done:
        return None
    spent = spent or {}
    here = [r for r in done if r.get("machine") == machine] or done

    def pace(full: bool) -> tuple[float, float]:
        alike = [r for r in here if (r.get("budget") is None) == full] or here
        per_sample = sum(r["train"]["wall_s"] for r in alike) / max(1, sum(r["samples"] for r in alike))
        return per_sample, float(np.mean([r["eval"]["wall_s"] for r in alike]))

    total = 0.0
    for run in pending:
        per_sample, eval_s = pace(run.budget is None)
        total += eval_s + max(0.0, per_sample * (pool_size if run.budget is None else run.budget)
                              - spent.get(run.key, 0.0))
    return total


def trained_so_far(pipe: Pipeline, runs: list[ArmRun]) -> dict[str, float]:
    """Training seconds each run's checkpoint holds (runs without one are left out)."""
    from deft.training import checkpoint_wall_s

    spent = {run.key: checkpoint_wall_s(pipe.run.path("arms", run.key, "train")) for run in runs}
    return {key: s for key, s in spent.items() if s is not None}


def run_experiment(cfg: DeftConfig, out: str | Path, *, overwrite: bool = False, progress: bool = True,
                   command: str = "") -> ExperimentResult:
    pipe = Pipeline(cfg, out, overwrite=overwrite, progress=progress)
    pool = pipe.pool_from_source()
    ccs = cfg.selection.ccs_score
    names = sorted({n for arm in cfg.experiment.arms for n in method_scores(arm, ccs)})
    runs = plan_runs(cfg, len(pool.samples))
    pipe.check_plan(pool, names, "random", [])
    scores = pipe.score(pool, names)
    valid, users = _valid_and_test(pipe, pool)
    references = _references(pipe, pool)
    # Every cached run is read (and its settings checked) before anything is computed: a mismatch fails now,
    # not hours in, and the reports written below include runs cached from an earlier order.
    users_fp = _eval_users_fingerprint(pipe, users)  # once: every cached run is checked against it
    finished = {run.key: record for run in runs if (record := _cached_record(pipe, pool, run, users_fp)) is not None}
    todo = [run for run in runs if run.key not in finished]
    for run in runs:
        if run.key in finished:
            _backfill_coreset(pipe, pool, scores, valid, run, finished[run.key])
    if finished:
        log.info("%d of %d runs already finished in %s; %d to go", len(finished), len(runs), pipe.run.root, len(todo))
        if todo:  # the next run can take hours: report what is cached (and in what order the rest comes) now
            _write_report(pipe, pool, cfg, names, finished, runs, users, references, command)
    for i, run in enumerate(todo, 1):
        started = time.monotonic()
        finished[run.key] = _run_arm(pipe, pool, scores, valid, users, run)
        left = remaining_seconds(list(finished.values()), todo[i:], len(pool.samples))
        log.info("run %s finished in %.0f s (%d of %d to go done)%s", run.key, time.monotonic() - started, i,
                 len(todo), "" if left is None or i == len(todo) else f"; about {left / 3600:.1f} h left")
        if i < len(todo):  # rewritten after every run, so a day-long experiment can be read while it runs
            _write_report(pipe, pool, cfg, names, finished, runs, users, references, command)
    json_path, md_path = _write_report(pipe, pool, cfg, names, finished, runs, users, references, command)
    records = [finished[run.key] for run in runs]
    return ExperimentResult(json_path, md_path, records)


def _write_report(pipe: Pipeline, pool: Pool, cfg: DeftConfig, names: list[str], finished: dict[str, Any],
                  runs: list[ArmRun], users: pd.DataFrame, references: dict[str, Any],
                  command: str) -> tuple[Path, Path]:
    """results.json/.md and plots from the finished runs (in plan order), saying which are still pending."""
    from deft.report import write_experiment_report

    records = [finished[run.key] for run in runs if run.key in finished]

    evaluated = len(users) if cfg.evaluation.max_users is None else min(len(users), cfg.evaluation.max_users)
    stage_costs = pipe.run.stage_costs()
    pending = [run for run in runs if run.key not in finished]
    spent = trained_so_far(pipe, pending)
    here = machine_label()
    left = remaining_seconds(records, pending, len(pool.samples), spent, here)
    # The verdict needs random, dealrec and full: how long until those alone are in (they run first).
    headline = [run for run in pending if run.arm in (*HEADLINE_ARMS, "full")]
    to_verdict = remaining_seconds(records, headline, len(pool.samples), spent, here) if headline else None
    status = {"finished": len(records), "planned": len(runs), "pending": [run.key for run in pending],
              "estimated_remaining_s": None if left is None or not pending else round(left),
              "headline_pending": len(headline),
              "headline_arms": [a for a in (*HEADLINE_ARMS, "full") if a in cfg.experiment.arms],
              "headline_remaining_s": None if to_verdict is None else round(to_verdict)}
    payload = {"command": command, "date": time.strftime("%Y-%m-%d %H:%M"), "config": to_dict(cfg),
               "pool_size": len(pool.samples), "test_users": evaluated, "status": status, "runs": records,
               "summary": summarise(records, cfg, stage_costs, names),
               "comparisons": compare(pipe.run.root, records, cfg, headline_k(cfg.evaluation.ks)),
               "references": references,
               "shared_stages": stage_costs}
    pipe.run.write_manifest(config=to_dict(cfg), data_fingerprint=pool.data_fingerprint,
                            counts={"pool": len(pool.samples), "runs": len(records), "planned_runs": len(runs),
                                    "test_users": evaluated})
    return write_experiment_report(pipe.run.root, payload)


def _valid_and_test(pipe: Pipeline, pool: Pool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validation samples (one per user, for early stopping) and the test users' inference prompts."""
    from deft.data import build_eval_users

    c = pipe.cfg
    tokenizer = pipe.tokenizer() if c.prompt.max_tokens is not None else None
    valid = pipe.early_stopping_samples(pool)
    users = build_eval_users(pool.split, pool.titles, c.prompt, c.samples, which="test", tokenizer=tokenizer)
    return valid, users


def _cached_record(pipe: Pipeline, pool: Pool, run: ArmRun, users_fp: str) -> dict[str, Any] | None:
    """The run's finished record if it was made with these settings and evaluated on these test prompts; a
    record from other settings is an error unless ``--overwrite`` (then it is recomputed)."""
    record_path = pipe.run.path("arms", run.key) / "record.json"
    if not record_path.is_file():
        return None
    record, fp = read_json(record_path), _arm_fingerprint(pipe, pool, run)
    if record.get("fingerprint") != fp and record.get("fingerprint") == _wide_arm_fingerprint(pipe, pool, run):
        record["fingerprint"] = fp
        write_json(record_path, record)
    if record.get("fingerprint") == fp:
        train_dir = record_path.parent / "train"
        if record["train"].get("best_epoch") is None and (train_dir / "train_result.json").is_file():
            from deft.training import finished_best_epoch

            # records written before the kept epoch was recorded: read it back from the training log
            record["train"]["best_epoch"] = finished_best_epoch(train_dir)
        stale = _stale_evaluation(record, users_fp)
        if stale is None:
            return record
        if not pipe.run.overwrite:
            raise ArtifactMismatchError(f"arm {run.key} in {pipe.run.root} was evaluated on other test prompts "
                                        f"({stale}); use --overwrite to evaluate it again (its "
                                        "training is kept) or choose another --out", file=record_path)
        return None
    if not pipe.run.overwrite:
        raise ArtifactMismatchError(
            f"arm {run.key} in {pipe.run.root} was made with fingerprint {record.get('fingerprint')}, these "
            f"settings give {fp}; use --overwrite to replace it or choose another --out", file=record_path)
    return None


def _eval_users_fingerprint(pipe: Pipeline, users: pd.DataFrame) -> str:
    """The test prompts and targets a run is evaluated on (after ``evaluation.max_users``)."""
    from deft.evaluation import USER_COLUMNS

    max_users = pipe.cfg.evaluation.max_users
    capped = users if max_users is None else users.iloc[:max_users]
    return frame_fingerprint(capped[list(USER_COLUMNS)])


def _stale_evaluation(record: dict[str, Any], users_fp: str) -> str | None:
    """Why the run was evaluated on other test prompts than these inputs build, or None. The run's fingerprint
    holds settings, not the prompts built from them, so a change in how prompts are built would slip past it.
    Records from before the prompts' fingerprint was recorded cannot tell, and are taken as they are."""
    saved = record["eval"].get("users_fingerprint")
    return None if saved is None or saved == users_fp else f"test prompts fingerprint {saved}, these inputs give {users_fp}"


def _run_arm(pipe: Pipeline, pool: Pool, scores: pd.DataFrame, valid: pd.DataFrame, users: pd.DataFrame,
             run: ArmRun) -> dict[str, Any]:
    from deft.evaluation import evaluate
    from deft.training import train_lora

    cfg = pipe.cfg
    arm_dir = pipe.run.path("arms", run.key)
    fp = _arm_fingerprint(pipe, pool, run)
    record_path = arm_dir / "record.json"
    selection = None
    with measure() as select_cost:
        if run.arm == "full":
            indices = np.arange(len(pool.samples))
        else:
            selection = pipe.select(pool, scores, run.arm, [run.budget], seed=run.seed)[run.budget]
            indices = selection.indices
    score_plot = _plot_selection(cfg, scores, run, selection, arm_dir)
    coreset = None if selection is None else _save_coreset(pipe, pool, selection, arm_dir)
    train_samples = pool.samples.iloc[indices].reset_index(drop=True)
    train_cfg = replace(cfg.training, seed=run.seed)
    with measure() as train_cost:
        trained = train_lora(pipe.llm(), train_samples, valid, cfg.lora, train_cfg, arm_dir / "train",
                             progress=pipe.progress, overwrite=pipe.run.overwrite)
    with measure() as eval_cost:
        evaluated = evaluate(pipe.llm(), trained.adapter_dir, users, pipe.grounding_titles(pool), cfg.evaluation,
                             arm_dir / "eval", cache_dir=pipe.run.path("cache"), progress=pipe.progress,
                             overwrite=pipe.run.overwrite)
    record = {"key": run.key, "arm": run.arm, "budget": run.budget, "seed": run.seed, "fingerprint": fp,
              "samples": int(len(indices)), "metrics": evaluated.metrics,
              "train": {"wall_s": trained.wall_s, "epochs": trained.epochs_run, "best_epoch": trained.best_epoch,
                        "steps": trained.steps, "sessions": trained.sessions,
                        "best_valid_loss": trained.best_valid_loss, "samples_per_s": trained.samples_per_s,
                        "peak_mb": train_cost.peak_mb},
              "selection": {"wall_s": select_cost.wall_s, "peak_mb": select_cost.peak_mb,
                            **_selection_facts(selection, coreset)},
              "eval": {"wall_s": evaluated.wall_s, "s_per_user": evaluated.s_per_user,
                       "title_embedding_s": evaluated.title_embedding_s, "peak_mb": eval_cost.peak_mb,
                       "users_fingerprint": _eval_users_fingerprint(pipe, users)},
              "machine": machine_label(),  # where it finished; train.sessions says where its training ran
              "per_user": str((arm_dir / "eval" / "per_user.parquet").relative_to(pipe.run.root)),
              "score_plot": None if score_plot is None else str(score_plot.relative_to(pipe.run.root))}
    write_json(record_path, record)
    return record


def save_coreset(path: Path, pool: Pool, selection: Any) -> None:
    """``coreset.parquet``: which pool samples a run trained on (and their strata), so a result can be audited
    and its coreset reused."""
    write_parquet(path, pd.DataFrame({"sample_id": pool.samples["sample_id"].iloc[selection.indices].to_numpy(),
                                      "pool_index": selection.indices, "stratum": selection.strata}))


def _save_coreset(pipe: Pipeline, pool: Pool, selection: Any, arm_dir: Path) -> str:
    save_coreset(arm_dir / "coreset.parquet", pool, selection)
    return str((arm_dir / "coreset.parquet").relative_to(pipe.run.root))


def _selection_facts(selection: Any, coreset: str | None) -> dict[str, Any]:
    """How the coreset was chosen (settings, pruned count, top-up, per-stratum counts), for the record."""
    if selection is None:  # full: the whole pool
        return {"coreset": None}
    return {"coreset": coreset, "params": selection.params, "stratum_counts": selection.stratum_counts.tolist()}


def _backfill_coreset(pipe: Pipeline, pool: Pool, scores: pd.DataFrame, valid: pd.DataFrame, run: ArmRun,
                      record: dict[str, Any]) -> None:
    """Records written before coresets were saved: choose the coreset again (selection is a pure seeded
    function) and save it only if its samples are provably the ones trained on, i.e. they reproduce the
    training run's fingerprint; otherwise say so and leave the record as it is."""
    if run.arm == "full" or "coreset" in record["selection"]:
        return
    from deft.training import training_fingerprint

    arm_dir = pipe.run.path("arms", run.key)
    result_path = arm_dir / "train" / "train_result.json"
    selection = pipe.select(pool, scores, run.arm, [run.budget], seed=run.seed)[run.budget]
    trained = pool.samples.iloc[selection.indices].reset_index(drop=True)
    fp = training_fingerprint(pipe.llm(), trained, valid, pipe.cfg.lora, replace(pipe.cfg.training, seed=run.seed))
    if not result_path.is_file() or read_json(result_path).get("fingerprint") != fp:
        log.warning("run %s: its coreset cannot be reconstructed (choosing it again does not reproduce the samples "
                    "it trained on); its record keeps no coreset", run.key)
        return
    record["selection"].update(_selection_facts(selection, _save_coreset(pipe, pool, selection, arm_dir)))
    write_json(arm_dir / "record.json", record)


def _plot_selection(cfg: DeftConfig, scores: pd.DataFrame, run: ArmRun, selection: Any,
                    arm_dir: Path) -> Path | None:
    """The stratified arms' picture: the selection score over the pool, its strata and the chosen samples."""
    if selection is None or selection.edges is None:
        return None
    from deft.report import plot_score_distribution
    from deft.selection import selection_score

    columns = {k: scores[k].to_numpy(np.float64) for k in scores.columns if k != "sample_id"}
    combined = selection_score(run.arm, columns, lambda_=cfg.selection.lambda_,
                               normalization=cfg.selection.normalization, ccs_score=cfg.selection.ccs_score)
    if combined is None:
        return None
    path = arm_dir / "score_distribution.png"
    plot_score_distribution(combined, selection, path, f"{run.arm}: budget {run.budget}, seed {run.seed}")
    return path


def _arm_fingerprint(pipe: Pipeline, pool: Pool, run: ArmRun) -> str:
    """What the run's result depends on, and nothing else: the run's seed stands in for the training and
    selection seeds, a method's unread selection settings and the bootstrap's are left out, so that changing
    them keeps every finished run."""
    c = pipe.cfg
    model, numerics = pipe.model_key()  # read from the model's files where they tell
    stages = method_stages(run.arm, ccs_score=c.selection.ccs_score)  # k-center's includes its surrogate
    used = () if run.arm == "full" else settings_used(run.arm)
    return fingerprint(with_code({"pool": pool.fingerprint, "scores": {s: pipe.stage_fp(s, pool) for s in stages},
                                  "run": [run.arm, run.budget, run.seed],
                                  "selection": {name: getattr(c.selection, name) for name in used},
                                  "training": replace(c.training, seed=run.seed).result_settings(),
                                  "lora": to_dict(c.lora), "model": model,
                                  "evaluation": c.evaluation.result_settings(), **numerics},
                                 *_code_parts(run)))


def _code_parts(run: ArmRun) -> tuple[str, ...]:
    """The code a run's result depends on: its training and evaluation, and the selection unless it is full."""
    return ("training", "evaluation") if run.arm == "full" else ("selection", "training", "evaluation")


def _wide_arm_fingerprint(pipe: Pipeline, pool: Pool, run: ArmRun) -> str:
    """The fingerprint of records written before it was narrowed (DEFT 0.1.0): it hashed every selection,
    training and evaluation setting. A record that matches it matches the narrower one too, so it is kept and
    its fingerprint rewritten; nothing finished is recomputed for the change."""
    c = pipe.cfg
    model, numerics = pipe.model_key()  # read from the model's files where they tell
    stages = sorted({SCORE_STAGE[n] for n in method_scores(run.arm, c.selection.ccs_score)})
    return fingerprint(with_code({"pool": pool.fingerprint, "scores": {s: pipe.stage_fp(s, pool) for s in stages},
                                  "run": [run.arm, run.budget, run.seed], "selection": to_dict(c.selection),
                                  "training": c.training.result_settings(), "lora": to_dict(c.lora),
                                  "model": model, "evaluation": to_dict(c.evaluation), **numerics},
                                 *_code_parts(run)))


def _references(pipe: Pipeline, pool: Pool) -> dict[str, Any]:
    """The non-LLM reference lines: the SASRec surrogate itself and a most-popular ranking."""
    out: dict[str, Any] = {}
    refs = pipe.cfg.experiment.references
    if not refs:
        return out
    _, _, report = pipe.surrogate(pool)
    if "sasrec" in refs:
        out["sasrec"] = report.get("test", report)
    if "popularity" in refs:
        out["popularity"] = report.get("popularity", {})
    return out


# ----------------------------------------------------------------------------------------------- summary


def per_user_ndcg(root: Path, record: dict[str, Any], k: int = 10) -> pd.Series:
    frame = read_parquet(root / record["per_user"])
    return frame.set_index("user")[f"ndcg@{k}"]


def training_machines(record: dict[str, Any]) -> set[str]:
    """Machines a run's training time was measured on: each resumed session's, else where the run finished.
    Empty for records written before machines were recorded."""
    sessions = record["train"].get("sessions") or []
    machines = {s["machine"] for s in sessions if s.get("machine")}
    return machines or ({record["machine"]} if record.get("machine") else set())


def summarise(records: list[dict[str, Any]], cfg: DeftConfig, stage_costs: dict[str, Any],
              score_names: list[str]) -> list[dict[str, Any]]:
    """Mean +- std over seeds per (arm, budget), with the cost of pruning + training vs the full arm."""
    frame = pd.DataFrame([{"record": i, "arm": r["arm"], "budget": r["budget"], "seed": r["seed"], **r["metrics"],
                           "train_s": r["train"]["wall_s"], "select_s": r["selection"]["wall_s"],
                           "eval_s": r["eval"]["wall_s"], "epochs": r["train"]["epochs"],
                           "best_epoch": r["train"].get("best_epoch"),
                           "peak_mb": max(r["train"].get("peak_mb", 0.0), r["eval"].get("peak_mb", 0.0))}
                          for i, r in enumerate(records)])
    full_train = frame.loc[frame["arm"] == "full", "train_s"].mean() if (frame["arm"] == "full").any() else None
    full_machines = set().union(*[training_machines(r) for r in records if r["arm"] == "full"])
    rows = []
    for (arm, budget), group in frame.groupby(["arm", "budget"], dropna=False, sort=False):
        stages = method_stages(arm, ccs_score=cfg.selection.ccs_score) if arm != "full" else []
        # A stage without a cost record would count as free and understate the fraction: leave the fraction out.
        missing = [s for s in stages if "wall_s" not in stage_costs.get(s, {})]
        scoring = sum(stage_costs[s]["wall_s"] for s in stages if s not in missing)
        pipeline_s = scoring + group["select_s"].mean() + group["train_s"].mean()
        row = {"arm": arm, "budget": None if pd.isna(budget) else int(budget), "seeds": int(len(group)),
               "epochs": group["epochs"].tolist(), "best_epochs": group["best_epoch"].tolist(),
               "scoring_s": round(scoring, 2),
               "train_s": round(float(group["train_s"].mean()), 2), "pipeline_s": round(float(pipeline_s), 2),
               "eval_s": round(float(group["eval_s"].mean()), 2), "peak_mb": float(group["peak_mb"].max()),
               "fraction_of_full": None if not full_train or missing else round(float(pipeline_s / full_train), 4),
               "missing_stage_costs": missing,
               # a fraction whose times come from different CPUs is not like for like: the report marks it
               "fraction_machines": [] if arm == "full" or not full_train else
               _fraction_machines([records[i] for i in group["record"]], stages, stage_costs, full_machines)}
        for metric in [c for c in frame.columns if "@" in c]:
            row[metric] = float(group[metric].mean())
            # sample std (ddof 1): with 3 seeds the population std would understate the spread by ~18%
            row[f"{metric}_std"] = float(group[metric].std(ddof=1)) if len(group) > 1 else 0.0
        rows.append(row)
    return rows


def _fraction_machines(runs: list[dict[str, Any]], stages: list[str], stage_costs: dict[str, Any],
                       full_machines: set[str]) -> list[str]:
    """The machines behind a row's cost fraction when there are several (else []): its scoring stages', its
    runs' training and selection, and the full arm's training."""
    machines = set(full_machines)
    machines |= {stage_costs[s]["machine"] for s in stages if stage_costs.get(s, {}).get("machine")}
    for record in runs:
        machines |= training_machines(record)
    return sorted(machines) if len(machines) > 1 else []


def compare(root: Path, records: list[dict[str, Any]], cfg: DeftConfig, k: int = 10) -> list[dict[str, Any]]:
    """Paired bootstrap of per-user NDCG@k (mean over seeds) of each arm against `random` and `full`, and of
    `dealrec` against every other baseline at its budget (the protocol asks whether it beats each of them).

    Against a pruned arm, only the seeds both arms have finished are averaged (no comparison while they share
    none): while an experiment is still running one arm may have a seed more, and the difference must come from
    the methods, not from that seed. The full pool has its own seeds (often just one), so against it every seed
    of the arm counts. Both sides must have been evaluated on the same users.
    """
    from deft.evaluation import paired_bootstrap

    by_arm: dict[tuple[str, Any], dict[int, pd.Series]] = {}
    for r in records:
        budget = None if r["budget"] is None else int(r["budget"])
        by_arm.setdefault((r["arm"], budget), {})[int(r["seed"])] = per_user_ndcg(root, r, k)
    full = next((v for (a, _), v in by_arm.items() if a == "full"), None)
    out = []
    for (arm, budget), seeds in by_arm.items():
        against = {"random": by_arm.get(("random", budget)), "full": full}
        if arm == "dealrec":
            against |= {a: v for (a, b), v in by_arm.items() if b == budget and a not in ("dealrec", *against)}
        for name, other in against.items():
            if other is None or arm == name:
                continue
            if name != "full":
                mine = theirs = sorted(set(seeds) & set(other))
                if not mine:
                    continue
            else:
                mine, theirs = sorted(seeds), sorted(other)
            a, b = _seed_mean(seeds, mine), _seed_mean(other, theirs)
            if (only := set(a.index) ^ set(b.index)):
                raise ArtifactMismatchError(f"{arm} at budget {budget} and {name} were evaluated on different test "
                                            f"users ({len(only)} in one only, e.g. {min(only, key=str)!r}); re-run "
                                            "the experiment with --overwrite", file=root)
            a, b = a.align(b)
            ci = paired_bootstrap(a.to_numpy(), b.to_numpy(), n=cfg.evaluation.bootstrap_samples,
                                  seed=cfg.evaluation.seed)
            out.append({"arm": arm, "budget": budget, "against": name, "metric": f"ndcg@{k}",
                        "seeds": mine, "against_seeds": theirs, **{key: float(v) for key, v in ci.items()}})
    return out


def _seed_mean(per_seed: dict[int, pd.Series], seeds: list[int]) -> pd.Series:
    return pd.concat([per_seed[s] for s in seeds], axis=1).mean(axis=1)
