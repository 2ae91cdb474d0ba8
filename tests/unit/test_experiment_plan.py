"""The experiment's run order (headline comparison first), its remaining-time estimate, and its paired
comparisons while runs are still missing."""

import numpy as np
import pandas as pd
import pytest

from deft.config import from_dict
from deft.errors import ArtifactMismatchError, ConfigError
from deft.experiment import ArmRun, compare, plan_runs, remaining_seconds


def _cfg(**experiment):
    return from_dict({"experiment": experiment})


def test_headline_runs_of_every_seed_then_full_come_before_other_arms():
    cfg = _cfg(arms=["full", "random", "grand", "dealrec"], budgets=[256, 512], seeds=[0, 1], full_seeds=[0])
    keys = [run.key for run in plan_runs(cfg, 10_000)]
    assert keys == [
        "random-256-s0", "dealrec-256-s0", "random-512-s0", "dealrec-512-s0",
        "random-256-s1", "dealrec-256-s1", "random-512-s1", "dealrec-512-s1", "full-all-s0",
        "grand-256-s0", "grand-512-s0", "grand-256-s1", "grand-512-s1",
    ]


def test_every_planned_run_once_including_full_seeds_outside_the_pruned_seeds():
    cfg = _cfg(arms=["full", "random", "el2n"], budgets=["10%"], seeds=[0, 1], full_seeds=[0, 5])
    runs = plan_runs(cfg, 1_000)
    keys = [run.key for run in runs]
    assert len(keys) == len(set(keys)) == 2 * 2 + 2
    # the full pool's extra seed still comes before the other arms
    assert keys.index("full-all-s5") < keys.index("el2n-100-s0") and "random-100-s1" in keys


def test_remaining_estimate_scales_training_by_samples():
    done = [{"samples": 100, "train": {"wall_s": 50.0}, "eval": {"wall_s": 10.0}},
            {"samples": 300, "train": {"wall_s": 150.0}, "eval": {"wall_s": 30.0}}]
    pending = [ArmRun("random", 200, 1), ArmRun("full", None, 0)]
    # 0.5 s per sample, 20 s per evaluation: (20 + 100) + (20 + 0.5 * 1000)
    assert remaining_seconds(done, pending, pool_size=1_000) == 640.0
    assert remaining_seconds([], pending, pool_size=1_000) is None
    # a checkpoint of the full run holding 300 s of training leaves 200 of its 500 s to go
    assert remaining_seconds(done, pending, pool_size=1_000, spent={"full-all-s0": 300.0}) == 340.0
    assert remaining_seconds(done, pending, pool_size=1_000, spent={"full-all-s0": 900.0}) == 140.0  # not < 0


def test_remaining_estimate_takes_the_pace_of_alike_runs_on_this_machine():
    def run(budget, samples, train_s, eval_s, machine):
        return {"budget": budget, "samples": samples, "train": {"wall_s": train_s}, "eval": {"wall_s": eval_s},
                "machine": machine}

    done = [run(100, 100, 200.0, 40.0, "slow"),  # 2 s a sample on the slower CPU
            run(100, 100, 100.0, 20.0, "fast"),  # 1 s a sample here
            run(None, 1_000, 4_000.0, 30.0, "fast")]  # the full pool, trained for more epochs: 4 s a sample
    pruned, full = [ArmRun("random", 200, 1)], [ArmRun("full", None, 1)]
    assert remaining_seconds(done, pruned, 1_000, machine="fast") == 20.0 + 200.0
    assert remaining_seconds(done, full, 1_000, machine="fast") == 30.0 + 4_000.0
    # nothing finished here yet: every machine's runs, still alike ones first
    assert remaining_seconds(done, pruned, 1_000, machine="new") == 30.0 + 1.5 * 200
    # no finished run of the same kind: the others' pace rather than none
    assert remaining_seconds(done[:2], full, 1_000, machine="fast") == 20.0 + 1.0 * 1_000


def test_training_time_held_in_checkpoints_is_read_per_run(tmp_path):
    import json
    from types import SimpleNamespace

    from deft.experiment import trained_so_far

    state = tmp_path / "arms" / "full-all-s0" / "train" / "checkpoint" / "state.json"
    state.parent.mkdir(parents=True)
    state.write_text(json.dumps({"step": 1268, "wall_s": 11980.9}))
    pipe = SimpleNamespace(run=SimpleNamespace(path=lambda *parts: tmp_path.joinpath(*parts)))
    assert trained_so_far(pipe, [ArmRun("full", None, 0), ArmRun("random", 256, 0)]) == {"full-all-s0": 11980.9}


