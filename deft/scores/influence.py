"""Influence of each pool sample on the surrogate's risk (algorithms.md §3).

    I(s) = (1/n) * grad l(s)^T  H_lambda^-1  grad R,     H_lambda = hess R + lambda * I,   R = (1/n) sum_j l(s_j)

**Sign.** Removing s from the fit (weight -1/n) moves the parameters by about (1/n) H^-1 grad l(s), which
changes the risk by about I(s). So I(s) > 0 means removing s would *raise* the risk: **larger = more useful**.
With ``target="valid"``, grad R is the gradient of the mean validation loss instead (Koh & Liang), same sign.

The core (:func:`influence_from_loss`) is generic: it takes a batched per-sample loss ``loss_fn(theta, batch)``
over a flat parameter vector ``theta`` and tuples of tensors, so the ground-truth tests on a softmax
regression run the very code the SASRec scoring runs (:func:`influence_scores`). Per-sample gradients come from
``torch.func.vmap(grad(...))`` in batches and the scores from one matrix product per batch; one
inverse-Hessian-vector product v = H^-1 grad R serves every sample. Solvers:

- ``exact``: H formed from full-data Hessian-vector products against the identity (vectorised), symmetrised,
  eigendecomposed in float64. Negative eigenvalues of hess R (the fit is not a minimum of the pool's risk)
  are counted in ``info["negative_eigenvalues"]`` (those below -eps * p * max|eigenvalue|; smaller ones are
  round-off) and **clamped to 0** before the damping is added, i.e. the solve uses the positive semi-definite
  part of H plus lambda*I; directions whose damped eigenvalue is round-off (lambda = 0) are dropped
  (pseudo-inverse). Cost: p full-data HVPs, so p <= exact_max_params.
- ``cg``: conjugate gradient on H_lambda with full-data HVPs; stops at ``|r| <= cg_tol * |grad R|``, after
  ``cg_max_iter`` steps, or on non-positive curvature; the last two are errors unless ``strict`` is off
  (then warnings, and the unfinished solve's scores are kept: for studies of the solvers).
- ``lissa`` (parity): h <- g + (1 - d) h - H_b h / scale with H_b the damped Hessian of a random minibatch of
  ``lissa_batch`` samples, ``lissa_depth`` steps from h = g; each repeat r uses seed ``cfg.seed + r`` and the
  repeats' results are averaged, then divided by ``scale``. Its fixed point solves
  (H + (lambda + d * scale) I) v = g: the effective damping is reported in ``info``, with ``lissa_growth``,
  the growth of |h| over the second half of the steps (above ``LISSA_SETTLED`` the solve has not converged, an
  error unless ``strict`` is off: the iteration diverges slowly when H + the effective damping is indefinite). Minibatches of fewer
  than ``SMALL_BATCH`` samples run single-threaded (a 1-sample HVP is latency-bound: OpenMP hand-offs made it
  4x slower on 2 shared cores).

``hessian_samples = k > 0`` replaces the pool by a seeded random subset of k samples *for the Hessian only*
(all solvers; the gradient and the scores still use every sample): an unbiased estimate of H for pools where
p full-data HVPs (exact) or many of them (cg) are too slow. ``info["hessian_n"]`` says which was used.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch.func import functional_call, grad, vjp, vmap
from tqdm.auto import tqdm

from deft.config import InfluenceConfig
from deft.errors import ConfigError
from deft.surrogate.sasrec import (
    ATTN_OUT,
    ItemIndex,
    SASRec,
    draw_negatives,
    encode_item_pairs,
    item_logits,
    sample_loss,
)

log = logging.getLogger(__name__)

LossFn = Callable[[Tensor, tuple[Tensor, ...]], Tensor]  # (flat theta, batch of tensors) -> per-sample losses
SMALL_BATCH = 64  # LiSSA minibatches smaller than this run single-threaded (latency-bound HVPs)
LISSA_SETTLED = 1.5  # |h| may fluctuate (stochastic HVPs) but not grow more than this over the second half
INFLUENCE_DESCRIPTION = ("influence: estimated increase of the surrogate's risk if the sample were removed "
                         "(I = grad l(s)^T H^-1 grad R / n); larger = more useful")


@dataclass
class InfluenceResult:
    """One float64 score per sample (input order), solver statistics, and the samples' ids when known."""

    scores: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)
    sample_ids: np.ndarray | None = None

    def to_frame(self, column: str = "influence") -> pd.DataFrame:
        ids = self.sample_ids if self.sample_ids is not None else np.arange(len(self.scores))
        return pd.DataFrame({"sample_id": ids, column: self.scores})


