"""deft tune: λ chosen on validation items only, the choice recomputable from the saved per-user results,
cached runs reused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from deft.config import load_config
from deft.pipeline import Pipeline
from deft.tuning import best_lambda, choice_sentence, validation_users
from deft_cli.main import app

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "bench" / "tiny.yaml"
FEW = ["--set", "training.valid_samples=3"]  # the tiny fixture has few users: leave some for ranking


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    out = tmp_path_factory.mktemp("tune") / "run"
    result = CliRunner().invoke(app, ["--quiet", "tune", str(TINY), "--out", str(out), "--lambda", "5",
                                      "--lambda", "0", *FEW], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out, result.output


def test_report_and_choice(tuned):
    out, output = tuned
    for name in ("tune.md", "tune.json", "tune_lambda.png"):
        assert (out / name).is_file(), name
    payload = json.loads((out / "tune.json").read_text())
    assert payload["lambdas"] == [0.0, 5.0] and payload["budget"] == 6 and payload["seeds"] == [0]
    rows = payload["summary"]
    metric = payload["metric"]
    assert metric == "ndcg@10"
    top = max(r[metric] for r in rows)
    assert payload["best_lambda"] == min(r["lambda"] for r in rows if r[metric] == top)
    assert f"best λ: {payload['best_lambda']:g}" in output
    text = (out / "tune.md").read_text()
    assert f"**Best λ: {payload['best_lambda']:g}**" in text and "](tune_lambda.png)" in text
    coresets = [pd.read_parquet(out / run["selection"]["coreset"]) for run in payload["runs"]]
    assert all(len(c) == 6 for c in coresets)
    assert {run["selection"]["params"]["lambda"] for run in payload["runs"]} == {0.0, 5.0}
    for run in payload["runs"]:
        per_user = pd.read_parquet(out / run["per_user"])
        assert len(per_user) == payload["validation_users"]
        for name, value in run["metrics"].items():
            assert np.isclose(per_user[name].mean(), value), (run["key"], name)


def test_ranks_validation_items_of_users_early_stopping_does_not_use(tuned):
    out, _ = tuned
    payload = json.loads((out / "tune.json").read_text())
    cfg = load_config(TINY, {"training.valid_samples": 3})
    pipe = Pipeline(cfg, out)
    pool = pipe.pool_from_source()
    early = set(pipe.early_stopping_samples(pool)["user"])
    per_user = pd.read_parquet(out / payload["runs"][0]["per_user"])
    assert len(early) == 3 and not early & set(per_user["user"])
    assert len(per_user) == payload["validation_users"] == len(pool.split.valid) - 3
    users = validation_users(pipe, pool, pipe.early_stopping_samples(pool))
    assert list(users["user"]) == list(per_user["user"])
    for row in users.itertuples():
        assert list(row.targets) == list(pool.split.valid[row.user]) != list(pool.split.test[row.user])


def test_second_run_recomputes_nothing_and_ties_go_to_the_smaller_lambda(tuned, monkeypatch):
    import deft.models

    out, _ = tuned
    records = {p: p.stat().st_mtime_ns for p in out.glob("tune/*/record.json")}
    assert len(records) == 2
    with monkeypatch.context() as patched:  # all cached: the tokenizer and the model's files are enough
        patched.setattr(deft.models, "load_target_llm", lambda *a, **k: pytest.fail("the LLM's weights were loaded"))
        result = CliRunner().invoke(app, ["--quiet", "tune", str(TINY), "--out", str(out), "--lambda", "0",
                                          "--lambda", "5", *FEW])
    assert result.exit_code == 0, result.output
    assert {p: p.stat().st_mtime_ns for p in out.glob("tune/*/record.json")} == records
    rows = [{"lambda": 1.0, "ndcg@10": 0.1}, {"lambda": 2.0, "ndcg@10": 0.05}, {"lambda": 0.3, "ndcg@10": 0.1}]
    assert best_lambda(rows, "ndcg@10") == 0.3
    # a setting the runs read is refused, not silently reused (the budget and λ name the runs, so they would not)
    result = CliRunner().invoke(app, ["--quiet", "tune", str(TINY), "--out", str(out), "--lambda", "0", *FEW,
                                      "--set", "selection.strata=2"])
    assert result.exit_code == 1 and "tuning run lambda-0.0-6-s0" in result.output


def test_capped_users_are_counted_as_ranked(tmp_path):
    out = tmp_path / "t"
    result = CliRunner().invoke(app, ["--quiet", "tune", str(TINY), "--out", str(out), "--lambda", "1", *FEW,
                                      "--set", "evaluation.max_users=2", "--budget", "50%"])
    assert result.exit_code == 0, result.output
    payload = json.loads((out / "tune.json").read_text())
    assert payload["validation_users"] == 2 == len(pd.read_parquet(out / payload["runs"][0]["per_user"]))
    assert "the validation items of 2 users" in (out / "tune.md").read_text()
    assert payload["budget"] == round(0.5 * payload["pool_size"] + 1e-9)


@pytest.mark.parametrize("args, message", [
    (["--lambda", "1", "--lambda", "1.0"], "(--lambda) is repeated"),
    (["--seed", "1", "--seed", "1"], "(--seed) must be distinct"),
    (["--budget", "abc"], "tuning budget (--budget)"),
    (["--budget", "100%"], "dealrec can take from this pool"),
])
def test_bad_sweeps_are_refused_before_any_scoring(tmp_path, args, message):
    out = tmp_path / "t"
    result = CliRunner().invoke(app, ["--quiet", "tune", str(TINY), "--out", str(out), *args])
    assert result.exit_code == 1 and message in result.output
    # at most the pool was built (to size a percentage budget): no surrogate, no scores
    assert {p.stem for p in out.glob("stages/*.json")} <= {"samples"}


def test_no_choice_when_no_lambda_ranked_anything():
    rows = [{"lambda": 0.3, "ndcg@10": 0.0}, {"lambda": 1.0, "ndcg@10": 0.0}]
    assert choice_sentence(rows, "ndcg@10", 0.3, partial=False).startswith("**No choice:**")
    rows[1]["ndcg@10"] = 0.01
    assert "**Best λ so far: 1**" in choice_sentence(rows, "ndcg@10", 1.0, partial=True)
