"""The curation run as cached stages: samples -> surrogate -> scores -> selection -> coreset + report.

Every stage's fingerprint is derived from the fingerprints of its inputs and its own config section, so the
whole plan is known before any work starts: a run directory made with other settings is refused up front
(nothing in it is touched) unless ``overwrite``; a run with the same settings reuses every finished stage.
"""

from __future__ import annotations

import gzip
import logging
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from deft import selection as sel
from deft.artifacts import (
    RunDir,
    file_sha256,
    fingerprint,
    frame_fingerprint,
    json_line,
    read_parquet,
    read_user_parquet,
    with_code,
    write_jsonl,
    write_parquet,
)
from deft.config import SCORE_NAMES, DeftConfig, resolve_budget, to_dict
from deft.data.types import Split
from deft.errors import ConfigError, DeftError, OutputExistsError

log = logging.getLogger(__name__)

# which score columns each selection method reads
METHOD_SCORES: dict[str, tuple[str, ...]] = {
    "dealrec": ("influence", "effort"), "greedy": ("influence", "effort"), "influence_only": ("influence",),
    "effort_only": ("effort",), "ccs": ("el2n",), "grand": ("grand",), "el2n": ("el2n",), "random": (),
    "kcenter": (),
}
# each score's column in scores.parquet and the stage that makes it (GraNd and EL2N come from one stage)
SCORE_STAGE = {name: "baselines" if name in ("grand", "el2n") else name for name in SCORE_NAMES}


def method_scores(method: str, ccs_score: str = "el2n") -> tuple[str, ...]:
    """The score columns a selection method reads; ``ccs`` stratifies the configured ``selection.ccs_score``."""
    return (ccs_score,) if method == "ccs" else METHOD_SCORES.get(method, ())


def method_stages(method: str, names: list[str] | tuple[str, ...] | None = None, ccs_score: str = "el2n") -> list[str]:
    """The stages a method depends on: those making its scores (``names``, default the method's own), plus the
    trained surrogate when influence, loss or k-center embeddings need it (GraNd/EL2N train their own)."""
    stages = {SCORE_STAGE[n] for n in (method_scores(method, ccs_score) if names is None else names)}
    if stages & {"influence", "loss"} or method == "kcenter":
        stages.add("surrogate")
    return sorted(stages)


@dataclass
class Pool:
    """The candidate samples and what the surrogate needs to learn from (a split of user sequences)."""

    samples: pd.DataFrame
    split: Split
    fingerprint: str
    data_fingerprint: str
    titles: dict[str, str] = field(default_factory=dict)


@dataclass
class PruneResult:
    coresets: dict[int, Path]
    report: Path
    selections: dict[int, Any]
    scores: pd.DataFrame
    pool: Pool
    valid: Path | None = None  # valid.jsonl for `deft train --valid` (None for a pool given as a table)


# Effort is a property of a sample and the target model, not of a selection: the random LoRA A it is measured
# through is drawn from one fixed seed, so every selection seed shares one effort pass (as an experiment's arms
# do) and the effort stage's cache key, which has no seed, stays exact.
EFFORT_LORA_SEED = 0