def test_summary_is_mean_and_sample_std_over_seeds_with_cost_fraction():
    from deft.experiment import summarise

    def record(arm, budget, seed, ndcg, train_s):
        return {"arm": arm, "budget": budget, "seed": seed, "metrics": {"ndcg@10": ndcg},
                "train": {"wall_s": train_s, "epochs": 2}, "selection": {"wall_s": 0.0}, "eval": {"wall_s": 1.0}}

    records = [record("random", 10, s, v, 10.0) for s, v in enumerate([0.01, 0.02, 0.03])]
    records.append(record("full", None, 0, 0.05, 100.0))
    rows = {r["arm"]: r for r in summarise(records, _cfg(), {}, [])}
    assert rows["random"]["ndcg@10"] == 0.02
    assert abs(rows["random"]["ndcg@10_std"] - 0.01) < 1e-12  # sample std (ddof 1), not 0.0082
    assert rows["random"]["fraction_of_full"] == 0.1 and rows["full"]["ndcg@10_std"] == 0.0


def test_a_stage_without_a_cost_record_leaves_the_fraction_out():
    from deft.experiment import summarise
    from deft.report.experiment import experiment_table

    def record(arm, budget, train_s):
        return {"arm": arm, "budget": budget, "seed": 0, "metrics": {"ndcg@10": 0.1, "recall@10": 0.2},
                "train": {"wall_s": train_s, "epochs": 2}, "selection": {"wall_s": 1.0}, "eval": {"wall_s": 5.0}}

    records = [record("full", None, 100.0), record("dealrec", 8, 10.0), record("random", 8, 10.0)]
    costs = {"surrogate": {"wall_s": 5.0}, "influence": {"wall_s": 1.0}}  # effort's record is missing
    rows = {r["arm"]: r for r in summarise(records, _cfg(), costs, [])}
    assert rows["dealrec"]["fraction_of_full"] is None and rows["dealrec"]["missing_stage_costs"] == ["effort"]
    assert rows["random"]["fraction_of_full"] == 0.11 and rows["random"]["missing_stage_costs"] == []
    table = experiment_table(list(rows.values()), [10])
    assert "| – (no cost recorded for effort) |" in table and "| 11.0% |" in table


def _records(root, runs):
    """Records with per-user NDCG files: ``runs`` maps (arm, budget, seed) to the per-user values."""
    out = []
    for (arm, budget, seed), values in runs.items():
        path = f"{arm}-{budget}-s{seed}.parquet"
        pd.DataFrame({"user": range(len(values)), "ndcg@10": values}).to_parquet(root / path)
        out.append({"arm": arm, "budget": budget, "seed": seed, "per_user": path})
    return out


def test_comparison_against_random_uses_only_the_seeds_both_arms_finished(tmp_path):
    rng = np.random.default_rng(0)
    users = 200
    same = rng.random(users)
    runs = {("dealrec", 8, 0): same, ("dealrec", 8, 1): same, ("random", 8, 0): same, ("random", 8, 1): same,
            ("random", 8, 2): same + 0.5,  # a seed dealrec has not finished yet
            ("full", None, 0): same - 0.25}
    out = {(c["arm"], c["against"]): c for c in compare(tmp_path, _records(tmp_path, runs), _cfg())}
    matched = out[("dealrec", "random")]
    assert matched["seeds"] == matched["against_seeds"] == [0, 1]
    assert matched["mean_diff"] == 0.0  # not -0.5 / 3 from random's extra seed
    against_full = out[("random", "full")]
    assert against_full["seeds"] == [0, 1, 2] and against_full["against_seeds"] == [0]
    assert np.isclose(against_full["mean_diff"], 0.25 + 0.5 / 3)


