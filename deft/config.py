"""Typed configuration: one dataclass per pipeline stage, YAML load/dump, validation of every field at once.

Each section has a ``problems(prefix)`` method returning human-readable problems (never raising), so
:func:`validate` can report all of them together, e.g.
``"`selection.budgets` must be positive integers or percentages like '2%', got [0]"``.
Constructors do no work; validation is explicit (scikit-learn style) and done once by :func:`load_config`.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from deft.errors import ConfigError

# ----------------------------------------------------------------------------------------------- helpers


def _choice(problems: list[str], name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        problems.append(f"`{name}` must be one of {list(allowed)}, got {value!r}")


def _positive_int(problems: list[str], name: str, value: Any, *, allow_zero: bool = False) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        kind = "a non-negative integer" if allow_zero else "a positive integer"
        problems.append(f"`{name}` must be {kind}, got {value!r}")


def _number(problems: list[str], name: str, value: Any, lo: float | None = None, hi: float | None = None,
            *, lo_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        problems.append(f"`{name}` must be a number, got {value!r}")
        return
    if not math.isfinite(value):  # YAML's .inf and .nan are floats, and would only surface as NaN results
        problems.append(f"`{name}` must be a finite number, got {value!r}")
        return
    if lo is not None and (value <= lo if lo_open else value < lo):
        problems.append(f"`{name}` must be {'>' if lo_open else '>='} {lo}, got {value!r}")
    if hi is not None and value > hi:
        problems.append(f"`{name}` must be <= {hi}, got {value!r}")


# ----------------------------------------------------------------------------------------------- sections


@dataclass
class DataConfig:
    """Where interactions and item titles come from, and how they are cleaned and split."""

    source: str = "ml-100k"  # built-in name ("ml-100k") or a path (directory or file)
    format: str = "auto"  # auto | recbole | movielens | csv | parquet | amazon
    items: str | None = None  # items/metadata file for csv, parquet and amazon sources
    user_column: str = "user"
    item_column: str = "item"
    time_column: str = "timestamp"
    rating_column: str | None = "rating"
    title_column: str = "title"
    min_rating: float | None = None
    min_user_interactions: int = 0  # k-core on users (0 = off)
    min_item_interactions: int = 0  # k-core on items (0 = off)
    deduplicate: bool = True  # keep the first of repeated (user, item) events
    missing_titles: str = "error"  # error | drop: interactions whose item has no title
    split: str = "leave_one_out"  # leave_one_out | temporal
    split_ratios: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])

    def problems(self, p: str = "data") -> list[str]:
        out: list[str] = []
        if not isinstance(self.source, str) or not self.source:
            out.append(f"`{p}.source` must be a built-in name or a path, got {self.source!r}")
        _choice(out, f"{p}.format", self.format, ("auto", "recbole", "movielens", "csv", "parquet", "amazon"))
        _choice(out, f"{p}.missing_titles", self.missing_titles, ("error", "drop"))
        _choice(out, f"{p}.split", self.split, ("leave_one_out", "temporal"))
        _positive_int(out, f"{p}.min_user_interactions", self.min_user_interactions, allow_zero=True)
        _positive_int(out, f"{p}.min_item_interactions", self.min_item_interactions, allow_zero=True)
        if self.min_rating is not None:
            _number(out, f"{p}.min_rating", self.min_rating)
        r = self.split_ratios
        if (not isinstance(r, (list, tuple)) or len(r) != 3
                or not all(isinstance(x, (int, float)) and x > 0 for x in r) or abs(sum(r) - 1.0) > 1e-6):
            out.append(f"`{p}.split_ratios` must be three positive numbers summing to 1, got {r!r}")
        return out


@dataclass
class SamplesConfig:
    """How a user's training sequence becomes (history -> target) instruction samples."""

    construction: str = "sliding_window"  # sliding_window (BIGRec) | last_per_user (DEALRec)
    max_history: int = 10  # H: at most this many most recent items before the target (sliding_window only)
    stride: int = 1  # sliding_window: keep every stride-th target position of a user
    min_history: int = 1  # a sample needs at least this many history items

    def problems(self, p: str = "samples") -> list[str]:
        out: list[str] = []
        _choice(out, f"{p}.construction", self.construction, ("sliding_window", "last_per_user"))
        _positive_int(out, f"{p}.max_history", self.max_history)
        _positive_int(out, f"{p}.stride", self.stride)
        _positive_int(out, f"{p}.min_history", self.min_history)
        if isinstance(self.min_history, int) and isinstance(self.max_history, int) \
                and self.min_history > self.max_history:
            out.append(f"`{p}.min_history` ({self.min_history}) must not exceed `{p}.max_history` "
                       f"({self.max_history}): no sample could have that many history items")
        return out