class Pipeline:
    """One run directory and the stages that fill it; the LLM and the surrogate load lazily, once."""

    def __init__(self, cfg: DeftConfig, out: str | Path, *, overwrite: bool = False, progress: bool = True):
        self.cfg = cfg
        self.run = RunDir(out, overwrite=overwrite)
        self.progress = progress
        self._llm = None
        self._model_key: tuple[str, dict[str, Any]] | None = None
        self._tokenizer = None  # loaded without the model, see tokenizer()
        self._grounding: dict[str, dict[str, str]] = {}  # pool fingerprint -> grounding titles
        self._surrogate = None

    # ------------------------------------------------------------------------------------------- models

    def llm(self):
        if self._llm is None:
            from deft.models import load_target_llm

            self._llm = load_target_llm(self.cfg.model)
        return self._llm

    def model_key(self) -> tuple[str, dict[str, Any]]:
        """The target LLM's fingerprint and precision key for cache keys, from its files where they tell (the
        weights are loaded only when a stage must run)."""
        if self._llm is None and self._model_key is None:
            from deft.models import model_key

            self._model_key = model_key(self.cfg.model)
        if self._llm is not None or self._model_key is None:  # None: a hub id, whose commit only loading tells
            return self.llm().fingerprint, self.llm().numerics_key()
        return self._model_key

    def tokenizer(self):
        """The target LLM's tokenizer: the loaded model's, or loaded alone where that can be done, so that
        building prompts for cached stages does not load the weights."""
        if self._llm is not None:
            return self._llm.tokenizer
        if self._tokenizer is None:
            from deft.models import load_tokenizer

            self._tokenizer = load_tokenizer(self.cfg.model)
        return self._tokenizer if self._tokenizer is not None else self.llm().tokenizer

    def _needs_tokenizer(self) -> bool:
        return self.cfg.prompt.max_tokens is not None

    def validation_samples(self, pool: Pool) -> pd.DataFrame:
        """One held-out sample per user (the item after their training sequence), for early stopping."""
        from deft.data import valid_samples

        c = self.cfg
        tokenizer = self.tokenizer() if self._needs_tokenizer() else None
        return valid_samples(pool.split, pool.titles, c.samples, c.prompt, tokenizer=tokenizer)

    def grounding_titles(self, pool: Pool) -> dict[str, str]:
        """item -> the title generations are grounded to: as the samples show it (see data.grounding_titles)."""
        from deft.data import grounding_titles

        if pool.fingerprint not in self._grounding:  # every arm evaluates against them: tokenize the catalogue once
            tokenizer = self.tokenizer() if self._needs_tokenizer() else None
            self._grounding[pool.fingerprint] = grounding_titles(pool.titles, self.cfg.prompt, tokenizer)
        return self._grounding[pool.fingerprint]

    def early_stopping_samples(self, pool: Pool) -> pd.DataFrame:
        """The validation samples every fine-tuning run stops on: ``training.valid_samples`` of them, drawn once
        with a fixed seed, so every arm and every tuning run sees the same ones."""
        valid = self.validation_samples(pool)
        if len(valid) > self.cfg.training.valid_samples:
            valid = valid.sample(n=self.cfg.training.valid_samples, random_state=0).reset_index(drop=True)
        return valid

    # ------------------------------------------------------------------------------------------- fingerprints

    def samples_fp(self, data_fp: str) -> str:
        model = self.model_key()[0] if self._needs_tokenizer() else None
        return fingerprint({"data": data_fp, "data_cfg": _data_key(self.cfg.data), "samples": to_dict(self.cfg.samples),
                            "prompt": to_dict(self.cfg.prompt), "tokenizer": model})

    def stage_fp(self, stage: str, pool: Pool) -> str:
        """A stage's inputs (and its code version). The surrogate learns from the users' sequences alone, so
        prompt or model settings (which change the pool's texts) do not retrain it; the scores computed on the
        pool's samples do depend on the pool."""
        c = self.cfg
        if stage == "effort":
            model, numerics = self.model_key()
            return fingerprint(with_code({"pool": pool.fingerprint, "model": model, "lora": to_dict(c.lora),
                                          "effort": to_dict(c.effort), **numerics}, stage))
        from deft.surrogate.trainer import FIT, surrogate_fingerprint

        if stage == "baselines":  # GraNd and EL2N train their own early surrogates, with the same fit
            return fingerprint(with_code({"pool": pool.fingerprint, "surrogate": to_dict(c.surrogate), "fit": FIT,
                                          "baselines": to_dict(c.baselines)}, stage))
        surrogate = surrogate_fingerprint(pool.split, c.surrogate)
        influence = {k: v for k, v in to_dict(c.influence).items() if k != "strict"}  # decides errors, not scores
        parts: dict[str, Any] = {
            "surrogate": {"surrogate": surrogate},
            "influence": {"surrogate": surrogate, "pool": pool.fingerprint, "influence": influence},
            "loss": {"surrogate": surrogate, "pool": pool.fingerprint},
        }
        return fingerprint(with_code(parts[stage], stage))

    def selection_fp(self, pool: Pool, names: list[str], method: str, budget: int) -> str:
        """A coreset's inputs: the pool (random and k-center read no score), the stages it reads (the surrogate
        for k-center's embeddings), the settings ``method`` reads, its seed (not for top-m methods) and the
        budget. Adding a budget to a sweep or changing a setting the method ignores keeps the coreset."""
        c = self.cfg.selection
        return fingerprint(with_code({"pool": pool.fingerprint,
                                      "scores": {s: self.stage_fp(s, pool) for s in method_stages(method, names)},
                                      "method": method,
                                      "settings": {n: getattr(c, n) for n in sel.settings_used(method)},
                                      "seed": None if method in sel.TOP_METHODS else c.seed, "budget": budget},
                                     "selection"))

    def check_plan(self, pool: Pool, names: list[str], method: str, budgets: list[int]) -> None:
        """Refuse, before any work, unknown scores, scores this pool cannot have, and a run directory whose
        finished stages were made with other settings."""
        check_score_names(names)
        needs_users = set(method_stages(method, names)) & {"surrogate", "influence", "loss", "baselines"}
        if needs_users and pool.split.kind == "none":
            # random reads no score: scores it is asked for come from `deft score --scores`
            what, advice = ((f"scores {', '.join(names)}", "compute --scores effort only") if method == "random"
                            else (method, "use method 'effort_only' or 'random'"))
            raise DeftError(f"{', '.join(sorted(needs_users))} (for {what}) need samples with columns user, history, "
                            "target_item: they score each sample with a sequential recommender trained on the users' "
                            f"sequences; for plain instruction data {advice}")
        _check_budgets_fit(pool, method, budgets, self.cfg.selection.hard_prune)
        for stage in method_stages(method, names):
            self.run.check_compatible(stage, self.stage_fp(stage, pool))
        for budget in budgets:
            self.run.check_compatible(f"selection-{budget}", self.selection_fp(pool, names, method, budget))
        self._warn_long_effort(pool, method, names)

    def _warn_long_effort(self, pool: Pool, method: str, names: list[str]) -> None:
        """Say before it starts that the effort pass will take hours (its own progress bar comes only after the
        surrogate and influence stages)."""
        n = len(pool.samples)
        if "effort" not in method_stages(method, names) or n <= LARGE_CPU_POOL:
            return
        from deft.models import resolve_device

        if resolve_device(self.cfg.model.device).type != "cpu":
            return
        if self.run.is_done("effort", self.stage_fp("effort", pool)):
            return
        log.warning("the effort pass runs the target LLM forward and backward on each of the %s pool samples: on "
                    "this CPU that takes hours (SmolLM2-135M on 2 cores: ~0.7 s a sample, so ~%.0f h). It resumes "
                    "if interrupted; for a smaller pool use --construction last_per_user or --stride N (in a config, "
                    "samples.construction or samples.stride)",
                    f"{n:,}", n * 0.7 / 3600)

    # ------------------------------------------------------------------------------------------- stages

    def pool_from_source(self) -> Pool:
        from deft.data import build_samples, load_interactions, split_interactions

        inter = load_interactions(self.cfg.data)
        split = split_interactions(inter, self.cfg.data)
        fp = self.samples_fp(inter.fingerprint)
        path = self.run.path("samples.parquet")
        if self.run.is_done("samples", fp, path):
            samples = read_parquet(path)
        else:
            with self.run.stage("samples", fp, count=None):
                tokenizer = self.tokenizer() if self._needs_tokenizer() else None
                samples = build_samples(split, inter.titles, self.cfg.samples, self.cfg.prompt, tokenizer=tokenizer)
                write_parquet(path, samples)
        return Pool(samples, split, fp, inter.fingerprint, inter.titles)

    def pool_from_frame(self, samples: pd.DataFrame) -> Pool:
        """A pool given as a table of samples; user sequences for the surrogate are rebuilt from the windows."""
        _check_sample_columns(samples)
        _warn_repeats(samples)
        fp = fingerprint({"samples": frame_fingerprint(samples), "prompt": to_dict(self.cfg.prompt)})
        if not self.run.is_done("samples", fp, self.run.path("samples.parquet")):
            with self.run.stage("samples", fp):
                _write_samples(self.run.path("samples.parquet"), samples)
        return Pool(samples, split_from_samples(samples), fp, fp)

    def surrogate(self, pool: Pool):
        """Train (or reload) the SASRec surrogate: returns (model, item_index, report as a dict)."""
        if self._surrogate is None:
            from deft.surrogate import load_surrogate, train_surrogate

            if pool.split.kind == "none":
                raise DeftError("surrogate-based scores (influence, grand, el2n, kcenter) need samples with columns "
                                "user, history, target_item; for plain instruction data use method "
                                "'effort_only' or 'random'")

            fp = self.stage_fp("surrogate", pool)
            directory = self.run.path("surrogate")
            if self.run.is_done("surrogate", fp, directory):
                model, index, meta = load_surrogate(directory)
                self._surrogate = (model, index, meta.get("report", {}))
            else:
                with self.run.stage("surrogate", fp):
                    model, index, report = train_surrogate(pool.split, self.cfg.surrogate, out_dir=directory,
                                                           progress=self.progress)
                self._surrogate = (model, index, report.to_dict())
        return self._surrogate

    def score(self, pool: Pool, names: list[str]) -> pd.DataFrame:
        """Compute (or reuse) each named score; returns sample_id + one column per score, in pool order."""
        unknown = sorted(set(names) - set(SCORE_STAGE))
        if unknown:
            raise DeftError(f"unknown score {unknown}; known: {sorted(SCORE_STAGE)}")
        frames = [pool.samples[["sample_id"]].reset_index(drop=True)]
        for stage in dict.fromkeys(SCORE_STAGE[n] for n in names):
            frames.append(self._score_stage(stage, pool).drop(columns="sample_id"))
        scores = pd.concat(frames, axis=1)
        # Earlier columns stay only if their stage scored this very pool: a pool rebuilt with other settings can
        # keep its sample ids (user:position), and an old column would then sit beside new ones unnoticed.
        # (Records written before stages noted their pool are taken at their word.)
        done = {c for c in SCORE_STAGE if (meta := self.run.stage_meta(SCORE_STAGE[c]) or {}).get("done")
                and meta.get("pool", pool.fingerprint) == pool.fingerprint}
        merged = _merge_scores(self.run.path("scores.parquet"), scores, keep=done)
        if merged is not None:
            write_parquet(self.run.path("scores.parquet"), merged)
        return scores

    def _score_stage(self, stage: str, pool: Pool) -> pd.DataFrame:
        fp = self.stage_fp(stage, pool)
        path = self.run.path("scores", f"{stage}.parquet")
        if self.run.is_done(stage, fp, path):
            self._check_cached_solve(stage)
            return read_parquet(path)
        if stage in ("influence", "loss"):
            self.surrogate(pool)  # its own stage: not timed inside this one, or the ledger counts it twice
        with self.run.stage(stage, fp, pool=pool.fingerprint) as cost:
            frame, info = self._compute(stage, pool)
            cost.extra.update(info)
            if list(frame["sample_id"]) != list(pool.samples["sample_id"]):
                raise DeftError(f"stage '{stage}' returned scores out of pool order (internal error)")
            write_parquet(path, frame)
        return frame

    def _check_cached_solve(self, stage: str) -> None:
        """Influence cached by a non-strict run whose solve failed is refused by a strict one (``strict`` is not
        in the stage's fingerprint, since a successful solve is the same either way)."""
        if stage != "influence" or not self.cfg.influence.strict:
            return
        from deft.scores.influence import solve_failure

        why = solve_failure(self.run.stage_meta(stage) or {})
        if why:
            raise ConfigError([f"the cached influence scores in {self.run.root} are unusable: {why}; they were kept "
                               "by `influence.strict: false`. Recompute with other solver settings (--overwrite) "
                               "or set `influence.strict: false` to use them anyway"])

    def _compute(self, stage: str, pool: Pool) -> tuple[pd.DataFrame, dict[str, Any]]:
        ids = pool.samples["sample_id"].to_numpy()
        if stage == "influence":
            from deft.scores.influence import score_pool, validation_pairs

            model, index, _ = self.surrogate(pool)
            valid = validation_pairs(pool.split) if self.cfg.influence.target == "valid" else None
            result = score_pool(model, index, pool.samples, self.cfg.influence, valid=valid, progress=self.progress)
            return pd.DataFrame({"sample_id": ids, "influence": result.scores}), _jsonable(result.info)
        if stage == "loss":
            from deft.scores.influence import pool_losses

            model, index, _ = self.surrogate(pool)
            return pd.DataFrame({"sample_id": ids, "loss": pool_losses(model, index, pool.samples)}), {}
        if stage == "baselines":
            from deft.scores.baselines import baseline_scores

            frame = baseline_scores(pool.split, pool.samples, self.cfg.surrogate, self.cfg.baselines,
                                    which=("grand", "el2n"), progress=self.progress)
            return frame, {}
        if stage == "effort":
            from deft.scores.effort import compute_effort

            frame = compute_effort(self.llm(), pool.samples, self.cfg.lora, self.cfg.effort,
                                   out_dir=self.run.path("effort"), seed=EFFORT_LORA_SEED,
                                   progress=self.progress, overwrite=self.run.overwrite)
            resumed = frame.attrs.get("resumed", {})
            info = {"resumed_shards": resumed.get("shards", 0), "earlier_wall_s": resumed.get("earlier_wall_s", 0.0)}
            if resumed.get("untimed_shards_samples"):
                info["estimated_samples"] = resumed["untimed_shards_samples"]  # shards saved without a timing
            return frame, info
        raise DeftError(f"unknown score stage {stage!r}")

    # ------------------------------------------------------------------------------------------- selection

    def select(self, pool: Pool, scores: pd.DataFrame, method: str | None = None,
               budgets: list[int | str] | None = None, seed: int | None = None,
               lambda_: float | None = None) -> dict[int, Any]:
        """Coresets of ``method`` at each budget; ``seed`` and ``lambda_`` replace the configured ones."""
        c = self.cfg.selection
        method = method or c.method
        n = len(pool.samples)
        resolved = [resolve_budget(b, n) for b in (budgets or c.budgets)]
        columns = {k: scores[k].to_numpy(np.float64) for k in scores.columns if k != "sample_id"}
        _check_finite(scores, columns)
        embeddings = self.sample_embeddings(pool) if method == "kcenter" else None
        lambda_ = c.lambda_ if lambda_ is None else lambda_
        return {b: sel.select(method, columns, b, strata=c.strata, hard_prune=c.hard_prune, lambda_=lambda_,
                              normalization=c.normalization, seed=c.seed if seed is None else seed,
                              embeddings=embeddings, ccs_score=c.ccs_score, pool_size=n)
                for b in resolved}

    def sample_embeddings(self, pool: Pool) -> np.ndarray:
        """The surrogate's representation of each sample's history (for k-center coverage)."""
        import torch

        from deft.surrogate import pad_left

        model, index, _ = self.surrogate(pool)
        model.eval()
        histories = [index.encode(h) for h in pool.samples["history"]]
        chunks = []
        with torch.no_grad():
            for start in range(0, len(histories), 4096):
                seqs = pad_left(histories[start:start + 4096], model.max_len)
                chunks.append(model(seqs, last_only=True).double().numpy())
        return np.concatenate(chunks)