def test_dealrec_alone_is_compared_with_every_other_baseline_on_shared_seeds(tmp_path):
    same = np.linspace(0.0, 1.0, 60)
    runs = {("dealrec", 8, 0): same + 0.1, ("dealrec", 8, 1): same + 0.1, ("random", 8, 0): same,
            ("el2n", 8, 0): same, ("el2n", 8, 1): same + 0.3, ("grand", 8, 2): same,  # no seed in common
            ("el2n", 16, 0): same, ("full", None, 0): same}
    pairs = {(c["arm"], c["budget"], c["against"]): c for c in compare(tmp_path, _records(tmp_path, runs), _cfg())}
    el2n = pairs[("dealrec", 8, "el2n")]
    assert el2n["seeds"] == el2n["against_seeds"] == [0, 1] and np.isclose(el2n["mean_diff"], 0.1 - 0.15)
    assert ("dealrec", 8, "grand") not in pairs  # no finished seed in common yet
    assert ("el2n", 8, "grand") not in pairs and ("el2n", 8, "random") in pairs  # others: random and full only
    assert not any(budget == 16 and arm == "dealrec" for arm, budget, _ in pairs)


def test_no_comparison_against_random_before_they_share_a_seed(tmp_path):
    same = np.linspace(0.0, 1.0, 50)
    runs = {("dealrec", 8, 1): same, ("random", 8, 0): same + 0.5}
    assert compare(tmp_path, _records(tmp_path, runs), _cfg()) == []


def test_runs_evaluated_on_other_users_are_refused_not_silently_trimmed(tmp_path):
    runs = {("dealrec", 8, 0): np.linspace(0.0, 1.0, 50), ("random", 8, 0): np.linspace(0.0, 1.0, 40)}
    with pytest.raises(ArtifactMismatchError, match=r"dealrec at budget 8 and random were evaluated on different "
                                                    r"test users \(10 in one only, e\.g\. 40\)"):
        compare(tmp_path, _records(tmp_path, runs), _cfg())


def test_budgets_that_cannot_run_are_refused_before_any_run():
    with pytest.raises(ConfigError, match="one count twice"):
        plan_runs(_cfg(arms=["random"], budgets=[100, "10%"]), 1_000)
    with pytest.raises(ConfigError, match="exceeds the pool of 1000"):
        plan_runs(_cfg(arms=["random"], budgets=[1_001]), 1_000)
    # dealrec draws from what hard-pruning leaves (0.1 of 1,000 by default); random takes the whole pool
    with pytest.raises(ConfigError, match="exceeds the 900 samples left after hard-pruning 0.1 .* dealrec"):
        plan_runs(_cfg(arms=["random", "dealrec"], budgets=[901]), 1_000)
    assert [r.key for r in plan_runs(_cfg(arms=["random"], budgets=[901]), 1_000)] == ["random-901-s0"]
    with pytest.raises(ConfigError, match="repeats an arm"):
        _cfg(arms=["random", "dealrec", "random"])


def test_a_fraction_from_times_on_different_machines_is_marked():
    from deft.experiment import summarise
    from deft.report.experiment import experiment_table, verdict

    def record(arm, budget, train_s, machines):
        return {"arm": arm, "budget": budget, "seed": 0, "metrics": {"ndcg@10": 0.1, "recall@10": 0.2},
                "train": {"wall_s": train_s, "epochs": 2,
                          "sessions": [{"step": 0, "wall_s": 0.0, "machine": m} for m in machines]},
                "selection": {"wall_s": 0.0}, "eval": {"wall_s": 5.0}, "machine": machines[-1]}

    costs = {s: {"wall_s": 1.0, "machine": "intel"} for s in ("surrogate", "influence", "effort")}
    records = [record("full", None, 100.0, ["intel", "intel"]), record("random", 8, 10.0, ["amd"]),
               record("dealrec", 8, 7.0, ["intel"])]
    rows = {r["arm"]: r for r in summarise(records, _cfg(), costs, [])}
    assert rows["random"]["fraction_machines"] == ["amd", "intel"]
    assert rows["dealrec"]["fraction_machines"] == [] and rows["full"]["fraction_machines"] == []
    table = experiment_table(list(rows.values()), [10])
    assert "| 10.0% † |" in table and "| 10.0% |" in table  # dealrec: 3 s scoring + 7 s training, one machine
    (line,) = verdict(list(rows.values()), [])
    assert "times from different machines" not in line  # the dealrec row is like for like
    rows["dealrec"]["fraction_machines"] = ["amd", "intel"]
    (line,) = verdict(list(rows.values()), [])
    assert "(times from different machines: amd, intel)" in line
