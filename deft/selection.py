"""Coreset selection: strategies that turn per-sample scores into a coreset (algorithms.md §5-§7).

Pure numpy, no I/O. Every strategy takes one ``seed`` and draws from one ``numpy.random.Generator`` made from
it, so the same inputs and seed give the same coreset bit for bit. Indices are positions in the pool (0-based,
pool order), returned sorted ascending.

Deterministic tie rules (documented because they decide which samples a run keeps):
- hard prune: the top ``floor(beta * n)`` by score; among samples tied at the cut-off score, the lowest pool
  indices are pruned first;
- top-m strategies (``greedy``, ``grand``, ``el2n``): highest score first, ties broken by lowest index;
- coverage allocation: strata are visited smallest first, equal sizes by stratum number; inside a stratum the
  members are ordered by pool index before the seeded draw.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any

import numpy as np

from deft.errors import BudgetError
from deft.scores.combine import check_score, combine, dealrec_score, normalize

__all__ = ["METHODS", "Selection", "allocate", "assign_strata", "combine", "coverage_select", "hard_prune_count",
           "kcenter_select", "normalize", "pool_strata", "random_select", "select", "select_many",
           "selection_score", "top_select"]

METHODS = ("dealrec", "random", "greedy", "ccs", "influence_only", "effort_only", "kcenter", "grand", "el2n")
COVERAGE_METHODS = ("dealrec", "ccs", "influence_only", "effort_only")
TOP_METHODS = ("greedy", "grand", "el2n")


@dataclass(frozen=True, eq=False)
class Selection:
    """A coreset and how it was chosen.

    indices: chosen pool positions, int64, sorted ascending, no duplicates.
    strata: the stratum of each chosen index (aligned with ``indices``); -1 for non-stratified strategies.
    stratum_counts: int64 array of shape (K, 2): column 0 = pool samples in the stratum (after the hard
        prune), column 1 = samples chosen from it; shape (0, 2) for non-stratified strategies.
    edges: the K + 1 equal-width stratum edges over the kept score range, or None.
    params: JSON-serialisable settings and counts: method, budget, seed, strata (K; 0 if not stratified),
        hard_prune (beta), n (pool size), pruned (floor(beta * n)), topped_up (samples added after the
        allocation loop; 0 in practice), prune_cutoff (lowest pruned score, or None), nonempty_strata; and from
        :func:`select`: normalization, scores (names used), lambda (dealrec, greedy).
    """

    indices: np.ndarray
    strata: np.ndarray
    stratum_counts: np.ndarray
    edges: np.ndarray | None
    params: dict[str, Any]

    def __len__(self) -> int:
        return int(self.indices.size)


# ----------------------------------------------------------------------------------------------- checks


def _check_budget(budget: Any, available: int, what: str) -> int:
    """The budget as an int, or a BudgetError naming the budget and the number of samples it may take."""
    if isinstance(budget, (bool, np.bool_)) or not isinstance(budget, (int, np.integer)) or budget < 1:
        raise BudgetError(f"budget must be a positive integer, got {budget!r}")
    if budget > available:
        raise BudgetError(f"budget {int(budget)} exceeds the {available} samples available ({what})")
    return int(budget)


def hard_prune_count(n: int, hard_prune: float) -> int:
    """``floor(hard_prune * n)``, computed on the decimal value written (0.29 * 100 is 29, not 28)."""
    if not 0.0 <= hard_prune < 1.0:
        raise ValueError(f"hard_prune must be in [0, 1), got {hard_prune!r}")
    return int(Fraction(repr(float(hard_prune))) * n)


def capacity(method: str, n: int, hard_prune: float) -> int:
    """How many of a pool of ``n`` samples ``method`` can choose: the coverage methods first drop the
    hard-pruned ``floor(hard_prune * n)``."""
    return n - hard_prune_count(n, hard_prune) if method in COVERAGE_METHODS else n


def _hard_prune_mask(scores: np.ndarray, n_pruned: int) -> tuple[np.ndarray, float | None]:
    """Mask of the top ``n_pruned`` scores (ties at the cut-off: lowest indices first) and the cut-off score."""
    mask = np.zeros(scores.size, dtype=bool)
    if n_pruned == 0:
        return mask, None
    # O(n) partition instead of a full sort; only the cut-off value is needed.
    cutoff = np.partition(scores, scores.size - n_pruned)[scores.size - n_pruned]
    np.greater(scores, cutoff, out=mask)
    ties = np.flatnonzero(scores == cutoff)[: n_pruned - int(mask.sum())]
    mask[ties] = True
    return mask, float(cutoff)


def assign_strata(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Stratum k holds ``edges[k] <= v < edges[k+1]``; the maximum (and anything above) joins the last one."""
    k = len(edges) - 1
    return np.clip(np.searchsorted(edges, values, side="right") - 1, 0, k - 1)