# ----------------------------------------------------------------------------------------------- helpers


LARGE_CPU_POOL = 20_000  # samples: above this, an effort pass on a CPU is announced with its rough duration


def check_score_names(names: list[str]) -> None:
    unknown = sorted(set(names) - set(SCORE_STAGE))
    if unknown:
        raise DeftError(f"unknown score {unknown}; known: {sorted(SCORE_STAGE)}", field="scores")


def _check_budgets_fit(pool: Pool, method: str, budgets: list[int], hard_prune: float) -> None:
    """Refused before hours of scoring: a budget larger than the pool, or than what the hard prune leaves the
    coverage methods."""
    n = len(pool.samples)
    pruned = n - sel.capacity(method, n, hard_prune)
    why = f"the pool of {n}" + (f" minus the {pruned} that hard_prune={hard_prune:g} drops first" if pruned else "")
    hint = "; hard_prune 0 (--hard-prune 0) selects from the whole pool" if pruned else ""
    problems = [f"budget {b} exceeds the {n - pruned} samples {method} can take: {why}{hint if b <= n else ''}"
                for b in budgets if b > n - pruned]
    if problems:
        raise ConfigError(problems)


def _data_key(cfg: Any) -> dict[str, Any]:
    """The data settings in the pool's key. Where the files are is not: ``data_fp`` hashes their contents and
    the resolved format, so moving the data, or spelling its path another way, keeps every cached stage. A
    built-in dataset's name stays (it is what keys made before this change hold)."""
    from deft.data.loaders import BUILTIN

    key = to_dict(cfg)
    if cfg.source not in BUILTIN:
        for name in ("source", "items", "format"):
            key.pop(name)
    return key