@dataclass
class PromptConfig:
    """Alpaca-style prompt texts; `domain` picks a built-in template, the other fields override it."""

    domain: str = "movies"  # movies | games | books | generic
    instruction: str | None = None
    input_format: str | None = None  # must contain "{history}"
    separator: str = "; "
    max_tokens: int | None = 256  # token budget of prompt + target; history trimmed from the oldest end
    max_title_tokens: int = 32  # one over-long title is truncated to this many tokens

    def problems(self, p: str = "prompt") -> list[str]:
        out: list[str] = []
        _choice(out, f"{p}.domain", self.domain, ("movies", "games", "books", "generic"))
        if self.input_format is not None:
            if "{history}" not in self.input_format:
                out.append(f"`{p}.input_format` must contain '{{history}}', got {self.input_format!r}")
            else:
                try:  # rendered with str.format: any other field, or a lone brace, would fail mid-run
                    self.input_format.format(history="")
                except (KeyError, IndexError, ValueError) as exc:
                    out.append(f"`{p}.input_format` can only use the field {{history}} (write a literal brace as "
                               f"{{{{ or }}}}), got {self.input_format!r}: {type(exc).__name__} {exc}")
        if self.max_tokens is not None:
            _positive_int(out, f"{p}.max_tokens", self.max_tokens)
        _positive_int(out, f"{p}.max_title_tokens", self.max_title_tokens)
        return out


@dataclass
class ModelConfig:
    """The target LLM: built-in name (smollm2-135m, tiny-llama), local HF directory or hub id."""

    name: str = "smollm2-135m"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16 (weights); autocast is separate
    autocast: str = "auto"  # auto (bf16 where supported) | bf16 | off
    trust_remote_code: bool = False

    def problems(self, p: str = "model") -> list[str]:
        out: list[str] = []
        if not isinstance(self.name, str) or not self.name:
            out.append(f"`{p}.name` must be a model name or path, got {self.name!r}")
        if not (self.device in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", str(self.device))):
            out.append(f"`{p}.device` must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        _choice(out, f"{p}.dtype", self.dtype, ("auto", "float32", "bfloat16", "float16"))
        _choice(out, f"{p}.autocast", self.autocast, ("auto", "bf16", "off"))
        return out


@dataclass
class LoraConfig:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])

    def problems(self, p: str = "lora") -> list[str]:
        out: list[str] = []
        _positive_int(out, f"{p}.r", self.r)
        _positive_int(out, f"{p}.alpha", self.alpha)
        _number(out, f"{p}.dropout", self.dropout, 0.0, 1.0)
        if not self.target_modules or not all(isinstance(m, str) for m in self.target_modules):
            out.append(f"`{p}.target_modules` must be a non-empty list of module names, got {self.target_modules!r}")
        return out


@dataclass
class SurrogateConfig:
    """SASRec surrogate (algorithms.md §2)."""

    blocks: int = 2
    hidden: int = 64
    heads: int = 2
    max_len: int = 50
    dropout: float = 0.2
    loss: str = "ce"  # ce (full softmax) | bce (parity: one negative per position, drawn once)
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 256
    max_epochs: int = 200
    patience: int = 10  # epochs without validation NDCG@10 improvement before stopping
    seed: int = 0
    exclude_history: bool = False  # rank history items too (False), as the LLM grounding evaluation does

    def problems(self, p: str = "surrogate") -> list[str]:
        out: list[str] = []
        for name in ("blocks", "hidden", "heads", "max_len", "batch_size", "max_epochs", "patience"):
            _positive_int(out, f"{p}.{name}", getattr(self, name))
        if isinstance(self.hidden, int) and isinstance(self.heads, int) and self.heads > 0 and self.hidden % self.heads:
            out.append(f"`{p}.hidden` ({self.hidden}) must be divisible by `{p}.heads` ({self.heads})")
        _number(out, f"{p}.dropout", self.dropout, 0.0, 1.0)
        _number(out, f"{p}.lr", self.lr, 0.0, lo_open=True)
        _number(out, f"{p}.weight_decay", self.weight_decay, 0.0)
        _choice(out, f"{p}.loss", self.loss, ("ce", "bce"))
        _positive_int(out, f"{p}.seed", self.seed, allow_zero=True)
        return out


