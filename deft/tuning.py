"""Choosing DEALRec's λ on validation (algorithms.md §5: "expose λ; choose it on validation for a new dataset").

For each λ of a grid and each seed: the ``dealrec`` coreset at one budget, a LoRA fine-tune on it (early stopping
on the experiment's validation samples, as every arm), and a ranking evaluation on the validation items of the
*other* users. The λ with the best mean validation NDCG@K wins; ties go to the smaller λ. Test items play no part
in the choice. (The scores themselves are those of the experiment: the surrogate early-stops on every user's
validation item, and ``influence.target: valid`` reads them too; both are the same for every λ.) Scores are
computed once and shared with an experiment in the same directory; each (λ, seed) run is cached like an
experiment's arm, and the report is rewritten after each, so an interrupted sweep resumes and can be read.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from deft.artifacts import (
    fingerprint,
    frame_fingerprint,
    machine_info,
    read_json,
    with_code,
    write_json,
    write_text,
)
from deft.config import DeftConfig, budget_ok, headline_k, resolve_budget, to_dict
from deft.errors import ArtifactMismatchError, ConfigError
from deft.pipeline import Pipeline, Pool, method_scores, method_stages
from deft.selection import settings_used

log = logging.getLogger(__name__)

DEFAULT_LAMBDAS = (0.1, 0.3, 0.5, 1.0, 2.0)


@dataclass
class TuneResult:
    best_lambda: float
    json_path: Path
    markdown_path: Path
    runs: list[dict[str, Any]]


def tune_lambda(cfg: DeftConfig, out: str | Path, *, lambdas: tuple[float, ...] = DEFAULT_LAMBDAS,
                budget: int | str | None = None, seeds: tuple[int, ...] | None = None, overwrite: bool = False,
                progress: bool = True, command: str = "") -> TuneResult:
    """Sweep λ (see the module docstring) and write ``tune.json``, ``tune.md`` and ``tune_lambda.png`` to ``out``.

    ``budget`` defaults to the smallest experiment budget, ``seeds`` to the first experiment seed.
    ``evaluation.max_users`` caps the validation users (the first ones, in user order), as it caps test users.
    """
    lambdas = _check_lambdas(lambdas)
    seeds = tuple(seeds) if seeds else (cfg.experiment.seeds[0],)
    if len(set(seeds)) != len(seeds) or any(not isinstance(x, int) or x < 0 for x in seeds):
        raise ConfigError([f"tuning seeds (--seed) must be distinct non-negative integers, got {list(seeds)}"])
    if budget is not None and not budget_ok(budget):
        raise ConfigError([f"the tuning budget (--budget) must be a positive sample count or a percentage like "
                           f"'2%', got {budget!r}"])
    pipe = Pipeline(cfg, out, overwrite=overwrite, progress=progress)
    pool = pipe.pool_from_source()
    budget = _check_budget(cfg, budget, len(pool.samples))
    names = method_scores("dealrec")
    pipe.check_plan(pool, names, "dealrec", [])
    scores = pipe.score(pool, names)
    early = pipe.early_stopping_samples(pool)
    users = validation_users(pipe, pool, early)
    if users.empty:
        raise ConfigError(["no validation users are left for tuning once the early-stopping users are set aside; "
                           "lower `training.valid_samples`"])
    n_users = len(users) if cfg.evaluation.max_users is None else min(len(users), cfg.evaluation.max_users)
    runs: list[dict[str, Any]] = []
    for lam in lambdas:
        for seed in seeds:
            runs.append(_tune_run(pipe, pool, scores, early, users, lam, budget, seed))
            # rewritten after every run: a sweep of hours can be read while it runs, and an interrupted one says
            # how far it got
            result = _write_report(pipe, pool, runs, lambdas, budget, seeds, n_users, command)
    return result


def _check_budget(cfg: DeftConfig, budget: int | str | None, pool_size: int) -> int:
    """The budget as a sample count, refused before any scoring if dealrec cannot take that many samples."""
    from deft.selection import capacity

    given = budget if budget is not None else min(cfg.experiment.budgets, key=lambda b: resolve_budget(b, pool_size))
    count = resolve_budget(given, pool_size)
    left = capacity("dealrec", pool_size, cfg.selection.hard_prune)
    if count > left:
        raise ConfigError([f"the tuning budget (--budget) {given!r} is {count} samples, more than the {left} that "
                           f"dealrec can take from this pool of {pool_size} after hard-pruning "
                           f"{cfg.selection.hard_prune:g}"])
    return count


def _check_lambdas(lambdas: tuple[float, ...]) -> tuple[float, ...]:
    values = [float(x) for x in lambdas]
    if not values or any(not math.isfinite(x) or x < 0 for x in values):
        raise ConfigError([f"λ values (--lambda) must be non-negative numbers, got {list(lambdas)}"])
    if len({_lambda_label(x) for x in values}) != len(values):
        raise ConfigError([f"a λ value (--lambda) is repeated: {list(lambdas)}"])
    return tuple(sorted(values))


def validation_users(pipe: Pipeline, pool: Pool, early: pd.DataFrame) -> pd.DataFrame:
    """Ranking prompts for the validation items of every user whose item early stopping does not use."""
    from deft.data import build_eval_users

    c = pipe.cfg
    tokenizer = pipe.tokenizer() if c.prompt.max_tokens is not None else None
    users = build_eval_users(pool.split, pool.titles, c.prompt, c.samples, which="valid", tokenizer=tokenizer)
    return users[~users["user"].isin(set(early["user"]))].reset_index(drop=True)


def _lambda_label(lam: float) -> str:
    """λ as written in directory names and reports: shortest round-trip form, so distinct values never share one."""
    return repr(float(lam))


def _run_key(lam: float, budget: int, seed: int) -> str:
    return f"lambda-{_lambda_label(lam)}-{budget}-s{seed}"


def _run_fingerprint(pipe: Pipeline, pool: Pool, users: pd.DataFrame, lam: float, budget: int, seed: int) -> str:
    c = pipe.cfg
    model, numerics = pipe.model_key()  # read from the model's files where they tell
    parts = {"pool": pool.fingerprint, "scores": {s: pipe.stage_fp(s, pool) for s in method_stages("dealrec")},
             "run": [lam, budget, seed],
             "selection": {k: getattr(c.selection, k) for k in settings_used("dealrec") if k != "lambda_"},
             "training": replace(c.training, seed=seed).result_settings(), "lora": to_dict(c.lora),
             "model": model, "evaluation": c.evaluation.result_settings(),
             "users": frame_fingerprint(users[["user", "history", "targets", "input"]]), **numerics}
    return fingerprint(with_code(parts, "selection", "training", "evaluation"))


def _tune_run(pipe: Pipeline, pool: Pool, scores: pd.DataFrame, early: pd.DataFrame, users: pd.DataFrame,
              lam: float, budget: int, seed: int) -> dict[str, Any]:
    from deft.evaluation import evaluate
    from deft.experiment import save_coreset
    from deft.training import train_lora

    key = _run_key(lam, budget, seed)
    run_dir = pipe.run.path("tune", key)
    fp = _run_fingerprint(pipe, pool, users, lam, budget, seed)
    record_path = run_dir / "record.json"
    if record_path.is_file():
        record = read_json(record_path)
        if record.get("fingerprint") == fp:
            log.info("tuning run %s: cached", key)
            return record
        if not pipe.run.overwrite:
            raise ArtifactMismatchError(f"tuning run {key} was made with other settings (fingerprint "
                                        f"{record.get('fingerprint')}, now {fp}); use --overwrite or another --out",
                                        file=record_path)
    cfg = pipe.cfg
    selection = pipe.select(pool, scores, "dealrec", [budget], seed=seed, lambda_=lam)[budget]
    chosen = pool.samples.iloc[selection.indices].reset_index(drop=True)
    save_coreset(run_dir / "coreset.parquet", pool, selection)
    trained = train_lora(pipe.llm(), chosen, early, cfg.lora, replace(cfg.training, seed=seed), run_dir / "train",
                         progress=pipe.progress, overwrite=pipe.run.overwrite)
    evaluated = evaluate(pipe.llm(), trained.adapter_dir, users, pipe.grounding_titles(pool), cfg.evaluation, run_dir / "eval",
                         cache_dir=pipe.run.path("cache"), progress=pipe.progress, overwrite=pipe.run.overwrite)
    record = {"key": key, "lambda": lam, "budget": budget, "seed": seed, "fingerprint": fp,
              "samples": len(chosen), "metrics": evaluated.metrics,
              "selection": {"coreset": str((run_dir / "coreset.parquet").relative_to(pipe.run.root)),
                            "params": selection.params, "stratum_counts": selection.stratum_counts.tolist()},
              "train": {"wall_s": trained.wall_s, "epochs": trained.epochs_run, "best_epoch": trained.best_epoch,
                        "best_valid_loss": trained.best_valid_loss},
              "eval": {"wall_s": evaluated.wall_s, "s_per_user": evaluated.s_per_user},
              "per_user": str((run_dir / "eval" / "per_user.parquet").relative_to(pipe.run.root))}
    write_json(record_path, record)
    log.info("tuning run %s: validation %s", key, {k: round(v, 4) for k, v in evaluated.metrics.items()})
    return record


def summarise_lambdas(runs: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """One row per λ (ascending): mean and std over seeds of every metric, and the seeds' training time."""
    rows = []
    for lam in sorted({r["lambda"] for r in runs}):
        mine = [r for r in runs if r["lambda"] == lam]
        row: dict[str, Any] = {"lambda": lam, "seeds": [r["seed"] for r in mine],
                               "train_s": float(np.mean([r["train"]["wall_s"] for r in mine]))}
        for name in mine[0]["metrics"]:
            values = [r["metrics"][name] for r in mine]
            row[name], row[f"{name}_std"] = float(np.mean(values)), float(np.std(values))
        rows.append(row)
    if not rows or metric not in rows[0]:
        raise ConfigError([f"the tuning runs have no {metric}; add its K to `evaluation.ks`"])
    return rows