def _warn_repeats(samples: pd.DataFrame) -> None:
    """Identical samples are scored alike and may all be chosen, spending the budget twice on one sample."""
    repeated = samples.duplicated(subset=["instruction", "input", "output"]).to_numpy()
    if repeated.any():
        row = int(np.flatnonzero(repeated)[0])
        first = samples.iloc[:row][["instruction", "input", "output"]].eq(
            samples.iloc[row][["instruction", "input", "output"]]).all(axis=1).to_numpy().argmax()
        log.warning("%d samples repeat an earlier sample's instruction, input and output (sample_id %r repeats %r); "
                    "each copy can be chosen: drop the duplicates first to spend the budget on distinct samples",
                    int(repeated.sum()), samples["sample_id"].iloc[row], samples["sample_id"].iloc[first])


def with_input(frame: pd.DataFrame) -> pd.DataFrame:
    """Samples without an ``input`` column (many instruction sets have none) get an empty one, as if every row
    had given ``"input": ""`` (the prompt's input section is then empty)."""
    if "input" in frame.columns:
        return frame
    other = next((c for c in frame.columns if str(c).lower() == "input"), None)
    if other is not None:  # its text would silently never reach the prompt
        raise DeftError(f"no column 'input', but {other!r}: rename it to 'input' (column names are case-sensitive)",
                        field="input")
    added = frame.assign(input="")
    added.attrs["deft_added_input"] = True  # the coreset gives the rows back without it
    return added


def _column_hint(frame: pd.DataFrame, missing: list[str]) -> str:
    """What to rename: a column that differs only in case, or the usual names of other instruction sets."""
    if not missing:
        return ""
    by_lower = {str(c).lower(): c for c in frame.columns}
    close = {m: by_lower[m] for m in missing if m in by_lower}
    if close:
        return "; rename " + ", ".join(f"{v!r} to {k!r}" for k, v in close.items())
    return ("; DEFT reads instruction, input (optional) and output: rename the prompt and response columns to "
            "instruction and output first (e.g. Dataset.rename_columns, DataFrame.rename, or jq)")


def _check_sample_columns(samples: pd.DataFrame) -> None:
    needed = ("sample_id", "instruction", "input", "output")
    missing = [c for c in needed if c not in samples.columns]
    if missing:
        raise DeftError(f"samples lack column(s) {missing}; found {list(samples.columns)}"
                        f"{_column_hint(samples, [m for m in missing if m != 'sample_id'])}", field=missing[0])
    _check_sample_fields(samples, None, None)


def check_prunable(frame: pd.DataFrame, path: str | Path | None = None) -> None:
    """A coreset row is the input row plus ``stratum``: an input column of that name would be overwritten."""
    if "stratum" in frame.columns:
        raise DeftError("the samples already have a column 'stratum' (a coreset of an earlier prune?); DEFT adds "
                        "each chosen row's stratum under that name: rename or drop the column", file=path,
                        field="stratum")