@dataclass
class InfluenceConfig:
    """Influence on the surrogate's risk (algorithms.md §3). Larger score = removing the sample hurts more."""

    params: str = "attn_out"  # attn_out (parity: last block's attention output proj) | last_block | all | regex
    # cg with damping 0.5 and H on 8,192 sampled samples: on ML-100K (97K samples) the trained surrogate's Hessian
    # has negative eigenvalues, so small damping stalls cg; this setting converges in ~10 iterations, ranks like
    # the full-pool H (Spearman 1.000) and takes ~18 s on 2 cores (benchmarks/results/influence-ml100k.md).
    # `exact` forms H with p HVPs: right for small pools or small theta, hours for 97K samples at p = 4,096.
    solver: str = "cg"  # exact | cg | lissa
    # damping applies to every solver, lissa included: for the reference's LiSSA (effective damping
    # lissa_damping * lissa_scale = 0.25) set damping: 0, or the solve is of H + 0.75 I
    damping: float = 0.5  # lambda in H + lambda*I
    target: str = "train"  # train (DEALRec: empirical risk) | valid (Koh & Liang: validation risk)
    batch_size: int = 2048  # samples per vmap(grad) batch
    cg_tol: float = 1e-8
    cg_max_iter: int = 500
    lissa_depth: int = 5000
    lissa_scale: float = 25.0
    lissa_damping: float = 0.01  # d in h <- g + (1-d) h - H h / scale
    lissa_batch: int = 1  # samples per stochastic HVP (parity: 1)
    lissa_repeats: int = 1
    seed: int = 0
    exact_max_params: int = 20000  # exact forms a p x p Hessian: refuse larger p (use cg or lissa)
    hvp_chunk: int = 8192  # samples x tangent vectors per vectorised HVP call when forming H (memory bound)
    hessian_samples: int = 8192  # 0: H over the whole pool (exact H of R); k: H over a seeded subset of k samples
    # An unfinished solve (cg: non-positive curvature or not converged) is an error; false logs it and keeps the
    # scores, for studies of the solvers. Not part of the scores' identity: a finished solve is the same either way.
    strict: bool = True

    def problems(self, p: str = "influence") -> list[str]:
        out: list[str] = []
        if self.params not in ("attn_out", "last_block", "all"):
            try:
                re.compile(self.params)
            except (re.error, TypeError):
                out.append(f"`{p}.params` must be attn_out, last_block, all or a regex, got {self.params!r}")
        _choice(out, f"{p}.solver", self.solver, ("exact", "cg", "lissa"))
        _choice(out, f"{p}.target", self.target, ("train", "valid"))
        _number(out, f"{p}.damping", self.damping, 0.0)
        _number(out, f"{p}.cg_tol", self.cg_tol, 0.0, lo_open=True)
        _number(out, f"{p}.lissa_scale", self.lissa_scale, 0.0, lo_open=True)
        _number(out, f"{p}.lissa_damping", self.lissa_damping, 0.0, 1.0)
        for name in ("batch_size", "cg_max_iter", "lissa_depth", "lissa_batch", "lissa_repeats", "exact_max_params",
                     "hvp_chunk"):
            _positive_int(out, f"{p}.{name}", getattr(self, name))
        _positive_int(out, f"{p}.hessian_samples", self.hessian_samples, allow_zero=True)
        _positive_int(out, f"{p}.seed", self.seed, allow_zero=True)
        return out


@dataclass
class EffortConfig:
    """Effort: per-sample gradient norm of the LLM loss w.r.t. LoRA parameters (algorithms.md §4)."""

    loss_on: str = "response"  # response | prompt (parity: whole prompt)
    params: str = "lora_b"  # lora_b (all LoRA B matrices) | last_v_proj (parity) | regex on parameter names
    batch_size: int = 16
    shard_size: int = 512  # samples per shard written to disk (resume granularity)
    ifd: bool = False  # also compute instruction-following difficulty (one more forward without the input)

    def problems(self, p: str = "effort") -> list[str]:
        out: list[str] = []
        _choice(out, f"{p}.loss_on", self.loss_on, ("response", "prompt"))
        if self.params not in ("lora_b", "last_v_proj"):
            try:
                re.compile(self.params)
            except (re.error, TypeError):
                out.append(f"`{p}.params` must be lora_b, last_v_proj or a regex, got {self.params!r}")
        _positive_int(out, f"{p}.batch_size", self.batch_size)
        _positive_int(out, f"{p}.shard_size", self.shard_size)
        return out


