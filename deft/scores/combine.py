"""Normalise per-sample scores and combine them into one selection score (algorithms.md §5).

Pure numpy. Every score is a 1-D array with one float per sample, in pool order. A score has a *direction*:
``"higher"`` means a larger value marks a sample worth keeping, ``"lower"`` the opposite; a ``"lower"`` score is
negated before normalising so that, after combining, a larger combined score always means "keep".

DEALRec's combination is ``S = minmax(influence) + lambda * minmax(effort)``; see :func:`dealrec_score`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

NORMALIZATIONS = ("minmax", "rank", "zscore")
DIRECTIONS = ("higher", "lower")


def check_score(x: np.ndarray, name: str) -> np.ndarray:
    """``x`` as a float64 vector, or a ValueError that says how many values are NaN or infinite."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"score '{name}' must be one-dimensional (one value per sample), got shape {arr.shape}")
    bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
    if bad:
        raise ValueError(f"score '{name}' has {bad} non-finite value(s) (NaN or inf) out of {arr.size}")
    return arr


def average_ranks(x: np.ndarray) -> np.ndarray:
    """0-based ranks of ``x`` in ascending order; tied values share the mean of their positions.

    Vectorised: one stable argsort, then each run of equal sorted values gets the mean of its positions.
    """
    arr = np.asarray(x)
    n = arr.size
    order = np.argsort(arr, kind="stable")
    sorted_vals = arr[order]
    is_start = np.empty(n, dtype=bool)
    is_start[:1] = True
    np.not_equal(sorted_vals[1:], sorted_vals[:-1], out=is_start[1:])
    starts = np.flatnonzero(is_start)
    ends = np.append(starts[1:], n)  # exclusive
    group = np.cumsum(is_start) - 1
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = ((starts + ends - 1) / 2.0)[group]
    return ranks


def normalize(x: np.ndarray, method: str = "minmax", *, name: str = "score") -> np.ndarray:
    """Map a score to a comparable scale; never returns NaN.

    - ``minmax``: ``(x - min) / (max - min)`` in [0, 1]; a constant score maps to all zeros.
    - ``rank``: average rank divided by ``n - 1``, i.e. quantiles in [0, 1]; ties share their mean quantile,
      so a constant score maps to 0.5 everywhere (a single sample maps to 0).
    - ``zscore``: ``(x - mean) / std`` (population std); a constant score maps to all zeros.

    NaN or infinite input is a ValueError naming how many values are bad (``name`` labels the message).
    """
    if method not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {list(NORMALIZATIONS)}, got {method!r}")
    arr = check_score(x, name)
    if arr.size == 0:
        return arr.copy()
    if method == "minmax":
        lo, hi = arr.min(), arr.max()
        # A constant score carries no ordering information: zeros keep it neutral in a weighted sum.
        return np.zeros_like(arr) if hi == lo else (arr - lo) / (hi - lo)
    if method == "rank":
        return average_ranks(arr) / (arr.size - 1) if arr.size > 1 else np.zeros_like(arr)
    std = arr.std()
    return np.zeros_like(arr) if std == 0 else (arr - arr.mean()) / std


def combine(
    scores: Mapping[str, np.ndarray],
    weights: Mapping[str, float],
    directions: Mapping[str, str] | None = None,
    method: str = "minmax",
) -> np.ndarray:
    """Weighted sum of normalised scores: ``sum_k weights[k] * normalize(sign_k * scores[k])``.

    ``weights`` names the scores that take part (other keys of ``scores`` are ignored). ``directions`` maps a
    score name to ``"higher"`` or ``"lower"`` (= which end to keep); a missing name means ``"higher"``.
    A larger result always means "keep".
    """
    if not weights:
        raise ValueError("combine needs at least one weighted score, got no weights")
    directions = dict(directions or {})
    bad_dirs = {k: v for k, v in directions.items() if v not in DIRECTIONS}
    if bad_dirs:
        raise ValueError(f"directions must be 'higher' or 'lower', got {bad_dirs}")
    missing = [k for k in weights if k not in scores]
    if missing:
        raise ValueError(f"score '{missing[0]}' is needed but missing; available scores: {sorted(scores)}")
    terms = []
    for key, weight in weights.items():
        if not np.isfinite(weight):
            raise ValueError(f"weight of score '{key}' must be a finite number, got {weight!r}")
        raw = check_score(scores[key], key)
        # Negating a "lower is keep" score before normalising keeps every normaliser's meaning intact.
        signed = -raw if directions.get(key, "higher") == "lower" else raw
        terms.append(float(weight) * normalize(signed, method, name=key))
        if terms[-1].size != terms[0].size:
            first = next(iter(weights))
            raise ValueError(f"score '{key}' has {terms[-1].size} values, score '{first}' has {terms[0].size}")
    return np.sum(terms, axis=0)


def dealrec_score(
    influence: np.ndarray, effort: np.ndarray, lambda_: float, method: str = "minmax"
) -> np.ndarray:
    """DEALRec's combined score ``S = norm(influence) + lambda * norm(effort)`` (both "higher = keep")."""
    return combine({"influence": influence, "effort": effort}, {"influence": 1.0, "effort": lambda_}, None, method)