def check_writable(samples: pd.DataFrame, path: str | Path | None = None) -> None:
    """Every row can go into the coreset's JSON lines as it is: a value JSON cannot hold (infinity, bytes, a
    Decimal) is found now, not when the coreset is written after hours of scoring."""
    for row, record in enumerate(sample_records(samples)):
        try:
            json_line(record)
        except (TypeError, ValueError) as exc:
            name = next(k for k in record if not _json_ok(record[k]))
            value = record[name]
            raise DeftError(f"sample {record.get('sample_id')!r} (row {row}): {type(value).__name__} value "
                            f"{value!r} cannot be written to the coreset's JSON lines ({exc}); convert the "
                            "column to text, a finite number or null", file=path, field=name) from exc


def _json_ok(value: Any) -> bool:
    try:
        json_line({"v": value})
    except (TypeError, ValueError):
        return False
    return True


def _write_samples(path: Path, samples: pd.DataFrame) -> None:
    import pyarrow as pa

    try:
        write_parquet(path, samples)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        for name in samples.columns:  # which column: Arrow's message does not always say
            try:
                pa.array(samples[name], from_pandas=True)
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as col_exc:
                kinds = sorted({type(v).__name__ for v in samples[name] if v is not None})
                raise DeftError(f"column {name!r} cannot be stored ({col_exc}); its values are of types {kinds}: "
                                "give every row the same type", field=name) from exc
        raise DeftError(f"the samples cannot be stored as Parquet: {exc}") from exc


def split_from_samples(samples: pd.DataFrame) -> Split:
    """Rebuild each user's sequence from their (history, target) windows; the last item validates.

    DEFT's sample ids (``"{user}:{position}"``, the target's index in the sequence) place every window where it
    belongs, so the table may come in any order and repeated items stay repeated. Windows with other ids are
    merged in table order by their longest overlap with the sequence built so far: sliding windows with any
    stride or a single last-per-user sample give the user's full sequence, provided each user's rows are in
    chronological order.
    """
    if not {"user", "history", "target_item"} <= set(samples.columns):
        return Split({}, {}, {}, kind="none")
    train: dict[str, list[str]] = {}
    valid: dict[str, list[str]] = {}
    repeating = []
    for user, group in samples.groupby("user", sort=False):
        windows = [([str(x) for x in list(h)], str(t)) for h, t in zip(group["history"], group["target_item"],
                                                                        strict=True)]
        positions = _positions(str(user), group["sample_id"]) if "sample_id" in group.columns else None
        if positions is None:
            seq: list[str] = []
            for history, target in windows:
                window = [*history, target]
                seq.extend(window[_overlap(seq, window):])
            if len(set(seq)) < len(seq):
                repeating.append(str(user))
        else:
            seq = _placed(str(user), windows, positions, group["sample_id"].tolist())
        train[str(user)], valid[str(user)] = seq[:-1], seq[-1:]
    if repeating:
        log.warning("the sequences rebuilt for %d user(s) repeat an item (first: user %s). Unless the data repeats "
                    "interactions, a user's rows are out of chronological order: sort them, or give sample ids "
                    "'user:position' as DEFT writes them", len(repeating), repeating[0])
    return Split(train, valid, {u: [] for u in train}, kind="from_samples")


def _positions(user: str, ids: pd.Series) -> list[int] | None:
    """Each window's target position from ids ``"{user}:{position}"``; None unless every id has that form."""
    prefix = f"{user}:"
    out = []
    for sid in ids.astype(str):
        tail = sid[len(prefix):] if sid.startswith(prefix) else ""
        if not tail.isdigit():
            return None
        out.append(int(tail))
    return out


def _placed(user: str, windows: list[tuple[list[str], str]], positions: list[int], ids: list[str]) -> list[str]:
    """The sequence the windows spell when each target sits at its position and its history just before it;
    positions no window covers (a stride wider than the history) are left out."""
    at: dict[int, tuple[str, str]] = {}  # position -> (item, id of the first sample placing it)
    for (history, target), pos, sid in zip(windows, positions, ids, strict=True):
        for offset, item in enumerate([*history, target], start=pos - len(history)):
            if offset < 0:
                raise DeftError(f"user {user}: sample {sid!r} has {len(history)} history items before position {pos}",
                                field="history")
            placed = at.setdefault(offset, (item, sid))
            if placed[0] != item:
                raise DeftError(f"user {user}: samples {placed[1]!r} and {sid!r} disagree on the item at position "
                                f"{offset} ({placed[0]!r} vs {item!r})", field="history")
    return [at[p][0] for p in sorted(at)]


def _overlap(seq: list[str], window: list[str]) -> int:
    for k in range(min(len(seq), len(window)), 0, -1):
        if seq[-k:] == window[:k]:
            return k
    return 0


def _merge_scores(path: Path, new: pd.DataFrame, keep: set[str]) -> pd.DataFrame | None:
    """scores.parquet keeps every score this run directory holds: the new columns, and earlier ones in ``keep``
    (those whose stage is done here, so not a column left behind by a stage since invalidated); None when
    nothing changed."""
    if not path.is_file():
        return new
    old = read_parquet(path)
    if list(old["sample_id"]) != list(new["sample_id"]):
        return new
    keep = [c for c in old.columns if c not in new.columns and c in keep]
    merged = pd.concat([new, old[keep]], axis=1)
    same = set(merged.columns) == set(old.columns) and merged[old.columns].equals(old)
    return None if same else merged