@dataclass
class BaselinesConfig:
    """GraNd / EL2N from early-training surrogate checkpoints, averaged over seeds (algorithms.md §7)."""

    early_epochs: int = 5
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    grand_params: str = "all"  # GraNd gradient over: all (Paul et al.) | attn_out | last_block | regex
    batch_size: int = 256  # samples per vmap(grad) batch; fewer where their gradients would pass 1 GiB

    def problems(self, p: str = "baselines") -> list[str]:
        out: list[str] = []
        _positive_int(out, f"{p}.early_epochs", self.early_epochs)
        _positive_int(out, f"{p}.batch_size", self.batch_size)
        if self.grand_params not in ("attn_out", "last_block", "all"):
            try:
                re.compile(self.grand_params)
            except (re.error, TypeError):
                out.append(f"`{p}.grand_params` must be attn_out, last_block, all or a regex, got {self.grand_params!r}")
        if not self.seeds or not all(isinstance(s, int) and s >= 0 for s in self.seeds):
            out.append(f"`{p}.seeds` must be a non-empty list of non-negative integers, got {self.seeds!r}")
        return out


SELECTION_METHODS = ("dealrec", "random", "greedy", "ccs", "influence_only", "effort_only", "kcenter",
                     "grand", "el2n")


@dataclass
class SelectionConfig:
    """Coreset selection (algorithms.md §5-§7)."""

    method: str = "dealrec"
    budgets: list[int | str] = field(default_factory=lambda: [256])  # counts or percentages like "2%"
    strata: int = 50  # K equal-width strata
    hard_prune: float = 0.1  # beta: drop the top floor(beta*n) by score
    lambda_: float = 0.5  # weight of effort in minmax(I) + lambda * minmax(effort)
    normalization: str = "minmax"  # minmax | rank | zscore
    seed: int = 0
    ccs_score: str = "el2n"  # the difficulty score the ccs baseline stratifies: el2n, grand, loss, influence, effort

    def problems(self, p: str = "selection") -> list[str]:
        out: list[str] = []
        _choice(out, f"{p}.method", self.method, SELECTION_METHODS)
        if not self.budgets or not all(budget_ok(b) for b in self.budgets):
            out.append(f"`{p}.budgets` must be positive integers or percentages like '2%', got {self.budgets!r}")
        _positive_int(out, f"{p}.strata", self.strata)
        _number(out, f"{p}.hard_prune", self.hard_prune, 0.0, 0.99)
        _number(out, f"{p}.lambda_", self.lambda_, 0.0)
        _choice(out, f"{p}.normalization", self.normalization, ("minmax", "rank", "zscore"))
        _positive_int(out, f"{p}.seed", self.seed, allow_zero=True)
        _choice(out, f"{p}.ccs_score", self.ccs_score, SCORE_NAMES)
        return out


SCORE_NAMES = ("influence", "effort", "grand", "el2n", "loss")  # the scores DEFT computes