def best_lambda(rows: list[dict[str, Any]], metric: str) -> float:
    """The λ with the highest mean ``metric``; the smaller λ on a tie (rows are in ascending λ)."""
    return max(rows, key=lambda r: (r[metric], -r["lambda"]))["lambda"]


def choice_sentence(rows: list[dict[str, Any]], metric: str, best: float, partial: bool) -> str:
    """The report's answer; no answer when no λ ranked a single validation item within the cut-off."""
    if all(r[metric] == 0 for r in rows):
        return (f"**No choice:** no run ranked any validation item within the top {metric.split('@')[1]}, so "
                "these runs cannot tell the λ values apart (more users, a larger budget or longer training would).")
    return (f"**Best λ{' so far' if partial else ''}: {best:g}** by validation {metric.upper()} (mean over seeds). "
            f"Use it with `--set selection.lambda_={_lambda_label(best)}` or "
            f"`selection: {{lambda_: {_lambda_label(best)}}}` in the config.")


def _write_report(pipe: Pipeline, pool: Pool, runs: list[dict[str, Any]], lambdas: tuple[float, ...], budget: int,
                  seeds: tuple[int, ...], n_users: int, command: str) -> TuneResult:
    from deft.report.common import markdown_table
    from deft.report.tuning import plot_lambda_sweep

    cfg = pipe.cfg
    k = headline_k(cfg.evaluation.ks)
    metric = f"ndcg@{k}"
    rows = summarise_lambdas(runs, metric)
    best = best_lambda(rows, metric)
    root = pipe.run.root
    payload = {"command": command, "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine_info(),
               "metric": metric, "best_lambda": best, "budget": budget, "seeds": list(seeds),
               "lambdas": list(lambdas), "validation_users": n_users, "early_stopping_users": cfg.training.valid_samples,
               "pool_size": len(pool.samples), "summary": rows, "runs": runs, "config": to_dict(cfg)}
    json_path = root / "tune.json"
    write_json(json_path, payload)
    image = plot_lambda_sweep(rows, root / "tune_lambda.png", metric, best)
    metrics = [f"{m}@{kk}" for kk in cfg.evaluation.ks for m in ("recall", "ndcg")]
    table = markdown_table(
        ["λ", *metrics, "training s (mean)"],
        [[f"**{r['lambda']:g}**" if r["lambda"] == best else f"{r['lambda']:g}",
          *[f"{r[m]:.4f}" + (f" ± {r[m + '_std']:.4f}" if len(seeds) > 1 else "") for m in metrics],
          round(r["train_s"], 1)] for r in rows])
    machine = payload["machine"]
    md = [
        "# Choosing λ on validation",
        "",
        f"- command: `{command or 'deft tune'}`",
        f"- date: {payload['date']}",
        f"- machine: {machine.get('cpu')} ({machine.get('cores')} cores)",
        f"- dealrec at budget {budget} of {len(pool.samples)} samples, seeds {', '.join(map(str, seeds))}; "
        f"ranked: the validation items of {n_users} users (those of the users early stopping uses are left out; "
        "test items play no part)",
        *([f"- **partial: {len(runs)} of {len(lambdas) * len(seeds)} runs finished**; re-run the same command to "
           "resume"] if len(runs) < len(lambdas) * len(seeds) else []),
        "",
        choice_sentence(rows, metric, best, partial=len(runs) < len(lambdas) * len(seeds)),
        "",
        table,
        "",
        image,
        "",
        "A difference smaller than the spread over seeds (±) is not evidence for one λ over another; with one "
        "seed there is no spread to judge by.",
        "",
    ]
    md_path = root / "tune.md"
    write_text(md_path, "\n".join(md))
    return TuneResult(best, json_path, md_path, runs)