def _jsonable(info: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in info.items():
        if isinstance(v, (int, float, str, bool)) or v is None:
            out[k] = v
        elif isinstance(v, np.generic):
            out[k] = v.item()
    return out


def coreset_records(samples: pd.DataFrame, selection: Any) -> list[dict[str, Any]]:
    """The chosen rows with every field unchanged, plus their stratum."""
    chosen = samples.iloc[selection.indices]
    if samples.attrs.get("deft_added_input"):
        chosen = chosen.drop(columns="input")
    records = sample_records(chosen)
    for row, stratum in zip(records, selection.strata, strict=True):
        row["stratum"] = int(stratum)
    return records


def sample_records(samples: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as JSON-ready dicts: array fields such as the history as lists, a missing value (NaN, NaT, None,
    or a key some records of a JSONL file lacked) as null."""
    return [{k: _json_value(v) for k, v in row.items()} for row in samples.to_dict(orient="records")]


def _json_value(value: Any) -> Any:
    if isinstance(value, (np.ndarray, list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    return None if pd.api.types.is_scalar(value) and pd.isna(value) else value


def write_validation(pipe: Pipeline, pool: Pool) -> Path | None:
    """``valid.jsonl``: one held-out sample per user (the item after their training sequence, never a pool
    target), for ``deft train --valid``: without it training cannot stop early. None for a pool given as a
    table, which has no per-user validation items."""
    if not pool.titles:
        _drop_stale_validation(pipe)
        return None
    path, fp = pipe.run.path("valid.jsonl"), fingerprint({"pool": pool.fingerprint})
    if not pipe.run.is_done("valid", fp):
        with pipe.run.stage("valid", fp):
            write_jsonl(path, sample_records(pipe.validation_samples(pool)))
    return path


def _drop_stale_validation(pipe: Pipeline) -> None:
    """An earlier run's valid.jsonl, from a data source, beside a coreset of a table of samples (which has none):
    only --overwrite gets this far over another pool, and it removes what belonged to that pool."""
    path = pipe.run.path("valid.jsonl")
    if pipe.run.overwrite and pipe.run.stage_meta("valid") is not None:
        path.unlink(missing_ok=True)
        pipe.run.forget("valid")
        log.info("removed %s, an earlier run's validation samples of another pool", path)


def coreset_path(run: RunDir, budget: int, n_budgets: int) -> Path:
    return run.path("coreset.jsonl" if n_budgets == 1 else f"coreset-{budget}.jsonl")


def _row_error(what: str, row: int, field: str, path: Path | None, lines: list[int] | None) -> DeftError:
    """An error at 0-based ``row`` of a table: in memory its position, in a Parquet file its 1-based row, in a
    JSONL file its line."""
    if path is None:
        return DeftError(f"row {row} (0-based): {what}", field=field)
    if lines is None:
        return DeftError(f"row {row + 1}: {what}", file=path, field=field)
    return DeftError(what, file=path, line=lines[row], field=field)


def _check_sample_fields(frame: pd.DataFrame, path: Path | None, lines: list[int] | None) -> None:
    """Every row has string instruction/input/output and a non-empty output (a missing field would otherwise
    train on the text "nan" or "None"), and ids that are present and unique; a recommendation table's user and
    target are present too (a null user would drop out of the surrogate's sequences, a null target become the
    item "nan")."""
    for name in ("instruction", "input", "output"):
        values = frame[name].tolist()
        bad = next((i for i, v in enumerate(values) if not isinstance(v, str) or (name == "output" and not v.strip())),
                   None)
        if bad is None:
            continue
        value = values[bad]
        if isinstance(value, str):
            what = "is empty"
        elif pd.api.types.is_scalar(value) and pd.isna(value):  # JSON null or a key this record lacks
            what = "is missing (null" + (", or no such key in this record)" if lines is not None else ")")
        else:
            what = f"is not a string but {type(value).__name__} {value!r:.60}"
        raise _row_error(what, bad, name, path, lines)
    for name in ("sample_id", "user", "target_item"):
        if name in frame.columns and frame[name].isna().any():
            raise _row_error("is missing", int(np.flatnonzero(frame[name].isna().to_numpy())[0]), name, path, lines)
    if {"user", "history", "target_item"} <= set(frame.columns):  # what rebuilds the surrogate's sequences
        # a history read back from CSV is the text "['1', '2']": iterated, it would be items '[', "'", '1', ...
        histories = frame["history"].tolist()
        bad = next((i for i, h in enumerate(histories) if not isinstance(h, (list, tuple, np.ndarray))), None)
        if bad is not None:
            raise _row_error(f"must be a list of item ids, got {type(histories[bad]).__name__} {histories[bad]!r:.60}",
                             bad, "history", path, lines)
    if "sample_id" in frame.columns:
        ids = frame["sample_id"]
        dup = ids.duplicated().to_numpy()
        if dup.any():
            row = int(np.flatnonzero(dup)[0])
            earlier = int(np.flatnonzero((ids == ids.iloc[row]).to_numpy())[0])
            where = f"row {earlier} (0-based)" if path is None else (
                f"row {earlier + 1}" if lines is None else f"line {lines[earlier]}")
            raise _row_error(f"{ids.iloc[row]!r} repeats the id of {where}", row, "sample_id", path, lines)


def _read_samples_jsonl(path: Path) -> tuple[pd.DataFrame, list[int]]:
    """The records and the file line of each (blank lines are skipped, not counted as records)."""
    try:
        return _read_lines(path)
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DeftError(f"not a readable gzip file ({exc or type(exc).__name__})", file=path) from exc


def _read_lines(path: Path) -> tuple[pd.DataFrame, list[int]]:
    import json

    rows, lines = [], []
    with (gzip.open if path.name.lower().endswith(".gz") else open)(path, "rb") as fh:
        for line_no, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")  # a BOM may open the file
            except UnicodeDecodeError as exc:
                raise DeftError(f"not UTF-8 text (byte {raw[exc.start]:#04x} at column {exc.start + 1})",
                                file=path, line=line_no) from exc
            if not line.strip():
                continue
            if not rows and line.lstrip().startswith("["):  # the Alpaca layout: one JSON array
                raise DeftError("holds a JSON array; samples files are JSON lines, one object per line (convert "
                                f"with: jq -c '.[]' {path.name} > {path.stem}.jsonl)", file=path, line=line_no)
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DeftError(f"not valid JSON: {exc.msg}", file=path, line=line_no) from exc
            if not isinstance(rows[-1], dict):
                raise DeftError("not a JSON object", file=path, line=line_no)
            lines.append(line_no)
    frame = pd.DataFrame(rows)
    for name in frame.columns:
        # pandas stores whole numbers with gaps (a key some records lack, or null) as floats: 5 would come back
        # as 5.0 in the coreset, and an integer beyond 2**53 rounded. Such a column keeps the values as read.
        if frame[name].dtype.kind == "f":
            raw = [row.get(name) for row in rows]
            if all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in raw):
                frame[name] = pd.Series(raw, dtype=object)
    return frame, lines


def load_samples_file(path: str | Path) -> pd.DataFrame:
    """Samples from JSONL or Parquet (a coreset file, a samples.parquet, any instruction dataset)."""
    path = Path(path)
    if not path.is_file():
        raise DeftError("samples file not found", file=path)
    name = path.name.lower()
    if not name.endswith((".parquet", ".jsonl", ".json", ".jsonl.gz", ".json.gz")):
        raise DeftError(f"unsupported samples file type {''.join(path.suffixes[-2:]) or '(none)'!r}: use JSON lines "
                        "(.jsonl, or .jsonl.gz) or Parquet (.parquet) with columns instruction, input (optional), "
                        "output", file=path)
    if name.endswith(".parquet"):
        frame = read_user_parquet(path)
        lines = None
    else:
        frame, lines = _read_samples_jsonl(path)
    if frame.empty and not len(frame.columns):
        raise DeftError("the file holds no samples", file=path)
    frame = with_input(frame)
    missing = [c for c in ("instruction", "output") if c not in frame.columns]
    if missing:
        raise DeftError(f"missing column(s) {missing}; found {list(frame.columns)}{_column_hint(frame, missing)}",
                        file=path, field=missing[0])
    _check_sample_fields(frame, path, lines)
    if "sample_id" not in frame.columns:
        frame.insert(0, "sample_id", [str(i) for i in range(len(frame))])
    return frame


# ----------------------------------------------------------------------------------------------- entry points


def run_scores(cfg: DeftConfig, out: str | Path, names: list[str], *, overwrite: bool = False,
               progress: bool = True, samples: pd.DataFrame | None = None,
               samples_file: str | Path | None = None) -> Path:
    """Scores of the pool built from ``cfg.data`` (or of ``samples``, a table of samples read from
    ``samples_file`` if given) into scores.parquet."""
    check_score_names(names)  # before the pool is built: a typo should not cost a pass over the data
    pipe = Pipeline(cfg, out, overwrite=overwrite, progress=progress)
    pool = pipe.pool_from_source() if samples is None else pipe.pool_from_frame(samples)
    pipe.check_plan(pool, names, "random", [])
    pipe.score(pool, names)
    pipe.run.write_manifest(config=to_dict(cfg), input=input_record(cfg, samples, samples_file),
                            data_fingerprint=pool.data_fingerprint, counts={"pool": len(pool.samples)})
    return pipe.run.path("scores.parquet")


def run_prune(cfg: DeftConfig, out: str | Path, *, overwrite: bool = False, progress: bool = True,
              samples: pd.DataFrame | None = None, samples_file: str | Path | None = None) -> PruneResult:
    """The whole curation run; see the module docstring for caching and --overwrite. ``samples_file``, where
    ``samples`` were read from, is named in their errors."""
    if samples is not None:
        check_prunable(samples, samples_file)
        check_writable(samples, samples_file)
    pipe = Pipeline(cfg, out, overwrite=overwrite, progress=progress)
    pool = pipe.pool_from_source() if samples is None else pipe.pool_from_frame(samples)
    method = cfg.selection.method
    names = list(method_scores(method, cfg.selection.ccs_score))
    budgets = [resolve_budget(b, len(pool.samples)) for b in cfg.selection.budgets]
    if len(set(budgets)) != len(budgets):  # they would share one coreset file and one selection stage
        raise ConfigError([f"budgets {list(cfg.selection.budgets)!r} give the sample counts {budgets} for a pool "
                           f"of {len(pool.samples)}: one count twice"])
    pipe.check_plan(pool, names, method, budgets)
    scores = pipe.score(pool, names)
    selections = pipe.select(pool, scores, method, budgets)
    coresets = {}
    for budget, selection in selections.items():
        path = coreset_path(pipe.run, budget, len(selections))
        fp = pipe.selection_fp(pool, names, method, budget)
        stage = f"selection-{budget}"
        # The file name depends on how many budgets the sweep has, so a finished stage may lack this file, and a
        # run with another single budget writes the same coreset.jsonl: its recorded hash tells whose it is.
        if not (pipe.run.is_done(stage, fp) and pipe.run.owns(stage, path)):
            _guard_coreset(pipe.run, path, stage, fp)
            with pipe.run.stage(stage, fp) as cost:
                write_jsonl(path, coreset_records(pool.samples, selection))
                cost.extra["sha256"] = file_sha256(path)
        coresets[budget] = path
    _drop_stale_coresets(pipe, pool, names, method, coresets)
    valid = write_validation(pipe, pool)
    from deft.report import write_prune_report

    manifest = pipe.run.write_manifest(
        config=to_dict(cfg), input=input_record(cfg, samples, samples_file),
        seeds={"selection": cfg.selection.seed, "surrogate": cfg.surrogate.seed},
        data_fingerprint=pool.data_fingerprint, samples_fingerprint=pool.fingerprint,
        counts={"pool": len(pool.samples),
                "coreset": {str(b): int(len(s.indices)) for b, s in selections.items()},
                "per_stratum": {str(b): _stratum_counts(s) for b, s in selections.items()},
                "topped_up": {str(b): s.params.get("topped_up", 0) for b, s in selections.items()}},
        coresets={str(b): p.name for b, p in coresets.items()},
    )
    surrogate_report = pipe.surrogate(pool)[2] if pipe._surrogate is not None else None
    report = write_prune_report(pipe.run.root, pool.samples, scores, selections, manifest, surrogate_report)
    return PruneResult(coresets, report, selections, scores, pool, valid)


def input_record(cfg: DeftConfig, samples: pd.DataFrame | None, samples_file: str | Path | None) -> dict[str, Any]:
    """Where the pool came from, for the manifest and the report: a table's file (with its hash) or the data
    source. A table's run leaves ``data`` and ``samples`` settings at their defaults, which name no input."""
    if samples is None:
        return {"source": cfg.data.source}
    if samples_file is None:
        return {"samples": "a table given in Python", "rows": len(samples)}
    return {"samples_file": str(samples_file), "sha256": file_sha256(samples_file), "rows": len(samples)}


def _guard_coreset(run: RunDir, path: Path, stage: str, fp: str) -> None:
    """Refuse to replace a coreset file unless overwriting; say whose it is when a stage of this run wrote it.
    A file no stage owns is this stage's own when a run killed before recording it left this stage pending
    with these settings."""
    if not path.exists() or run.overwrite:
        return
    owner = next((p.stem for p in sorted(run.path("stages").glob("selection-*.json")) if run.owns(p.stem, path)), None)
    pending = run.stage_meta(stage) or {}
    if owner is None and not pending.get("done") and pending.get("fingerprint") == fp:
        return
    if owner is None:
        run.guard_output(path)
    raise OutputExistsError(f"{path} holds the coreset of budget {owner.removeprefix('selection-')} from an "
                            "earlier run; use --overwrite to replace it (finished scores are kept and reused) or "
                            "choose another --out", file=path)


def _drop_stale_coresets(pipe: Pipeline, pool: Pool, names: list[str], method: str, coresets: dict[int, Path]) -> None:
    """Coreset files that earlier runs left here with other data or settings: removed with --overwrite (with
    their stage records), named in a warning otherwise. Left as they were, they sit beside this run's coresets
    looking just as current. A file stays if a selection stage whose settings match the present ones wrote
    it (a sweep's other budget, or the same coreset under its other name)."""
    run = pipe.run
    current, stale_records = set(coresets.values()), []
    for record in sorted(run.path("stages").glob("selection-*.json")):
        budget = record.stem.removeprefix("selection-")
        if not budget.isdigit():
            continue
        if (run.stage_meta(record.stem) or {}).get("fingerprint") != pipe.selection_fp(pool, names, method, int(budget)):
            stale_records.append(record)
            continue
        current |= {f for f in (run.path("coreset.jsonl"), run.path(f"coreset-{budget}.jsonl"))
                    if run.owns(record.stem, f)}
    files = [f for f in [run.path("coreset.jsonl"), *sorted(run.root.glob("coreset-*.jsonl"))]
             if f.is_file() and f not in current and re.fullmatch(r"coreset(-\d+)?\.jsonl", f.name)]
    if not run.overwrite:
        if files:
            log.warning("%s: coreset(s) of an earlier run with other data or settings (this run's are listed in "
                        "manifest.json); --overwrite removes them", ", ".join(map(str, files)))
        return
    for f in files:
        f.unlink()
        log.info("removed %s, a coreset of an earlier run with other data or settings", f)
    for record in stale_records:
        run.forget(record.stem)


def _stratum_counts(selection: Any) -> list[dict[str, int]]:
    """Per stratum: samples in the pool (after the hard prune) and chosen; strata with neither are left out."""
    return [{"stratum": k, "pool": int(p), "chosen": int(c)}
            for k, (p, c) in enumerate(np.asarray(selection.stratum_counts)) if p or c]


def run_train(cfg: DeftConfig, samples_path: str | Path, valid_path: str | Path | None, out: str | Path, *,
              overwrite: bool = False, progress: bool = True):
    from deft.models import load_target_llm
    from deft.training import train_lora

    train = load_samples_file(samples_path)
    valid = load_samples_file(valid_path) if valid_path else None
    if valid is None:
        log.warning("no validation samples: no early stopping, so training runs all %d epochs and keeps the last "
                    "adapter (--valid takes a file of held-out samples; deft prune on a data source writes one, "
                    "OUT/valid.jsonl)", cfg.training.epochs)
    loaded = load_target_llm(cfg.model)
    return train_lora(loaded, train, valid, cfg.lora, cfg.training, Path(out), progress=progress,
                      overwrite=overwrite)


def _check_finite(scores: pd.DataFrame, columns: dict[str, np.ndarray]) -> None:
    """A NaN or infinite score (an overflowing gradient norm, a diverged solve) named with its first sample,
    before selection turns it into a bare count."""
    for name, values in columns.items():
        bad = ~np.isfinite(values)
        if bad.any():
            first = scores["sample_id"].iloc[int(np.argmax(bad))]  # Pipeline.score always returns sample_id
            raise DeftError(f"score '{name}' is NaN or infinite for {int(bad.sum())} of {len(values)} samples, "
                            f"first sample_id {first!r}; selection cannot rank such a sample", field=name)


def run_evaluate(cfg: DeftConfig, adapter: str | Path | None, out: str | Path, *, progress: bool = True,
                 overwrite: bool = False):
    from deft.data import build_eval_users, grounding_titles, load_interactions, split_interactions
    from deft.evaluation import check_adapter, evaluate
    from deft.models import load_target_llm

    check_adapter(adapter)
    inter = load_interactions(cfg.data)
    split = split_interactions(inter, cfg.data)
    loaded = load_target_llm(cfg.model)
    # The same prompt budget as training and `deft run`: histories trimmed, long titles cut to max_tokens.
    tokenizer = loaded.tokenizer if cfg.prompt.max_tokens is not None else None
    users = build_eval_users(split, inter.titles, cfg.prompt, cfg.samples, which="test", tokenizer=tokenizer)
    titles = grounding_titles(inter.titles, cfg.prompt, tokenizer)
    return evaluate(loaded, adapter, users, titles, cfg.evaluation, Path(out), progress=progress,
                    overwrite=overwrite)


__all__ = ["Pipeline", "Pool", "PruneResult", "run_prune", "run_scores", "run_train", "run_evaluate",
           "split_from_samples", "load_samples_file", "check_prunable", "method_scores", "method_stages"]
