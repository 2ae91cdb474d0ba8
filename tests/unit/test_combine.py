"""Normalisation and combination of scores (algorithms.md §5)."""

from __future__ import annotations

import numpy as np
import pytest

from deft.scores.combine import average_ranks, combine, dealrec_score, normalize


def test_minmax_maps_to_unit_interval() -> None:
    np.testing.assert_allclose(normalize(np.array([2.0, 4.0, 3.0, 6.0]), "minmax"), [0.0, 0.5, 0.25, 1.0])


def test_rank_gives_quantiles_with_averaged_ties() -> None:
    # sorted: 1 (pos 0), 2, 2 (pos 1, 2 -> 1.5), 5 (pos 3); divided by n - 1 = 3
    np.testing.assert_allclose(normalize(np.array([5.0, 2.0, 1.0, 2.0]), "rank"), [1.0, 0.5, 0.0, 0.5])


def test_zscore_has_zero_mean_unit_std() -> None:
    z = normalize(np.array([1.0, 2.0, 3.0, 4.0]), "zscore")
    assert z.mean() == pytest.approx(0.0)
    assert z.std() == pytest.approx(1.0)


@pytest.mark.parametrize(("method", "expected"), [("minmax", 0.0), ("zscore", 0.0), ("rank", 0.5)])
def test_constant_scores_never_give_nan(method: str, expected: float) -> None:
    out = normalize(np.full(7, 3.25), method)
    assert not np.isnan(out).any()
    np.testing.assert_array_equal(out, np.full(7, expected))


@pytest.mark.parametrize("method", ["minmax", "rank", "zscore"])
def test_empty_and_single_inputs(method: str) -> None:
    assert normalize(np.array([]), method).size == 0
    assert np.isfinite(normalize(np.array([4.0]), method)).all()


@pytest.mark.parametrize("method", ["minmax", "rank", "zscore"])
def test_nonfinite_input_names_the_count(method: str) -> None:
    with pytest.raises(ValueError, match=r"'influence' has 3 non-finite"):
        normalize(np.array([1.0, np.nan, np.inf, -np.inf, 2.0]), method, name="influence")


def test_unknown_normalization_is_an_error() -> None:
    with pytest.raises(ValueError, match="normalization must be one of"):
        normalize(np.arange(3.0), "softmax")


def test_average_ranks_deterministic_on_ties() -> None:
    np.testing.assert_array_equal(average_ranks(np.array([3, 1, 3, 3, 0])), [3.0, 1.0, 3.0, 3.0, 0.0])


def test_combine_is_weighted_sum_of_normalised_scores() -> None:
    a, b = np.array([0.0, 5.0, 10.0]), np.array([1.0, 3.0, 2.0])
    out = combine({"a": a, "b": b}, {"a": 1.0, "b": 2.0}, {"a": "higher", "b": "higher"}, "minmax")
    np.testing.assert_allclose(out, [0.0, 0.5 + 2.0, 1.0 + 1.0])


def test_combine_lower_direction_flips_the_score() -> None:
    a = np.array([0.0, 5.0, 10.0])
    np.testing.assert_allclose(combine({"a": a}, {"a": 1.0}, {"a": "lower"}), [1.0, 0.5, 0.0])
    np.testing.assert_allclose(combine({"a": a}, {"a": 1.0}, {"a": "lower"}, "rank"), [1.0, 0.5, 0.0])


def test_combine_ignores_unweighted_scores_and_defaults_to_higher() -> None:
    scores = {"a": np.array([1.0, 2.0]), "junk": np.array([np.nan, 1.0])}
    np.testing.assert_allclose(combine(scores, {"a": 1.0}), [0.0, 1.0])


def test_combine_missing_key_names_it_and_the_available_ones() -> None:
    with pytest.raises(ValueError, match=r"'effort' is needed but missing; available scores: \['influence'\]"):
        combine({"influence": np.ones(3)}, {"influence": 1.0, "effort": 0.5})


def test_combine_rejects_bad_direction_and_length_mismatch() -> None:
    with pytest.raises(ValueError, match="'higher' or 'lower'"):
        combine({"a": np.ones(2)}, {"a": 1.0}, {"a": "up"})
    with pytest.raises(ValueError, match="has 3 values"):
        combine({"a": np.ones(2), "b": np.ones(3)}, {"a": 1.0, "b": 1.0})


def test_dealrec_score_matches_formula() -> None:
    rng = np.random.default_rng(1)
    infl, eff = rng.normal(size=50), rng.gamma(2.0, size=50)
    mm = lambda x: (x - x.min()) / (x.max() - x.min())  # noqa: E731
    np.testing.assert_allclose(dealrec_score(infl, eff, 0.3), mm(infl) + 0.3 * mm(eff))
