"""Prune report: plots, coverage, score agreement, Markdown."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from deft.report import (
    coverage_table,
    markdown_table,
    plot_coverage,
    plot_score_agreement,
    plot_score_distribution,
    plot_stage_costs,
    popularity_deciles,
    prune_report_markdown,
    score_agreement,
)
from deft.selection import coverage_select, pool_strata, select

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path, snippet: str) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 1000
    assert snippet.startswith("![") and snippet.endswith(f"({path.name})")
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]  # no temporary left behind


@pytest.fixture(scope="module")
def scores() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    infl = rng.normal(size=600)
    return {"influence": infl, "effort": 0.5 * infl + rng.normal(size=600)}


@pytest.fixture()
def hand_pool() -> tuple[pd.DataFrame, pd.Series]:
    # Ten items i0..i9 with popularity 1..10, so item i_d is alone in popularity decile d + 1.
    popularity = pd.Series({f"i{d}": d + 1 for d in range(10)})
    pool = pd.DataFrame({"user": ["u1", "u1", "u2", "u2", "u3", "u3", "u4", "u4"],
                         "target_item": ["i0", "i9", "i9", "i9", "i5", "i0", "i1", "i2"]})
    return pool, popularity


# ----------------------------------------------------------------------------------------------- plots


def test_plot_score_distribution(tmp_path: Path, scores: dict) -> None:
    sel = select("dealrec", scores, 60, strata=10)
    from deft.selection import selection_score

    s = selection_score("dealrec", scores)
    assert_png(tmp_path / "scores.png", plot_score_distribution(s, sel, tmp_path / "scores.png"))
    with pytest.raises(ValueError, match="selection was made over 600"):
        plot_score_distribution(s[:10], sel, tmp_path / "bad.png")


def test_plot_score_distribution_unstratified_and_constant(tmp_path: Path) -> None:
    s = np.full(50, 1.0)
    sel = coverage_select(s, 5, strata=4)
    assert_png(tmp_path / "c.png", plot_score_distribution(s, sel, tmp_path / "c.png"))
    sel = select("random", {"x": s}, 5)
    assert_png(tmp_path / "r.png", plot_score_distribution(s, sel, tmp_path / "r.png"))


def test_plot_coverage(tmp_path: Path, hand_pool: tuple) -> None:
    pool, popularity = hand_pool
    table = coverage_table(pool, np.array([0, 4]), popularity)
    assert_png(tmp_path / "cov.png", plot_coverage(table, tmp_path / "cov.png"))


@pytest.mark.parametrize("n", [300, 6000])  # scatter, then hexbin
def test_plot_score_agreement(tmp_path: Path, n: int) -> None:
    rng = np.random.default_rng(1)
    s = {"influence": rng.normal(size=n), "effort": rng.normal(size=n)}
    assert_png(tmp_path / "agree.png", plot_score_agreement(s, tmp_path / "agree.png"))


def test_plot_stage_costs(tmp_path: Path) -> None:
    costs = {"surrogate": {"wall_s": 12.5, "peak_mb": 800.0}, "influence": {"wall_s": 3.0, "peak_mb": 900.0},
             "selection": {"wall_s": 0.1, "peak_mb": 910.0}}
    assert_png(tmp_path / "costs.png", plot_stage_costs(costs, tmp_path / "costs.png"))
    with pytest.raises(ValueError, match="at least one stage"):
        plot_stage_costs({}, tmp_path / "none.png")


# ----------------------------------------------------------------------------------------------- coverage


def test_popularity_deciles_split_ties_by_item_id() -> None:
    pop = pd.Series({f"i{k:02d}": 1 for k in range(20)})  # all tied
    dec = popularity_deciles(pop.iloc[::-1])  # order of the Series must not matter
    assert dec["i00"] == 1 and dec["i01"] == 1 and dec["i02"] == 2 and dec["i19"] == 10


def test_coverage_table_by_hand(hand_pool: tuple) -> None:
    pool, popularity = hand_pool
    table = coverage_table(pool, np.array([1, 2, 4]), popularity).set_index("group")
    # coreset rows: (u1, i9), (u2, i9), (u3, i5)
    assert table.loc["users", ["pool", "coreset"]].tolist() == [4, 3]
    assert table.loc["users", "coverage"] == pytest.approx(0.75)
    assert table.loc["target items", ["pool", "coreset"]].tolist() == [5, 2]  # i0 i1 i2 i5 i9
    assert table.loc["target items", "coverage"] == pytest.approx(0.4)
    d10 = table.loc["popularity decile 10"]  # item i9: 3 of 8 pool samples, 2 of 3 coreset samples
    assert (d10["pool"], d10["coreset"]) == (1, 1)
    assert d10["pool_share"] == pytest.approx(3 / 8) and d10["coreset_share"] == pytest.approx(2 / 3)
    d1 = table.loc["popularity decile 1"]  # item i0: 2 of 8 pool samples, none chosen
    assert d1["pool_share"] == pytest.approx(2 / 8) and d1["coreset_share"] == 0.0 and d1["coverage"] == 0.0
    assert np.isnan(table.loc["popularity decile 4", "coverage"])  # i3 is never a target
    assert table["pool_share"].sum() == pytest.approx(1.0) and table["coreset_share"].sum() == pytest.approx(1.0)


def test_coverage_table_requires_popularity_of_every_target(hand_pool: tuple) -> None:
    pool, popularity = hand_pool
    with pytest.raises(ValueError, match=r"1 target item\(s\) have no popularity, e.g. 'i9'"):
        coverage_table(pool, np.array([0]), popularity.drop("i9"))


# ----------------------------------------------------------------------------------------------- agreement


def test_agreement_identical_and_reversed() -> None:
    x = np.random.default_rng(2).normal(size=200)
    same = score_agreement({"influence": x, "effort": x.copy()})
    assert same["spearman"] == pytest.approx(1.0) and same["top_jaccard"] == 1.0 and same["top_k"] == 20
    rev = score_agreement({"influence": x, "effort": -x})
    assert rev["spearman"] == pytest.approx(-1.0) and rev["top_jaccard"] == 0.0


def test_agreement_per_stratum_and_named_scores(scores: dict) -> None:
    s = {**scores, "el2n": scores["influence"] ** 3}
    out = score_agreement(s, names=("influence", "el2n"))
    assert (out["a"], out["b"], out["spearman"]) == ("influence", "el2n", pytest.approx(1.0))
    combined = scores["influence"] + scores["effort"]
    sel = coverage_select(combined, 50, strata=5)
    strata = pool_strata(combined, sel)
    out = score_agreement(scores, strata)
    assert [r["stratum"] for r in out["per_stratum"]] == list(np.unique(strata[strata >= 0]))
    assert sum(r["n"] for r in out["per_stratum"]) == 600 - sel.params["pruned"]
    assert all(-1.0 <= r["spearman"] <= 1.0 for r in out["per_stratum"] if r["n"] > 2)
    with pytest.raises(ValueError, match="two score names"):
        score_agreement(scores, names=("influence", "nope"))


# ----------------------------------------------------------------------------------------------- markdown


def test_markdown_table_formats_cells() -> None:
    text = markdown_table(["a", "b"], [(1, 0.123456), ("x", float("nan"))])
    assert text.splitlines() == ["| a | b |", "|---|---|", "| 1 | 0.1235 |", "| x | – |"]


def test_prune_report_markdown_has_every_section(hand_pool: tuple, scores: dict) -> None:
    pool, popularity = hand_pool
    sel = select("dealrec", scores, 40, strata=8, lambda_=0.3)
    text = prune_report_markdown(
        "Pruning demo", sel,
        config={"selection": {"method": "dealrec", "budgets": [40], "lambda_": 0.3}},
        coverage=coverage_table(pool, np.array([0, 1]), popularity),
        agreement=score_agreement(scores), costs={"selection": {"wall_s": 0.01, "peak_mb": 100.0}},
        images=["![scores](scores.png)"])
    for heading in ("# Pruning demo", "## Settings", "## Counts", "## Strata", "## Coverage",
                    "## Score agreement: influence vs effort", "## Stage costs", "## Plots"):
        assert heading in text
    assert "| selection.lambda_ | 0.3 |" in text and "| chosen | 40 |" in text and "(scores.png)" in text
    strata_rows = [ln for ln in text.splitlines() if ln.startswith("| ") and "[" in ln and ln.count("|") == 5]
    assert sum(int(r.split("|")[4]) for r in strata_rows) == 40


def test_prune_report_markdown_minimal(scores: dict) -> None:
    text = prune_report_markdown("Random", select("random", scores, 10))
    assert "## Counts" in text and "## Strata" not in text and "## Coverage" not in text


def test_spearman_matches_scipy_with_ties() -> None:
    stats = pytest.importorskip("scipy.stats")
    from deft.report import spearman

    rng = np.random.default_rng(3)
    a, b = rng.integers(0, 5, size=300).astype(float), rng.normal(size=300)
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic)
    assert np.isnan(spearman(np.ones(5), b[:5]))


def test_status_banner_only_while_runs_are_pending():
    from deft.report import status_lines

    assert status_lines(None) == []
    assert status_lines({"finished": 3, "planned": 3, "pending": []}) == []
    lines = status_lines({"finished": 1, "planned": 3, "pending": ["full-all-s0", "grand-6-s0"],
                          "estimated_remaining_s": 7200})
    assert "1 of 3 runs finished" in lines[0] and "2.0 h" in lines[0] and "full-all-s0, grand-6-s0" in lines[0]
    assert "headline" not in lines[0]
    lines = status_lines({"finished": 1, "planned": 3, "pending": ["full-all-s0", "grand-6-s0"],
                          "estimated_remaining_s": 7200, "headline_pending": 1, "headline_remaining_s": 5400})
    assert "headline runs (random, dealrec, full), which run first, need about 1.5 h of it (1 run)" in lines[0]
    # when only headline runs are left, the total says it all
    lines = status_lines({"finished": 1, "planned": 2, "pending": ["full-all-s0"], "estimated_remaining_s": 7200,
                          "headline_pending": 1, "headline_remaining_s": 7200})
    assert "headline" not in lines[0]


def test_machine_lines_name_what_each_machine_measured_only_when_there_are_several():
    from deft.report.experiment import machine_lines

    a, b = "AMD EPYC (2 cores)", "Intel Xeon (2 cores)"
    one = {"shared_stages": {"effort": {"wall_s": 5.0, "machine": a}, "old": {"wall_s": 1.0}},
           "runs": [{"key": "random-8-s0", "machine": a, "train": {"sessions": [{"step": 0, "machine": a}]}}]}
    assert machine_lines(one, a) == []
    assert machine_lines({"runs": [{"key": "x", "train": {}}]}, a) == []  # recorded before machines were
    # everything measured elsewhere than where the report is written: say so
    assert machine_lines(one, b)[1] == f"  - {a}: stage effort, random-8-s0"
    carried = {"shared_stages": one["shared_stages"], "runs": [
        *one["runs"], {"key": "full-all-s0", "machine": b,
                       "train": {"sessions": [{"step": 0, "machine": a}, {"step": 634, "machine": b}]}}]}
    lines = machine_lines(carried, b)
    assert "more than one machine" in lines[0]
    assert lines[1:] == [f"  - {a}: stage effort, random-8-s0, full-all-s0 (training from step 0)",
                         f"  - {b}: full-all-s0 (training from step 634), full-all-s0 (evaluation)"]


def test_verdict_placeholder_says_whether_dealrec_is_pending():
    from deft.report.experiment import _no_verdict, _users_phrase

    assert _no_verdict({"status": {"pending": ["dealrec-256-s0"]}}) == "no `dealrec` run has finished yet."
    assert _no_verdict({"status": {"pending": []}}) == "no `dealrec` arm in this experiment."
    assert _users_phrase({"test_users": 943, "references": {"sasrec": {"users": 943}}}) == "all 943 of them"
    assert _users_phrase({"test_users": 300, "references": {"sasrec": {"users": 943}}}) == "only the first 300"


def test_speed_lines_report_median_and_range_per_sample_and_per_user():
    from deft.report.experiment import speed_lines

    runs = [{"train": {"samples_per_s": 2.0}, "eval": {"s_per_user": 0.4}},
            {"train": {"samples_per_s": 1.0}, "eval": {"s_per_user": 0.5}},
            {"train": {"samples_per_s": 4.0}, "eval": {"s_per_user": 0.45}}]
    text = "\n".join(speed_lines(runs))
    assert "0.500 s (median; range 0.250-1.000, 3 runs) per training sample" in text
    assert "0.450 s (median; range 0.400-0.500, 3 runs) per test user" in text
    assert text.startswith("## Speed on this machine")
    assert speed_lines([]) == []
    # runs carried from another machine are summarised apart: their speeds do not mix with this one's
    runs[0]["machine"] = runs[1]["machine"] = "AMD EPYC (2 cores)"
    runs[2]["machine"] = "Intel Xeon (2 cores)"
    lines = speed_lines(runs, "Intel Xeon (2 cores)")
    assert lines[0] == "## Speed by machine" and lines[2] == "On AMD EPYC (2 cores):"
    assert "0.750 s (median; range 0.500-1.000, 2 runs) per training sample" in lines[4]
    assert lines[7] == "On this machine:" and "0.250 s (1 run)" in lines[9]
    assert speed_lines(runs[:2], "Intel Xeon (2 cores)")[2] == "On AMD EPYC (2 cores):"


def _ci(against, lo, hi, budget=256):
    return {"arm": "dealrec", "budget": budget, "against": against, "mean_diff": (lo + hi) / 2, "lo": lo, "hi": hi}


def test_verdict_words_come_from_the_intervals_not_the_point_estimates():
    from deft.report.experiment import verdict

    summary = [{"arm": "dealrec", "budget": 256, "ndcg@10": 0.0310, "fraction_of_full": 0.05},
               {"arm": "random", "budget": 256, "ndcg@10": 0.0300},
               {"arm": "el2n", "budget": 256, "ndcg@10": 0.0309},
               {"arm": "full", "budget": None, "ndcg@10": 0.0311}]
    unclear = verdict(summary, [_ci("random", -0.004, 0.006), _ci("full", -0.006, 0.005)])[0]
    assert "BEATS" not in unclear and "WORSE" not in unclear
    assert "no clear difference from random 0.0300" in unclear and "no clear difference from full 0.0311" in unclear
    assert "higher than the best other baseline (el2n) 0.0309 (point estimates; no paired interval)" in unclear
    assert "5.0% of the full arm's fine-tuning time" in unclear
    clear = verdict(summary, [_ci("random", 0.001, 0.003), _ci("full", -0.003, -0.001)])[0]
    assert "BEATS random 0.0300 (+0.0020, 95% [+0.0010, +0.0030])" in clear
    assert "WORSE than full 0.0311" in clear
    # with a paired interval against the best other baseline, that part is worded from it too
    paired = verdict(summary, [_ci("random", 0.001, 0.003), _ci("el2n", -0.001, 0.002)])[0]
    assert "no clear difference from the best other baseline (el2n) 0.0309 (+0.0005, 95% [-0.0010, +0.0020]" \
        in paired


def test_verdict_uses_the_configured_cutoff_when_10_is_absent():
    from deft.config import headline_k
    from deft.report.experiment import headline_metric, verdict

    assert headline_k([10, 20]) == 10 and headline_k([20, 10]) == 10 and headline_k([5, 20]) == 5
    assert headline_metric([5, 20]) == "ndcg@5"
    summary = [{"arm": "dealrec", "budget": 8, "ndcg@5": 0.2}, {"arm": "random", "budget": 8, "ndcg@5": 0.1}]
    (line,) = verdict(summary, [_ci("random", 0.05, 0.15, budget=8)], "ndcg@5")
    assert line.startswith("budget 8: dealrec NDCG@5 0.2000; BEATS random 0.1000")


def test_epochs_cell_shows_the_kept_epoch_where_recorded():
    from deft.report.experiment import _epochs_cell

    assert _epochs_cell({"epochs": [4, 6], "best_epochs": [3.0, 5.5]}) == "4 (best 3), 6 (best 5.5)"
    assert _epochs_cell({"epochs": [4, 6], "best_epochs": [None, float("nan")]}) == "4, 6"  # older records
    assert _epochs_cell({"epochs": [4]}) == "4"
    # The kept adapter from the last epoch allowed: early stopping never fired.
    assert _epochs_cell({"epochs": [8, 8], "best_epochs": [8.0, 7.0]}, cap=8) == "8 (best 8, at the cap), 8 (best 7)"


def test_runs_early_stopping_never_ended_are_named():
    from deft.report.experiment import convergence_note, runs_table

    run = {"key": "full-all-s0", "samples": 10, "metrics": {"ndcg@10": 0.01, "recall@10": 0.02},
           "train": {"epochs": 8, "best_epoch": 8.0, "wall_s": 10.0}, "eval": {"wall_s": 1.0, "s_per_user": 0.1}}
    stopped = {**run, "key": "random-8-s0", "train": {**run["train"], "best_epoch": 7.0}}
    (note, _) = convergence_note([run, stopped], cap=8)
    assert note.startswith("**Not shown converged**: full-all-s0 kept") and "random-8-s0" not in note
    assert "`training.epochs` = 8" in note
    assert convergence_note([stopped], cap=8) == [] and convergence_note([run], cap=None) == []
    assert "| 8 (best 8, at the cap) |" in runs_table([run], [10], cap=8)


def test_references_far_above_every_arm_are_named_not_drawn() -> None:
    from deft.report.experiment import split_references

    summary = [{"arm": "random", "budget": 256, "ndcg@10": 0.003, "ndcg@10_std": 0.001},
               {"arm": "full", "budget": None, "ndcg@10": 0.005}]
    refs = {"sasrec": {"ndcg@10": 0.0554}, "popularity": {"ndcg@10": 0.012}, "note": "not a reference"}
    drawn, off = split_references(summary, "ndcg@10", refs)
    assert drawn == {"popularity": 0.012} and off == {"sasrec": 0.0554}  # 3 x the full pool's 0.005 = 0.015
    assert split_references([], "ndcg@10", refs) == ({"sasrec": 0.0554, "popularity": 0.012}, {})


def test_metric_by_budget_plot_with_references_off_the_scale(tmp_path: Path) -> None:
    from deft.report.experiment import plot_metric_by_budget

    summary = [{"arm": a, "budget": b, "ndcg@10": 0.003, "ndcg@10_std": 0.001}
               for a in ("random", "dealrec") for b in (256, 512)]
    plot_metric_by_budget(summary, tmp_path / "p.png", references={"sasrec": {"ndcg@10": 0.0554}})
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_verdict_says_when_the_comparison_covers_fewer_seeds_than_the_levels():
    from deft.report.experiment import comparison_table, verdict

    summary = [{"arm": "dealrec", "budget": 256, "ndcg@10": 0.0025, "seeds": 2},
               {"arm": "random", "budget": 256, "ndcg@10": 0.0026, "seeds": 3}]
    ci = {**_ci("random", -0.002, 0.0012), "seeds": [0, 1], "against_seeds": [0, 1]}
    assert "on seeds 0, 1, which both have finished" in verdict(summary, [ci])[0]
    assert "| 0, 1 / 0, 1 |" in comparison_table([ci])
    assert comparison_table([{**ci, "p_value": 0.0, "n": 1000}]).endswith("| < 0.002 |")  # no resample reached 0
    assert comparison_table([{**ci, "p_value": 0.022, "n": 1000}]).endswith("| 0.022 |")
    summary[1]["seeds"] = 2
    assert "which both have finished" not in verdict(summary, [ci])[0]
    one = {**ci, "seeds": [0], "against_seeds": [0]}
    assert "on seed 0, which both have finished" in verdict(summary, [one])[0]


def test_reference_section_names_both_history_rules_and_flags_a_mismatch():
    from deft.report.experiment import _protocol_phrase

    same = _protocol_phrase({"surrogate": {"exclude_history": False}, "evaluation": {"exclude_history": False}})
    assert same.count("history items included") == 2 and "not comparable" not in same
    differ = _protocol_phrase({"surrogate": {"exclude_history": False}, "evaluation": {"exclude_history": True}})
    assert "excluding each user's history items" in differ and "not comparable" in differ


def test_every_run_is_listed_with_its_own_numbers():
    from deft.report.experiment import runs_table

    run = {"key": "dealrec-256-s1", "samples": 256,
           "metrics": {"recall@10": 0.0085, "ndcg@10": 0.0040, "recall@20": 0.0148, "ndcg@20": 0.0056},
           "train": {"epochs": 6, "best_epoch": 5, "wall_s": 1266.2}, "eval": {"wall_s": 445.4, "s_per_user": 0.4723}}
    table = runs_table([run, {**run, "key": "random-256-s1", "train": {"epochs": 4, "wall_s": 875.0}}], [10, 20])
    assert "| dealrec-256-s1 | 256 | 0.0085 | 0.0040 | 0.0148 | 0.0056 | 6 (best 5) | 1266 | 445 | 0.472 |" in table
    assert "| random-256-s1 | 256 | 0.0085 | 0.0040 | 0.0148 | 0.0056 | 4 | 875 | 445 | 0.472 |" in table


def test_quality_vs_cost_is_drawn_only_against_a_full_arm(tmp_path):
    from deft.report.experiment import plot_quality_vs_cost

    full = {"arm": "full", "budget": None, "ndcg@10": 0.01, "fraction_of_full": 1.0}
    pruned = [{"arm": "dealrec", "budget": 256, "ndcg@10": 0.004, "ndcg@10_std": 0.001, "fraction_of_full": 0.13,
               "fraction_machines": ["AMD", "Intel"]},
              {"arm": "random", "budget": 256, "ndcg@10": 0.003, "fraction_of_full": 0.02}]
    assert plot_quality_vs_cost([full, *pruned], tmp_path / "qc.png")
    assert (tmp_path / "qc.png").stat().st_size > 0
    # no full arm, or no cost recorded: nothing to place on the axis, and nothing is written
    assert not plot_quality_vs_cost(pruned, tmp_path / "none.png")
    assert not plot_quality_vs_cost([full, *[{**r, "fraction_of_full": None} for r in pruned]], tmp_path / "no.png")
    assert not (tmp_path / "none.png").exists() and not (tmp_path / "no.png").exists()
    # a plot from an earlier report does not outlive the arm it needed
    assert not plot_quality_vs_cost(pruned, tmp_path / "qc.png") and not (tmp_path / "qc.png").exists()
    # a pruned arm may cost more than full (a small pool, scored whole); a share rounded to 0 is left out
    costly = [full, {**pruned[0], "fraction_of_full": 3.5}, {**pruned[1], "fraction_of_full": 0.0}]
    assert plot_quality_vs_cost(costly, tmp_path / "costly.png")