def budget_ok(b: Any) -> bool:
    if isinstance(b, bool):
        return False
    if isinstance(b, int):
        return b > 0
    if isinstance(b, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*%\s*", b)
        if m:
            return 0 < float(m.group(1)) <= 100
        return b.strip().isdigit() and int(b) > 0
    return False


def headline_k(ks: list[int]) -> int:
    """The cut-off of an experiment's headline comparison: 10 when configured (the benchmark's NDCG@10), else
    the first configured K."""
    return 10 if 10 in ks else ks[0]


def resolve_budget(budget: int | str, pool_size: int) -> int:
    """A budget as a sample count: integers as given, "2%" as round-half-up of 2% of the pool (at least 1)."""
    if isinstance(budget, str) and budget.strip().endswith("%"):
        return max(1, int(float(budget.strip()[:-1]) * pool_size / 100 + 0.5))
    return int(budget)


@dataclass
class TrainingConfig:
    """LoRA fine-tuning of the target LLM (algorithms.md §8)."""

    lr: float = 5e-4
    epochs: int = 3  # upper bound; early stopping on validation loss picks the best epoch
    batch_size: int = 8
    grad_accum: int = 2
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    loss_on: str = "response"  # response | prompt
    patience: int = 1  # evaluations without validation-loss improvement before stopping
    eval_every: int = 0  # optimizer steps between validation evaluations (0 = once per epoch)
    valid_samples: int = 256  # validation samples used for early stopping
    max_grad_norm: float = 1.0
    seed: int = 0
    schedule: str = "linear"  # linear | cosine: decay after the warm-up, to 0 at the last planned step
    # Wall seconds between resume points inside an epoch (0: only at evaluations). Resuming is exact, so this
    # changes no result and is left out of every fingerprint.
    checkpoint_every_s: float = 600.0

    def problems(self, p: str = "training") -> list[str]:
        out: list[str] = []
        _number(out, f"{p}.lr", self.lr, 0.0, lo_open=True)
        for name in ("epochs", "batch_size", "grad_accum", "patience", "valid_samples"):
            _positive_int(out, f"{p}.{name}", getattr(self, name))
        _positive_int(out, f"{p}.eval_every", self.eval_every, allow_zero=True)
        _number(out, f"{p}.warmup_ratio", self.warmup_ratio, 0.0, 1.0)
        _number(out, f"{p}.weight_decay", self.weight_decay, 0.0)
        _number(out, f"{p}.max_grad_norm", self.max_grad_norm, 0.0, lo_open=True)
        _choice(out, f"{p}.loss_on", self.loss_on, ("response", "prompt"))
        _positive_int(out, f"{p}.seed", self.seed, allow_zero=True)
        _choice(out, f"{p}.schedule", self.schedule, ("linear", "cosine"))
        _number(out, f"{p}.checkpoint_every_s", self.checkpoint_every_s, 0.0)
        return out

    def result_settings(self) -> dict[str, Any]:
        """The settings that can change a trained adapter (what fingerprints hash)."""
        return {k: v for k, v in to_dict(self).items() if k != "checkpoint_every_s"}


@dataclass
class EvaluationConfig:
    """BIGRec grounding evaluation (algorithms.md §9)."""

    num_beams: int = 1  # 1 = greedy
    batch_size: int = 32
    max_new_tokens: int | None = None  # None: just above the longest title in tokens
    ks: list[int] = field(default_factory=lambda: [10, 20])
    exclude_history: bool = False
    max_users: int | None = None  # evaluate the first N test users only (None = all)
    bootstrap_samples: int = 1000  # paired-bootstrap resamples for intervals between runs
    seed: int = 0  # the bootstrap's seed

    def problems(self, p: str = "evaluation") -> list[str]:
        out: list[str] = []
        _positive_int(out, f"{p}.num_beams", self.num_beams)
        _positive_int(out, f"{p}.batch_size", self.batch_size)
        if self.max_new_tokens is not None:
            _positive_int(out, f"{p}.max_new_tokens", self.max_new_tokens)
        if self.max_users is not None:
            _positive_int(out, f"{p}.max_users", self.max_users)
        if not self.ks or not all(isinstance(k, int) and k > 0 for k in self.ks):
            out.append(f"`{p}.ks` must be a non-empty list of positive integers, got {self.ks!r}")
        _positive_int(out, f"{p}.bootstrap_samples", self.bootstrap_samples)
        return out

    def result_settings(self) -> dict[str, Any]:
        """The settings that can change per-user results (what fingerprints hash): the bootstrap's are read
        only when a report compares two runs."""
        return {k: v for k, v in to_dict(self).items() if k not in ("bootstrap_samples", "seed")}


ARMS = ("full", "random", "greedy", "grand", "el2n", "ccs", "influence_only", "effort_only", "dealrec", "kcenter")


@dataclass
class ExperimentConfig:
    """Arms x budgets x seeds (benchmark.md)."""

    arms: list[str] = field(default_factory=lambda: ["random", "dealrec"])
    budgets: list[int | str] = field(default_factory=lambda: [256])
    seeds: list[int] = field(default_factory=lambda: [0])
    full_seeds: list[int] = field(default_factory=lambda: [0])
    references: list[str] = field(default_factory=lambda: ["sasrec", "popularity"])

    def problems(self, p: str = "experiment") -> list[str]:
        out: list[str] = []
        bad = [a for a in self.arms if a not in ARMS]
        if not self.arms or bad:
            out.append(f"`{p}.arms` must be a non-empty subset of {list(ARMS)}, got {self.arms!r}")
        elif len(set(self.arms)) != len(self.arms):  # its runs would be counted twice in the means
            out.append(f"`{p}.arms` repeats an arm, got {self.arms!r}")
        if not self.budgets or not all(budget_ok(b) for b in self.budgets):
            out.append(f"`{p}.budgets` must be positive integers or percentages like '2%', got {self.budgets!r}")
        for name in ("seeds", "full_seeds"):
            seeds = getattr(self, name)
            if not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
                out.append(f"`{p}.{name}` must be a non-empty list of non-negative integers, got {seeds!r}")
            elif len(set(seeds)) != len(seeds):  # a repeated seed would be one run counted twice in the means
                out.append(f"`{p}.{name}` repeats a seed, got {seeds!r}")
        bad = [r for r in self.references if r not in ("sasrec", "popularity")]
        if bad:
            out.append(f"`{p}.references` must be a subset of ['sasrec', 'popularity'], got {self.references!r}")
        return out


@dataclass
class DeftConfig:
    """The whole configuration; every section has defaults, a YAML file overrides any subset."""

    data: DataConfig = field(default_factory=DataConfig)
    samples: SamplesConfig = field(default_factory=SamplesConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    surrogate: SurrogateConfig = field(default_factory=SurrogateConfig)
    influence: InfluenceConfig = field(default_factory=InfluenceConfig)
    effort: EffortConfig = field(default_factory=EffortConfig)
    baselines: BaselinesConfig = field(default_factory=BaselinesConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)

    def problems(self) -> list[str]:
        """Every field's type first (so that a section's own checks never meet, say, an int where a list
        belongs), then each section's own checks for the fields whose type is right."""
        out: list[str] = []
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            wrong = _type_problems(section, f.name)
            out.extend(wrong.values())
            try:
                own = section.problems(f.name)
            except (TypeError, ValueError, AttributeError):  # a check tripped over a field already reported
                own = []
            out.extend(line for line in own if not any(f"`{name}`" in line for name in wrong))
        return out


# ----------------------------------------------------------------------------------------------- field types


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _type_ok(value: Any, hint: Any) -> bool:
    """Whether ``value`` has the declared type (the few kinds config fields use); ints pass for floats."""
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if _is_union(hint):
        return any(_type_ok(value, arg) for arg in typing.get_args(hint))
    if typing.get_origin(hint) is list:
        (arg,) = typing.get_args(hint)
        return isinstance(value, (list, tuple)) and all(_type_ok(v, arg) for v in value)  # tuples: built in Python
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
    return isinstance(value, hint)


def _type_name(hint: Any, plural: bool = False) -> str:
    if _is_union(hint):
        return " or ".join(_type_name(a, plural) for a in typing.get_args(hint))
    if typing.get_origin(hint) is list:
        return f"a list of {_type_name(typing.get_args(hint)[0], plural=True)}"
    names = {bool: ("true or false", "true or false values"), int: ("an integer", "integers"),
             float: ("a number", "numbers"), str: ("a string", "strings"), type(None): ("null", "nulls")}
    return names[hint][plural] if hint in names else getattr(hint, "__name__", str(hint))


def _type_problems(section: Any, prefix: str) -> dict[str, str]:
    """``{dotted field: problem}`` for the fields of ``section`` whose value is not of the declared type."""
    hints = typing.get_type_hints(type(section))
    out = {}
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if not _type_ok(value, hints[f.name]):
            out[f"{prefix}.{f.name}"] = f"`{prefix}.{f.name}` must be {_type_name(hints[f.name])}, got {value!r}"
    return out


def _coerce(cls: type, body: dict[str, Any]) -> dict[str, Any]:
    """The two spellings YAML users reach for that are not the declared type: one value where a list belongs
    (``budgets: 256``), and PyYAML's strings for exponent floats without a dot (``lr: 1e-3``)."""
    hints = typing.get_type_hints(cls)
    out = dict(body)
    for name, value in body.items():
        hint = hints.get(name)
        if hint is None:
            continue
        kinds = typing.get_args(hint) if _is_union(hint) else (hint,)
        if typing.get_origin(hint) is list and not isinstance(value, (list, tuple, dict)) and value is not None:
            out[name] = [value]
        elif float in kinds and isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            out[name] = float(value)
    return out


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


# ----------------------------------------------------------------------------------------------- YAML I/O


def validate(cfg: DeftConfig, *, file: str | Path | None = None) -> DeftConfig:
    """Raise one ConfigError listing every problem, or return the config unchanged."""
    problems = cfg.problems()
    if problems:
        raise ConfigError(problems, file=file)
    return cfg


# Keys a config may spell as users would (``lambda``) for the field Python cannot name so (``lambda_``).
KEY_ALIASES = {"lambda": "lambda_"}


def from_dict(raw: dict[str, Any] | None, *, file: str | Path | None = None) -> DeftConfig:
    """Build a config from nested dicts; unknown sections and keys are problems, reported together."""
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ConfigError([f"the config must be a mapping of sections, got {type(raw).__name__}"], file=file)
    problems: list[str] = []
    sections: dict[str, Any] = {}
    known = {f.name: f for f in dataclasses.fields(DeftConfig)}
    for name, body in raw.items():
        if name not in known:
            problems.append(f"unknown section `{name}` (known: {', '.join(known)})")
            continue
        cls = known[name].default_factory  # type: ignore[misc]
        if body is None:
            continue
        if not isinstance(body, dict):
            problems.append(f"section `{name}` must be a mapping, got {body!r}")
            continue
        keys = {f.name for f in dataclasses.fields(cls())}
        body = {KEY_ALIASES.get(k, k): v for k, v in body.items()}
        unknown = sorted(set(body) - keys, key=str)  # YAML keys need not all be text: `1: 2` is an int key
        problems.extend(f"unknown key `{name}.{k}` (known: {', '.join(sorted(keys))})" for k in unknown)
        sections[name] = cls(**_coerce(cls, {k: v for k, v in body.items() if k in keys}))
    cfg = DeftConfig(**sections)
    problems.extend(cfg.problems())
    if problems:
        raise ConfigError(problems, file=file)
    return cfg


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> DeftConfig:
    """Load a YAML config, apply dotted overrides (``{"selection.seed": 3}``), validate everything at once."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"config file not found: {path}"], file=path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[:exc.start].count(b"\n") + 1
        raise ConfigError([f"line {line}: not UTF-8 text (byte {exc.object[exc.start]:#04x}); save the file as "
                           "UTF-8"], file=path) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = None if mark is None else mark.line + 1
        raise ConfigError([f"not valid YAML{'' if line is None else f' (line {line})'}: {exc}"], file=path) from exc
    if isinstance(raw, dict):
        for dotted, value in (overrides or {}).items():
            section, key = dotted.split(".", 1)
            raw.setdefault(section, {})
            if raw[section] is None:
                raw[section] = {}
            if not isinstance(raw[section], dict):
                raise ConfigError([f"section `{section}` must be a mapping, got {raw[section]!r}"],
                                  file=path)
            raw[section][key] = value
    try:
        return from_dict(raw, file=path)
    except ConfigError as exc:
        raise _blame_overrides(exc, list(overrides or {}), path) from None


def _override_tags(dotted: str) -> list[str]:
    """How a problem names a command-line ``section.key``: by the key's canonical name, or by its section
    when the section is unknown."""
    section, key = dotted.split(".", 1)
    return [f"`{section}.{KEY_ALIASES.get(key, key)}`", f"`{dotted}`", f"unknown section `{section}`"]


def _blame_overrides(exc: ConfigError, dotted: list[str], path: Path) -> ConfigError:
    """Problems with values given on the command line say so, and the file is named only if it is to blame,
    so that nobody searches a YAML file for a value it does not hold."""
    problems, from_file = [], False
    for problem in exc.problems:
        tag = next((t for d in dotted for t in _override_tags(d) if t in problem), None)
        if tag is None:
            from_file = True
            problems.append(problem)
        else:
            problems.append(problem.replace(tag, f"{tag} (from the command line)", 1))
    return ConfigError(problems, file=path if from_file else None)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of a config (or one section), for manifests and fingerprints."""
    return dataclasses.asdict(cfg)


def dump_config(cfg: DeftConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