# ----------------------------------------------------------------------------------------------- generic core


def batch_slices(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def take_rows(data: Sequence[Tensor], index: slice | Tensor) -> tuple[Tensor, ...]:
    return tuple(x[index] for x in data)


def per_sample_grads(loss_fn: LossFn, theta: Tensor, batch: Sequence[Tensor]) -> Tensor:
    """(b, p) gradients of each sample's loss w.r.t. theta, vectorised with vmap(grad) (no per-sample loop)."""

    def one(th: Tensor, *xs: Tensor) -> Tensor:
        return loss_fn(th, tuple(x.unsqueeze(0) for x in xs))[0]

    return vmap(grad(one), in_dims=(None,) + (0,) * len(batch))(theta, *batch)


def mean_gradient(loss_fn: LossFn, theta: Tensor, data: Sequence[Tensor], batch_size: int) -> Tensor:
    """Gradient of the mean loss over ``data`` (float64), one plain backward per batch."""
    n = len(data[0])
    total = torch.zeros(theta.numel(), dtype=torch.float64)
    for sl in batch_slices(n, batch_size):
        batch = take_rows(data, sl)
        total += grad(lambda th, b=batch: loss_fn(th, b).sum())(theta).double()
    return total / n


def batch_hvp(loss_fn: LossFn, theta: Tensor, batch: tuple[Tensor, ...]) -> Callable[[Tensor], Tensor]:
    """``vecs (c, p) -> vecs @ H_batch`` for the batch's *summed* loss, reusable for many calls.

    Reverse-over-reverse: one forward and one backward build the gradient's graph, then each call is one more
    backward (vmapped over the rows of ``vecs``). On CPU this is ~4x faster than forward-over-reverse (jvp).
    """
    _, vjp_fn = vjp(grad(lambda th: loss_fn(th, batch).sum()), theta)
    return lambda vecs: vmap(vjp_fn)(vecs.to(theta.dtype))[0]


class PoolHessian:
    """H_lambda = hess R + damping * I over ``data`` (R = mean loss), applied through HVPs; ``dense`` forms
    the undamped matrix for the exact solver."""

    def __init__(self, loss_fn: LossFn, theta: Tensor, data: Sequence[Tensor], batch_size: int,
                 damping: float) -> None:
        self.loss_fn, self.theta, self.data = loss_fn, theta, tuple(data)
        self.n, self.batch_size, self.damping = len(data[0]), batch_size, damping
        self.calls = 0  # Hessian-vector products, each over all samples or over one minibatch

    def matvec(self, vec: Tensor, *, index: Tensor | None = None) -> Tensor:
        """H_lambda @ vec (float64), over all samples or over the minibatch ``index``."""
        self.calls += 1
        if index is None:
            parts, count = [take_rows(self.data, sl) for sl in batch_slices(self.n, self.batch_size)], self.n
        else:
            parts, count = [take_rows(self.data, index)], len(index)
        out = torch.zeros_like(vec)
        for batch in parts:
            out += batch_hvp(self.loss_fn, self.theta, batch)(vec.unsqueeze(0))[0].double()
        return out / count + self.damping * vec

    def dense(self, chunk_pairs: int, progress: bool) -> Tensor:
        """The undamped (p, p) Hessian in float64: per batch, one graph and HVPs against identity rows."""
        p = self.theta.numel()
        hess = torch.zeros((p, p), dtype=torch.float64)
        eye = torch.eye(p, dtype=self.theta.dtype)
        batches = batch_slices(self.n, self.batch_size)
        chunk = max(1, chunk_pairs // min(self.n, self.batch_size))  # bounds the (rows x samples) activations
        with tqdm(total=len(batches) * p, desc="hessian", unit="hvp", disable=not progress) as bar:
            for sl in batches:
                hvp = batch_hvp(self.loss_fn, self.theta, take_rows(self.data, sl))
                for rows in batch_slices(p, chunk):
                    hess[rows] += hvp(eye[rows]).double()
                    bar.update(rows.stop - rows.start)
        self.calls += p
        hess /= self.n
        return (hess + hess.T) / 2


def solve_exact(op: PoolHessian, g: Tensor, cfg: InfluenceConfig, progress: bool) -> tuple[Tensor, dict[str, Any]]:
    p = g.numel()
    if p > cfg.exact_max_params:
        raise ConfigError([f"`influence.solver` exact forms a {p} x {p} Hessian, more than "
                           f"`influence.exact_max_params` ({cfg.exact_max_params}); use cg or lissa, or fewer params"])
    start = time.perf_counter()
    hess = op.dense(cfg.hvp_chunk, progress)
    formed = time.perf_counter()
    evals, evecs = torch.linalg.eigh(hess)
    timing = {"hessian_s": round(formed - start, 3), "eigh_s": round(time.perf_counter() - formed, 3)}
    # Like numpy's pinv: |eigenvalues| below eps(theta's dtype) * p * the largest are round-off, i.e. zero.
    noise = float(evals.abs().max()) * p * torch.finfo(op.theta.dtype).eps
    damped = evals.clamp(min=0.0) + cfg.damping
    keep = damped > noise
    v = evecs @ (torch.where(keep, 1.0 / damped, 0.0) * (evecs.T @ g))
    info = {"negative_eigenvalues": int((evals < -noise).sum()), "min_eigenvalue": float(evals[0]),
            "max_eigenvalue": float(evals[-1]), "dropped_directions": int((~keep).sum()), **timing}
    return v, info


def solve_cg(op: PoolHessian, g: Tensor, cfg: InfluenceConfig, progress: bool) -> tuple[Tensor, dict[str, Any]]:
    x = torch.zeros_like(g)
    r, g_norm = g.clone(), float(g.norm())
    d, rs = r.clone(), float(r @ r)
    info: dict[str, Any] = {"iterations": 0, "converged": False, "negative_curvature": False}
    for it in tqdm(range(1, cfg.cg_max_iter + 1), desc="cg", unit="it", disable=not progress):
        hd = op.matvec(d)
        curvature = float(d @ hd)
        if curvature <= 0:  # H_lambda is not positive definite along d: CG's answer is meaningless beyond here
            info["negative_curvature"] = True
            _solve_failed(cfg, f"non-positive curvature {curvature:.3g} at iteration {it}: H + damping is not "
                               f"positive definite; raise `influence.damping` ({cfg.damping}) or use solver "
                               "'exact', which clamps negative eigenvalues")
            break
        alpha = rs / curvature
        x += alpha * d
        r -= alpha * hd
        rs_new = float(r @ r)
        info["iterations"], info["converged"] = it, math.sqrt(rs_new) <= cfg.cg_tol * g_norm
        d = r + (rs_new / rs) * d
        rs = rs_new
        if info["converged"]:
            break
    info["relative_residual"] = math.sqrt(rs) / g_norm
    info["solved"] = info["converged"] and not info["negative_curvature"]
    if not info["converged"] and not info["negative_curvature"]:
        _solve_failed(cfg, f"not converged after `influence.cg_max_iter` = {cfg.cg_max_iter} iterations (relative "
                           f"residual {info['relative_residual']:.3g} > `influence.cg_tol` = {cfg.cg_tol}); raise "
                           f"cg_max_iter or `influence.damping` ({cfg.damping})")
    return x, info


def solve_failure(info: dict[str, Any]) -> str | None:
    """Why a finished scoring run's solve did not succeed (from its ``info``), or None. Info saved before
    ``solved`` was recorded is judged by cg's own fields."""
    if info.get("solved") is False or info.get("negative_curvature") or info.get("converged") is False:
        return (f"its {info.get('solver', 'inverse-Hessian')} solve did not finish (converged "
                f"{info.get('converged')}, negative curvature {info.get('negative_curvature')}, lissa growth "
                f"{info.get('lissa_growth')})")
    return None


def _solve_failed(cfg: InfluenceConfig, why: str) -> None:
    """An unfinished solve still yields plausible-looking scores, so a coreset chosen from them would be silently
    wrong: an error unless ``influence.strict`` is off (solver studies), where it is logged and kept in info
    (``solved: false``), and scores cached that way are refused again by a strict run."""
    if cfg.strict:
        raise ConfigError([f"influence ({cfg.solver}): {why}; or set `influence.strict: false` to keep the "
                           "unfinished solve's scores"])
    log.warning("influence (%s): %s", cfg.solver, why)


def _minibatches(n: int, size: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Endless minibatches: consecutive chunks of seeded permutations. A chunk that runs past the end of one
    permutation is completed from the next, so it can hold a sample twice; every sample still comes once per
    permutation."""
    if size >= n:
        while True:
            yield torch.arange(n)
    order, pos = torch.randperm(n, generator=generator), 0
    while True:
        if pos + size > n:
            order, pos = torch.cat([order[pos:], torch.randperm(n, generator=generator)]), 0
        yield order[pos : pos + size]
        pos += size


@contextmanager
def _threads(count: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _diverged(h: Tensor, g: Tensor) -> bool:
    return not bool(torch.isfinite(h).all()) or float(h.norm()) > 1e12 * max(float(g.norm()), 1e-30)


def solve_lissa(op: PoolHessian, g: Tensor, cfg: InfluenceConfig, progress: bool) -> tuple[Tensor, dict[str, Any]]:
    d, scale = cfg.lissa_damping, cfg.lissa_scale
    total, growth = torch.zeros_like(g), 0.0
    bar = tqdm(total=cfg.lissa_repeats * cfg.lissa_depth, desc="lissa", unit="step", disable=not progress)
    small = min(cfg.lissa_batch, op.n) < SMALL_BATCH
    for repeat in range(cfg.lissa_repeats):
        batches = _minibatches(op.n, cfg.lissa_batch, torch.Generator().manual_seed(cfg.seed + repeat))
        h, half_norm = g.clone(), float(g.norm())
        with _threads(1 if small else torch.get_num_threads()):
            for step in range(1, cfg.lissa_depth + 1):
                h = g + (1.0 - d) * h - op.matvec(h, index=next(batches)) / scale
                bar.update()
                if _diverged(h, g):
                    bar.close()
                    raise ConfigError([f"LiSSA diverged: `influence.lissa_scale` ({scale}) must exceed the largest "
                                       "eigenvalue of the (minibatch) Hessian; raise it or `influence.lissa_damping`"])
                if step == cfg.lissa_depth // 2:
                    half_norm = float(h.norm())
        growth = max(growth, float(h.norm()) / max(half_norm, 1e-300))
        total += h / scale
    bar.close()
    if growth > LISSA_SETTLED:
        # A converging chain has |h| flat over its second half; steady growth means H + effective damping has
        # negative eigenvalues (the iteration then diverges slowly) or the depth is too short.
        _solve_failed(cfg, f"|h| grew {growth:.3g}x over the last half of the steps; it has not converged: raise "
                           f"`influence.lissa_damping` (effective damping {cfg.damping + d * scale:.3g}) or "
                           "`influence.lissa_depth`")
    info = {"effective_damping": cfg.damping + d * scale, "steps": cfg.lissa_repeats * cfg.lissa_depth,
            "lissa_growth": growth, "solved": growth <= LISSA_SETTLED}
    return total / cfg.lissa_repeats, info


def hessian_data(data: Sequence[Tensor], cfg: InfluenceConfig) -> tuple[Tensor, ...]:
    """The samples H is taken over: all of ``data``, or a seeded subset of ``cfg.hessian_samples`` (in order)."""
    n = len(data[0])
    if cfg.hessian_samples == 0 or cfg.hessian_samples >= n:
        return tuple(data)
    chosen = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed))[: cfg.hessian_samples]
    return take_rows(data, chosen.sort().values)


SOLVERS = {"exact": solve_exact, "cg": solve_cg, "lissa": solve_lissa}


def influence_from_loss(loss_fn: LossFn, theta: Tensor, data: Sequence[Tensor], cfg: InfluenceConfig,
                        valid: Sequence[Tensor] | None = None, progress: bool = True) -> InfluenceResult:
    """Influence of every sample of ``data`` on the mean risk (``cfg.target``), see the module docstring.

    ``theta`` is the flat parameter vector at the fitted point; ``loss_fn(theta, batch)`` returns the (b,)
    per-sample losses of a batch (a tuple of tensors indexed along dim 0, like ``data``). The Hessian is always
    that of the mean loss over ``data``; the gradient is over ``data`` (train) or ``valid`` (valid).
    """
    if cfg.target == "valid" and valid is None:
        raise ConfigError(["`influence.target` is 'valid' but no validation pairs were given"])
    times: dict[str, float] = {}
    n = len(data[0])
    start = time.perf_counter()
    g = mean_gradient(loss_fn, theta, data if cfg.target == "train" else valid, cfg.batch_size)
    times["gradient_s"] = time.perf_counter() - start
    if not bool(torch.any(g != 0)):  # every score would be 0, and a combined score would quietly drop influence
        raise ConfigError([f"influence: the mean {cfg.target} gradient over the {theta.numel()} parameters of "
                           "`influence.params` is exactly zero, so every influence score would be 0; "
                           "choose other `influence.params` or check that the surrogate was trained"])
    op = PoolHessian(loss_fn, theta, hessian_data(data, cfg), cfg.batch_size, cfg.damping)
    start = time.perf_counter()
    v, info = SOLVERS[cfg.solver](op, g, cfg, progress)
    times["solve_s"] = time.perf_counter() - start
    start = time.perf_counter()
    scores = np.empty(n, dtype=np.float64)
    for sl in tqdm(batch_slices(n, cfg.batch_size), desc="influence", unit="batch", disable=not progress):
        grads = per_sample_grads(loss_fn, theta, take_rows(data, sl)).double()
        scores[sl] = (grads @ v / n).numpy()  # one matrix product per batch
    times["scores_s"] = time.perf_counter() - start
    info.update(solver=cfg.solver, target=cfg.target, n=n, p=theta.numel(), damping=cfg.damping, hessian_n=op.n,
                hvp_calls=op.calls, gradient_norm=float(g.norm()), ihvp_norm=float(v.norm()),
                **{k: round(t, 3) for k, t in times.items()})
    return InfluenceResult(scores, info)


# ----------------------------------------------------------------------------------------------- SASRec


def select_parameters(model: SASRec, spec: str, setting: str = "influence.params") -> list[str]:
    """Names of the parameters in theta: attn_out (last block's attention output projection *weight*, parity;
    bias excluded, 64x64 = 4,096 at hidden 64), last_block, all, or a regex searched in each name. ``setting``
    is the config field ``spec`` came from, for the error."""
    last = len(model.blocks) - 1
    patterns = {"attn_out": rf"^blocks\.{last}\.{re.escape(ATTN_OUT)}$", "last_block": rf"^blocks\.{last}\.",
                "all": r""}
    pattern = re.compile(patterns.get(spec, spec))
    names = [name for name, _ in model.named_parameters() if pattern.search(name)]
    if not names:
        examples = ", ".join(name for name, _ in list(model.named_parameters())[:4])
        raise ConfigError([f"`{setting}` {spec!r} matches no surrogate parameter (names: {examples}, ...)"])
    return names


def _start_block(model: SASRec, names: Sequence[str]) -> int:
    """First block whose output depends on theta: everything before it can be computed once and cached."""
    n_blocks, first = len(model.blocks), len(model.blocks)
    for name in names:
        match = re.match(r"blocks\.(\d+)\.", name)
        if match:
            first = min(first, int(match.group(1)))
        elif not name.startswith("final_norm."):
            return 0  # embeddings (tied: also the output layer) feed everything
    return min(first, n_blocks)


@dataclass
class SASRecProblem:
    """A SASRec per-sample loss in the form the generic core takes, plus where theta lives."""

    loss_fn: LossFn
    theta: Tensor
    names: list[str]
    start_block: int

    def data(self, model: SASRec, histories: Tensor, targets: Tensor, seed: int, batch_size: int) -> tuple[Tensor, ...]:
        """(histories, targets, negatives[, cached prefix states]): negatives are drawn once (used by bce only)."""
        negatives = draw_negatives(targets, model.n_items, torch.Generator().manual_seed(seed))
        if self.start_block == 0:
            return histories, targets, negatives
        states = torch.cat([model.prefix_states(histories[sl], self.start_block)
                            for sl in batch_slices(len(histories), batch_size)])
        return histories, targets, negatives, states


def sasrec_problem(model: SASRec, names: Sequence[str]) -> SASRecProblem:
    """Per-sample loss of the model (eval mode, dropout off) as a function of the flat vector of ``names``.

    The other parameters are frozen constants passed to ``functional_call``. The loss is the model's training
    loss at the last history position: ``ce`` over all items; ``bce`` with one fixed negative per sample.
    """
    params = dict(model.named_parameters())
    names = list(names)
    shapes = [params[k].shape for k in names]
    sizes = [params[k].numel() for k in names]
    frozen = {k: v.detach() for k, v in params.items() if k not in set(names)}
    start = _start_block(model, names)

    def loss_fn(theta: Tensor, batch: tuple[Tensor, ...]) -> Tensor:
        seqs, targets, negatives, *cached = batch
        own = {k: t.view(s) for k, t, s in zip(names, theta.split(sizes), shapes, strict=True)}
        states = functional_call(model, (own, frozen), (seqs,),
                                 {"states": cached[0] if cached else None, "start_block": start, "last_only": True})
        weight = own.get("item_emb.weight", frozen.get("item_emb.weight"))
        return sample_loss(item_logits(states, weight), targets, model.loss, negatives)

    theta = torch.cat([params[k].detach().reshape(-1) for k in names])
    return SASRecProblem(loss_fn, theta, names, start)


def sample_losses(model: SASRec, histories: Tensor, targets: Tensor, *, seed: int = 0,
                  batch_size: int = 2048) -> np.ndarray:
    """Per-sample surrogate loss l(s) of predicting each target from its history (eval mode, float64 out).

    The same loss influence differentiates: ``ce`` over all items, or ``bce`` with the negatives drawn from
    ``seed`` exactly as :meth:`SASRecProblem.data` draws them.
    """
    model.eval()
    negatives = draw_negatives(targets, model.n_items, torch.Generator().manual_seed(seed))
    out = []
    with torch.no_grad():
        for sl in batch_slices(len(histories), batch_size):
            logits = model.logits(model(histories[sl], last_only=True))
            out.append(sample_loss(logits, targets[sl], model.loss, negatives[sl]).double().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def influence_scores(model: SASRec, histories: Tensor, targets: Tensor, cfg: InfluenceConfig,
                     valid: tuple[Tensor, Tensor] | None = None, progress: bool = True) -> InfluenceResult:
    """Influence of each (history, target) pair on the SASRec surrogate (see the module docstring for the sign).

    ``histories`` (n, W) are left-padded item indices and ``targets`` (n,) item indices, as made by
    :func:`deft.surrogate.sasrec.encode_item_pairs`; ``valid`` the same for the validation pairs (target "valid").
    """
    model.eval()  # dropout off: the loss must be a deterministic function of theta
    start = time.perf_counter()
    problem = sasrec_problem(model, select_parameters(model, cfg.params))
    data = problem.data(model, histories, targets, cfg.seed, cfg.batch_size)
    valid_data = None if valid is None else problem.data(model, *valid, cfg.seed + 1, cfg.batch_size)
    prefix_s = time.perf_counter() - start
    result = influence_from_loss(problem.loss_fn, problem.theta, data, cfg, valid_data, progress)
    result.info.update(params=cfg.params, param_names=problem.names, start_block=problem.start_block,
                       prefix_s=round(prefix_s, 3), loss=model.loss)
    return result


def validation_pairs(split) -> tuple[list[list[str]], list[str]]:
    """Validation (histories, targets) of a split: one pair per validation item, history = training sequence."""
    pairs = [(list(split.train.get(user, [])), item) for user in sorted(split.valid) for item in split.valid[user]]
    return [h for h, _ in pairs], [t for _, t in pairs]


def pool_losses(model: SASRec, item_index: ItemIndex, samples_df: pd.DataFrame, *, seed: int = 0) -> np.ndarray:
    """Per-sample surrogate loss of every row of a sample frame (history, target_item), in row order."""
    pairs = encode_item_pairs(item_index, samples_df["history"].tolist(), samples_df["target_item"].tolist(),
                         model.max_len, samples_df["sample_id"].tolist())
    return sample_losses(model, *pairs, seed=seed)


def score_pool(model: SASRec, item_index: ItemIndex, samples_df: pd.DataFrame, cfg: InfluenceConfig,
               valid: tuple[Sequence[Sequence[str]], Sequence[str]] | None = None,
               progress: bool = True) -> InfluenceResult:
    """Influence of every row of a sample frame (columns sample_id, history, target_item), in row order.

    ``valid`` = (histories, targets) as item ids, e.g. :func:`validation_pairs`, for target "valid".
    """
    ids = samples_df["sample_id"].tolist()
    pairs = encode_item_pairs(item_index, samples_df["history"].tolist(), samples_df["target_item"].tolist(),
                         model.max_len, ids)
    valid_pairs = None if valid is None else encode_item_pairs(item_index, valid[0], valid[1], model.max_len)
    result = influence_scores(model, *pairs, cfg, valid_pairs, progress)
    result.sample_ids = np.asarray(ids)
    result.info["description"] = INFLUENCE_DESCRIPTION
    return result