# ----------------------------------------------------------------------------------------------- §6 coverage


def allocate(sizes: np.ndarray, budget: int) -> tuple[np.ndarray, np.ndarray]:
    """§6 step 3: how many to take from each stratum, and the order the strata were visited.

    Smallest non-empty stratum first: ``k = min(|G|, floor(r / #remaining))``, then ``r -= k``. The
    water-filling invariant ``r <= sum of the remaining sizes`` holds at every step, so when
    ``budget <= sizes.sum()`` the last stratum absorbs the rest and nothing is left over.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    take = np.zeros_like(sizes)
    nonempty = np.flatnonzero(sizes > 0)
    visit = nonempty[np.argsort(sizes[nonempty], kind="stable")]
    remaining_budget = int(budget)
    for left, k in zip(range(visit.size, 0, -1), visit, strict=True):
        take[k] = min(int(sizes[k]), remaining_budget // left)
        remaining_budget -= int(take[k])
    return take, visit


def _top_up(take: np.ndarray, sizes: np.ndarray, budget: int) -> int:
    """Fill any budget the allocation left from the largest strata's unchosen members; returns how many.

    A safety net for §6 step 4: with integer arithmetic :func:`allocate` never leaves budget (see its
    docstring), so this returns 0 unless the allocation rule changes.
    """
    left = budget - int(take.sum())
    added = 0
    for k in np.argsort(-sizes, kind="stable"):
        if left <= 0:
            break
        extra = min(int(sizes[k] - take[k]), left)
        take[k] += extra
        left -= extra
        added += extra
    return added


def coverage_select(scores: np.ndarray, budget: int, strata: int = 50, hard_prune: float = 0.1,
                    seed: int = 0) -> Selection:
    """Coverage-enhanced selection (algorithms.md §6): hard prune, K equal-width strata, smallest first.

    Raises BudgetError when ``budget > n - floor(hard_prune * n)``. A constant score gives one stratum.
    """
    s = check_score(scores, "selection score")
    if isinstance(strata, bool) or not isinstance(strata, (int, np.integer)) or strata < 1:
        raise ValueError(f"strata must be a positive integer, got {strata!r}")
    n, n_pruned = s.size, hard_prune_count(s.size, hard_prune)
    m = _check_budget(budget, n - n_pruned, f"{n} in the pool minus {n_pruned} hard-pruned")
    pruned, cutoff = _hard_prune_mask(s, n_pruned)
    kept = np.flatnonzero(~pruned)  # ascending pool index
    vals = s[kept]
    edges = np.linspace(vals.min(), vals.max(), strata + 1)
    stratum = assign_strata(vals, edges).astype(np.int16 if strata < 2**15 else np.int64)
    # Stable sort groups each stratum's members contiguously in pool-index order (radix sort for int16).
    grouped = kept[np.argsort(stratum, kind="stable")]
    sizes = np.bincount(stratum, minlength=strata).astype(np.int64)
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    take, visit = allocate(sizes, m)
    topped = _top_up(take, sizes, m)
    rng = np.random.default_rng(seed)
    picks = [grouped[starts[k] + rng.choice(sizes[k], take[k], replace=False)] for k in visit if take[k]]
    chosen = np.concatenate(picks).astype(np.int64)
    chosen_strata = np.repeat(visit[take[visit] > 0], take[visit][take[visit] > 0])
    order = np.argsort(chosen)
    params = {"method": "coverage", "budget": m, "seed": int(seed), "strata": int(strata),
              "hard_prune": float(hard_prune), "n": n, "pruned": n_pruned, "topped_up": topped,
              "prune_cutoff": cutoff, "nonempty_strata": int(visit.size)}
    return Selection(chosen[order], chosen_strata[order].astype(np.int64), np.stack([sizes, take], axis=1),
                     edges, params)


# ----------------------------------------------------------------------------------------------- other strategies


def _unstratified(indices: np.ndarray, params: dict[str, Any]) -> Selection:
    base = {"strata": 0, "hard_prune": 0.0, "pruned": 0, "topped_up": 0}
    idx = np.sort(np.asarray(indices, dtype=np.int64))
    return Selection(idx, np.full(idx.size, -1, dtype=np.int64), np.zeros((0, 2), dtype=np.int64), None,
                     {**base, **params})


def random_select(n: int, budget: int, seed: int = 0) -> Selection:
    """Uniform sample without replacement from the whole pool."""
    m = _check_budget(budget, n, "the pool size")
    chosen = np.random.default_rng(seed).choice(n, m, replace=False)
    return _unstratified(chosen, {"method": "random", "budget": m, "seed": int(seed), "n": n})


def top_select(scores: np.ndarray, budget: int) -> Selection:
    """The ``budget`` highest scores (ties: lowest index first). No randomness."""
    s = check_score(scores, "selection score")
    m = _check_budget(budget, s.size, "the pool size")
    # Stable sort of the negated score = descending score with ascending index among ties.
    chosen = np.argsort(-s, kind="stable")[:m]
    return _unstratified(chosen, {"method": "top", "budget": m, "seed": None, "n": int(s.size)})


def kcenter_select(embeddings: np.ndarray, budget: int, seed: int = 0) -> Selection:
    """Greedy k-center: a seeded random first point, then repeatedly the point farthest from the chosen set.

    Each step is one matrix-vector product (``|x|^2 - 2 x.c + |c|^2``) and an in-place minimum, so the whole
    run is O(n * m * d) in vectorised numpy. The steps are inherently sequential, so a faiss index would add a
    dependency without saving work. Ties go to the lowest index; chosen points are never re-picked.
    """
    x = np.asarray(embeddings)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D array (n samples x d), got shape {x.shape}")
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)
    bad = int(x.size - np.count_nonzero(np.isfinite(x)))
    if bad:
        raise ValueError(f"embeddings have {bad} non-finite value(s) (NaN or inf)")
    n = x.shape[0]
    m = _check_budget(budget, n, "the pool size")
    sq_norm = np.einsum("ij,ij->i", x, x).astype(np.float64)

    def sq_dist(j: int) -> np.ndarray:
        return np.maximum(sq_norm + sq_norm[j] - 2.0 * (x @ x[j]).astype(np.float64), 0.0)

    chosen = np.empty(m, dtype=np.int64)
    chosen[0] = np.random.default_rng(seed).integers(n)
    dist = sq_dist(int(chosen[0]))
    dist[chosen[0]] = -np.inf
    for i in range(1, m):
        j = int(np.argmax(dist))
        chosen[i] = j
        np.minimum(dist, sq_dist(j), out=dist)
        dist[j] = -np.inf  # exclude it even if rounding left it a tiny positive distance
    return _unstratified(chosen, {"method": "kcenter", "budget": m, "seed": int(seed), "n": n})


# ----------------------------------------------------------------------------------------------- dispatch


def _require(scores: Mapping[str, np.ndarray], *keys: str) -> None:
    for key in keys:
        if key not in scores:
            raise ValueError(f"score '{key}' is needed but missing; available scores: {sorted(scores)}")


def selection_score(method: str, scores: Mapping[str, np.ndarray], *, lambda_: float = 0.5,
                    normalization: str = "minmax", ccs_score: str = "el2n") -> np.ndarray | None:
    """The one score ``method`` ranks or stratifies (larger = keep); None for ``random`` and ``kcenter``.

    dealrec and greedy: ``norm(influence) + lambda_ * norm(effort)``; ccs: ``norm(scores[ccs_score])``;
    influence_only, effort_only, grand, el2n: the normalised score of that name. GraNd and EL2N keep the
    highest-scoring samples, as the DEALRec paper's baselines do.
    """
    if method in ("dealrec", "greedy"):
        _require(scores, "influence", "effort")
        return dealrec_score(scores["influence"], scores["effort"], lambda_, normalization)
    key = {"ccs": ccs_score, "influence_only": "influence", "effort_only": "effort",
           "grand": "grand", "el2n": "el2n"}.get(method)
    if key is not None:
        _require(scores, key)
        return normalize(scores[key], normalization, name=key)
    if method in ("random", "kcenter"):
        return None
    raise ValueError(f"selection method must be one of {list(METHODS)}, got {method!r}")


def _pool_size(scores: Mapping[str, np.ndarray], embeddings: np.ndarray | None, pool_size: int | None = None) -> int:
    sizes = {k: len(v) for k, v in scores.items()}
    if embeddings is not None:
        sizes["<embeddings>"] = len(embeddings)
    if pool_size is not None:
        sizes["pool_size"] = int(pool_size)
    if not sizes:
        raise ValueError("cannot tell the pool size: no scores, no embeddings and no pool_size given")
    if len(set(sizes.values())) > 1:
        raise ValueError(f"scores must all have one value per pool sample, got lengths {sizes}")
    return next(iter(sizes.values()))


def _resolve(budget: int | str, n: int) -> int:
    if isinstance(budget, str):
        # Imported here so that importing deft.selection pulls in numpy only (deft.config needs yaml).
        from deft.config import budget_ok, resolve_budget

        if not budget_ok(budget):  # "0%", "-5%", "inf%" would otherwise resolve to 1 sample or overflow
            raise BudgetError(f"budget must be a positive integer or a percentage in (0, 100] like '2%', "
                              f"got {budget!r}")
        return resolve_budget(budget, n)
    return budget


def select(method: str, scores: Mapping[str, np.ndarray], budget: int | str, *, strata: int = 50,
           hard_prune: float = 0.1, lambda_: float = 0.5, normalization: str = "minmax", seed: int = 0,
           embeddings: np.ndarray | None = None, ccs_score: str = "el2n", pool_size: int | None = None) -> Selection:
    """Choose a coreset of ``budget`` samples (an int, or a string like ``"2%"`` of the pool) with ``method``.

    Coverage methods (dealrec, ccs, influence_only, effort_only) hard-prune and stratify; top-m methods
    (greedy, grand, el2n), random and kcenter use the whole pool. ``params`` records every setting used.
    The pool size comes from the scores (or embeddings); ``pool_size`` gives it when there are none (random).
    """
    if method not in METHODS:
        raise ValueError(f"selection method must be one of {list(METHODS)}, got {method!r}")
    n = _pool_size(scores, embeddings, pool_size)
    m = _resolve(budget, n)
    s = selection_score(method, scores, lambda_=lambda_, normalization=normalization, ccs_score=ccs_score)
    extra: dict[str, Any] = {"method": method}
    if method in COVERAGE_METHODS:
        sel = coverage_select(s, m, strata, hard_prune, seed)
    elif method in TOP_METHODS:
        sel = top_select(s, m)
    elif method == "random":
        sel = random_select(n, m, seed)
    else:
        if embeddings is None:
            raise ValueError("selection method 'kcenter' needs embeddings (an n x d array), got None")
        sel = kcenter_select(embeddings, m, seed)
    if s is not None:
        extra["normalization"] = normalization
        extra["scores"] = {"dealrec": ["influence", "effort"], "greedy": ["influence", "effort"],
                           "ccs": [ccs_score], "influence_only": ["influence"], "effort_only": ["effort"],
                           "grand": ["grand"], "el2n": ["el2n"]}[method]
    if method in ("dealrec", "greedy"):
        extra["lambda"] = float(lambda_)
    extra["seed"] = int(seed)
    return replace(sel, params={**sel.params, **extra})


def settings_used(method: str) -> tuple[str, ...]:
    """The keyword settings of :func:`select` (SelectionConfig fields of the same names) that ``method`` reads,
    besides budget and seed. Result caches hash only these, so that e.g. changing ``lambda_`` does not
    invalidate a random coreset."""
    if method not in METHODS:
        raise ValueError(f"selection method must be one of {list(METHODS)}, got {method!r}")
    used: tuple[str, ...] = ()
    if method in COVERAGE_METHODS + TOP_METHODS:
        used += ("normalization",)
    if method in COVERAGE_METHODS:
        used += ("strata", "hard_prune")
    if method in ("dealrec", "greedy"):
        used += ("lambda_",)
    if method == "ccs":
        used += ("ccs_score",)
    return used


def select_many(method: str, scores: Mapping[str, np.ndarray], budgets: Sequence[int | str],
                **kwargs: Any) -> dict[int, Selection]:
    """:func:`select` for each budget of a sweep with the same seed; keys are the resolved sample counts.
    Two budgets that resolve to one count (``10`` and ``"1%"`` of 1,000) are a BudgetError, not one entry."""
    n = _pool_size(scores, kwargs.get("embeddings"), kwargs.get("pool_size"))
    counts = [_resolve(b, n) for b in budgets]
    twice = sorted({c for c in counts if counts.count(c) > 1})
    if twice:
        same = [repr(b) for b, c in zip(budgets, counts, strict=True) if c == twice[0]]
        raise BudgetError(f"budgets {', '.join(same)} all resolve to {twice[0]} of the {n} samples: give each count "
                          "once")
    return {c: select(method, scores, b, **kwargs) for b, c in zip(budgets, counts, strict=True)}


def pool_strata(scores: np.ndarray, selection: Selection) -> np.ndarray:
    """Stratum of every pool sample under ``selection`` (same score it was chosen with); -1 if hard-pruned.

    All -1 for non-stratified selections.
    """
    s = check_score(scores, "selection score")
    out = np.full(s.size, -1, dtype=np.int64)
    if selection.edges is None:
        return out
    pruned, _ = _hard_prune_mask(s, int(selection.params["pruned"]))
    out[~pruned] = assign_strata(s[~pruned], selection.edges)
    return out
