"""A whole experiment on tiny data: arms x budget x seed, a results table recomputable from per-user results,
and a resumed run that recomputes nothing."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from deft_cli.main import app

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    out = tmp_path_factory.mktemp("exp") / "run"
    result = CliRunner().invoke(app, ["--quiet", "bench", "tiny", "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


def test_outputs(experiment):
    for name in ("results.json", "results.md", "ndcg_by_arm.png", "ndcg_by_budget.png", "cost_by_arm.png",
                 "quality_vs_cost.png", "manifest.json"):
        assert (experiment / name).is_file(), name
    text = (experiment / "results.md").read_text()
    assert "## Verdict" in text and "dealrec" in text and "Paired bootstrap" in text
    assert "![NDCG@10 vs cost](quality_vs_cost.png)" in text
    assert "- selection: λ = 0.5 as configured (`deft tune` chooses it on validation); K = 3 strata" in text
    assert "at most 1 epochs, early stopping with patience" in text
    # dealrec is stratified: its score distribution is drawn and linked; random and full have none
    runs = {r["arm"]: r for r in json.loads((experiment / "results.json").read_text())["runs"]}
    assert runs["random"]["score_plot"] is None and runs["full"]["score_plot"] is None
    assert (experiment / runs["dealrec"]["score_plot"]).is_file()
    assert f"]({runs['dealrec']['score_plot']})" in text


def test_a_report_without_references_or_full_arm_leaves_their_parts_out(experiment, tmp_path):
    from deft.report.experiment import write_experiment_report

    payload = json.loads((experiment / "results.json").read_text())
    payload["references"] = {}
    payload["summary"] = [r for r in payload["summary"] if r["arm"] != "full"]
    for row in payload["summary"]:
        row["fraction_of_full"] = None
    _, md = write_experiment_report(tmp_path, payload)
    text = md.read_text()
    assert "Non-LLM references" not in text and "quality_vs_cost" not in text
    assert not (tmp_path / "quality_vs_cost.png").exists()


def test_table_recomputable_from_per_user_results(experiment):
    results = json.loads((experiment / "results.json").read_text())
    assert {r["arm"] for r in results["runs"]} == {"full", "random", "dealrec"}
    for run in results["runs"]:
        per_user = pd.read_parquet(experiment / run["per_user"])
        assert len(per_user) == results["test_users"]
        for metric, value in run["metrics"].items():
            assert np.isclose(per_user[metric].mean(), value), (run["key"], metric)
    for row in results["summary"]:
        runs = [r for r in results["runs"] if r["arm"] == row["arm"] and r["budget"] == row["budget"]]
        assert np.isclose(row["ndcg@10"], np.mean([r["metrics"]["ndcg@10"] for r in runs]))


def test_the_verdict_compares_with_full_at_a_cost_recomputable_from_the_ledger(experiment):
    results = json.loads((experiment / "results.json").read_text())
    rows = {r["arm"]: r for r in results["summary"]}
    runs = {r["arm"]: r for r in results["runs"]}
    dealrec = rows["dealrec"]
    scoring = sum(results["shared_stages"][s]["wall_s"] for s in ("surrogate", "influence", "effort"))
    pipeline_s = scoring + runs["dealrec"]["selection"]["wall_s"] + runs["dealrec"]["train"]["wall_s"]
    assert np.isclose(dealrec["fraction_of_full"], pipeline_s / runs["full"]["train"]["wall_s"], rtol=1e-3)
    verdict = (experiment / "results.md").read_text().split("## Verdict", 1)[1].split("\n## ", 1)[0]
    line = next(x for x in verdict.splitlines() if x.startswith("- budget 6: dealrec"))
    assert f"full {rows['full']['ndcg@10']:.4f}" in line
    assert f"pruning + training cost {100 * dealrec['fraction_of_full']:.1f}% of the full arm's" in line
    assert "different machines" not in line  # one machine measured everything


def test_resume_recomputes_nothing(experiment, monkeypatch):
    import deft.models

    def no_loading(*args, **kwargs):
        raise AssertionError("an experiment whose runs are all cached loaded the LLM's weights")

    # the prompt budget needs only the tokenizer, and the cache keys come from the model's files
    monkeypatch.setattr(deft.models, "load_target_llm", no_loading)
    records = {p: p.stat().st_mtime_ns for p in experiment.glob("arms/*/record.json")}
    stages = {p: p.stat().st_mtime_ns for p in (experiment / "stages").iterdir()}
    result = CliRunner().invoke(app, ["--quiet", "bench", "tiny", "--out", str(experiment)])
    assert result.exit_code == 0, result.output
    assert {p: p.stat().st_mtime_ns for p in experiment.glob("arms/*/record.json")} == records
    assert {p: p.stat().st_mtime_ns for p in (experiment / "stages").iterdir()} == stages


def test_each_pruned_run_saves_its_coreset_and_how_it_was_chosen(experiment):
    runs = {r["arm"]: r for r in json.loads((experiment / "results.json").read_text())["runs"]}
    assert runs["full"]["selection"]["coreset"] is None
    for arm in ("random", "dealrec"):
        facts = runs[arm]["selection"]
        coreset = pd.read_parquet(experiment / facts["coreset"])
        assert len(coreset) == runs[arm]["samples"] == facts["params"]["budget"]
        assert coreset["pool_index"].is_monotonic_increasing and coreset["sample_id"].is_unique
        assert sum(chosen for _, chosen in facts["stratum_counts"]) == (len(coreset) if arm == "dealrec" else 0)
    assert runs["dealrec"]["selection"]["params"]["pruned"] >= 1


def _as_written_before_coresets_were_saved(run_dir: Path) -> dict[str, bytes]:
    saved = {}
    for path in run_dir.glob("arms/*/coreset.parquet"):
        saved[path.parent.name] = path.read_bytes()
        path.unlink()
        record_path = path.parent / "record.json"
        record = json.loads(record_path.read_text())
        record["selection"] = {k: record["selection"][k] for k in ("wall_s", "peak_mb")}
        record_path.write_text(json.dumps(record))
    assert set(saved) == {"random-6-s0", "dealrec-6-s0"}
    return saved


def test_older_records_get_their_coreset_back_when_it_reproduces_the_training_run(experiment, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(experiment, copy)
    saved = _as_written_before_coresets_were_saved(copy)
    # random's training run no longer matches what choosing its coreset again gives: it must not get one
    result_path = copy / "arms" / "random-6-s0" / "train" / "train_result.json"
    result = json.loads(result_path.read_text())
    result_path.write_text(json.dumps({**result, "fingerprint": "0" * 16}))
    out = CliRunner().invoke(app, ["bench", "tiny", "--out", str(copy)])
    assert out.exit_code == 0, out.output
    assert (copy / "arms" / "dealrec-6-s0" / "coreset.parquet").read_bytes() == saved["dealrec-6-s0"]
    assert not (copy / "arms" / "random-6-s0" / "coreset.parquet").exists()
    assert "random-6-s0: its coreset cannot be reconstructed" in out.output
    runs = {r["arm"]: r for r in json.loads((copy / "results.json").read_text())["runs"]}
    assert runs["dealrec"]["selection"]["params"]["method"] == "dealrec" and "coreset" not in runs["random"]["selection"]


def test_cached_records_without_the_kept_epoch_get_it_from_the_training_log(experiment, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(experiment, copy)
    before = {r["key"]: r["train"]["best_epoch"] for r in json.loads((copy / "results.json").read_text())["runs"]}
    assert all(v is not None for v in before.values())
    for path in [*copy.glob("arms/*/record.json"), *copy.glob("arms/*/train/train_result.json")]:
        saved = json.loads(path.read_text())  # as a version that did not record the kept epoch wrote them
        saved.get("train", saved).pop("best_epoch")
        path.write_text(json.dumps(saved))
    result = CliRunner().invoke(app, ["--quiet", "bench", "tiny", "--out", str(copy)])
    assert result.exit_code == 0, result.output
    after = {r["key"]: r["train"]["best_epoch"] for r in json.loads((copy / "results.json").read_text())["runs"]}
    assert after == before


def test_changed_training_setting_is_refused_without_overwrite(experiment, tmp_path):
    config = tmp_path / "changed.yaml"
    config.write_text((ROOT / "configs" / "bench" / "tiny.yaml").read_text().replace("  epochs: 1", "  epochs: 2"))
    records = {p: p.stat().st_mtime_ns for p in experiment.glob("arms/*/record.json")}
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(experiment)])
    assert result.exit_code == 1
    assert "--overwrite" in result.output.strip().splitlines()[-1]
    assert {p: p.stat().st_mtime_ns for p in experiment.glob("arms/*/record.json")} == records


def _tiny_config(tmp_path: Path, *edits: tuple[str, str]) -> Path:
    text = (ROOT / "configs" / "bench" / "tiny.yaml").read_text()
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / "changed.yaml"
    path.write_text(text)
    return path


def test_settings_a_run_does_not_read_keep_it(experiment, tmp_path, monkeypatch):
    import deft.experiment as experiment_module

    copy = tmp_path / "run"
    shutil.copytree(experiment, copy)
    records = {p: p.read_bytes() for p in copy.glob("arms/*/record.json")}
    computed = []
    monkeypatch.setattr(experiment_module, "_run_arm", lambda *a, **k: computed.append(a[-1].key))
    # The bootstrap's settings are read only by the report; the run seeds replace training.seed and
    # selection.seed; selection.method is the arms' business; random and full read no selection setting;
    # influence.strict decides whether a failed solve is an error, and this one converged.
    config = _tiny_config(tmp_path, ("  bootstrap_samples: 100", "  bootstrap_samples: 200\n  seed: 5"),
                          ("effort:\n", "influence:\n  strict: false\neffort:\n"),
                          ("  valid_samples: 8", "  valid_samples: 8\n  seed: 9"),
                          ("  hard_prune: 0.1", "  hard_prune: 0.1\n  seed: 4\n  method: random"))
    result = CliRunner().invoke(app, ["--quiet", "run", str(config), "--out", str(copy)])
    assert result.exit_code == 0, result.output
    assert computed == []
    assert {p: p.read_bytes() for p in copy.glob("arms/*/record.json")} == records

    # dealrec reads lambda_: its run (only) no longer matches.
    config = _tiny_config(tmp_path, ("  hard_prune: 0.1", "  hard_prune: 0.1\n  lambda_: 2.0"))
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(copy)])
    assert result.exit_code == 1 and computed == []
    assert "arm dealrec-6-s0" in result.output and "random-6-s0" not in result.output


def test_records_with_the_older_wider_fingerprint_are_kept(experiment, tmp_path, monkeypatch):
    import deft.experiment as experiment_module

    copy = tmp_path / "run"
    shutil.copytree(experiment, copy)
    narrow = {p: json.loads(p.read_text())["fingerprint"] for p in copy.glob("arms/*/record.json")}
    real_cached_record = experiment_module._cached_record

    def as_written_by_0_1_0(pipe, pool, run, users_fp):
        path = copy / "arms" / run.key / "record.json"
        record = json.loads(path.read_text())
        record["fingerprint"] = experiment_module._wide_arm_fingerprint(pipe, pool, run)
        assert record["fingerprint"] != narrow[path]
        path.write_text(json.dumps(record))
        return real_cached_record(pipe, pool, run, users_fp)

    computed = []
    monkeypatch.setattr(experiment_module, "_cached_record", as_written_by_0_1_0)
    monkeypatch.setattr(experiment_module, "_run_arm", lambda *a, **k: computed.append(a[-1].key))
    result = CliRunner().invoke(app, ["--quiet", "bench", "tiny", "--out", str(copy)])
    assert result.exit_code == 0, result.output
    assert computed == []
    assert {p: json.loads(p.read_text())["fingerprint"] for p in copy.glob("arms/*/record.json")} == narrow


def test_set_narrows_the_arms_and_reuses_their_cached_runs(experiment, tmp_path, monkeypatch):
    import deft.experiment as experiment_module

    copy = tmp_path / "run"
    shutil.copytree(experiment, copy)
    computed = []
    monkeypatch.setattr(experiment_module, "_run_arm", lambda *a, **k: computed.append(a[-1].key))
    result = CliRunner().invoke(app, ["--quiet", "bench", "tiny", "--out", str(copy),
                                      "--set", "experiment.arms=[random, dealrec]"])
    assert result.exit_code == 0, result.output
    assert computed == []
    results = json.loads((copy / "results.json").read_text())
    assert [r["key"] for r in results["runs"]] == ["random-6-s0", "dealrec-6-s0"]
    assert results["config"]["experiment"]["arms"] == ["random", "dealrec"]


class MachineGone(Exception):
    pass


def test_interrupted_experiment_reports_what_finished_and_resumes(tmp_path, monkeypatch):
    import deft.experiment as experiment_module

    out = tmp_path / "run"
    real_run_arm = experiment_module._run_arm
    calls = []

    def run_arm_then_stop(*args, **kwargs):
        if len(calls) == 2:
            raise MachineGone  # during the third run
        calls.append(args[-1].key)
        return real_run_arm(*args, **kwargs)

    monkeypatch.setattr(experiment_module, "_run_arm", run_arm_then_stop)
    with pytest.raises(MachineGone):
        CliRunner().invoke(app, ["--quiet", "bench", "tiny", "--out", str(out)], catch_exceptions=False)
    # Headline order: random and dealrec before the full pool.
    assert calls == ["random-6-s0", "dealrec-6-s0"]
    partial = json.loads((out / "results.json").read_text())
    left = partial["status"]["estimated_remaining_s"]
    assert partial["status"] == {"finished": 2, "planned": 3, "pending": ["full-all-s0"],
                                 "estimated_remaining_s": left, "headline_pending": 1, "headline_remaining_s": left,
                                 "headline_arms": ["random", "dealrec", "full"]}
    # The finished runs' pace applied to the pending one; on a GPU machine the tiny runs take well under 1 s, so
    # the rounded estimate can be 0: recompute it rather than expect it positive.
    from deft.config import load_config
    from deft.experiment import plan_runs, remaining_seconds

    pending = [run for run in plan_runs(load_config(ROOT / "configs" / "bench" / "tiny.yaml"), partial["pool_size"])
               if run.key == "full-all-s0"]
    assert left == round(remaining_seconds(partial["runs"], pending, partial["pool_size"]))
    assert [r["key"] for r in partial["runs"]] == calls
    assert "Partial results: 2 of 3 runs finished" in (out / "results.md").read_text()

    # A resumed experiment rewrites its report from the cached runs before the next (possibly hours-long) run.
    (out / "results.md").unlink()
    monkeypatch.setattr(experiment_module, "_run_arm", run_arm_then_stop)
    with pytest.raises(MachineGone):
        CliRunner().invoke(app, ["--quiet", "bench", "tiny", "--out", str(out)], catch_exceptions=False)
    assert "Partial results: 2 of 3 runs finished" in (out / "results.md").read_text()

    calls.clear()
    monkeypatch.setattr(experiment_module, "_run_arm", lambda *a, **k: calls.append(a[-1].key) or real_run_arm(*a, **k))
    result = CliRunner().invoke(app, ["--quiet", "bench", "tiny", "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert calls == ["full-all-s0"]  # the two finished runs are read, not recomputed
    final = json.loads((out / "results.json").read_text())
    assert final["status"]["pending"] == [] and len(final["runs"]) == 3
    assert "Partial results" not in (out / "results.md").read_text()


@pytest.mark.parametrize("part, refused", [("influence", "influence"), ("training", "arm random-6-s0"),
                                           ("evaluation", "arm random-6-s0"), ("selection", "arm random-6-s0")])
def test_a_code_version_bump_refuses_what_the_older_code_cached(experiment, tmp_path, monkeypatch, part, refused):
    import deft.artifacts as artifacts_module

    copy = tmp_path / "run"
    shutil.copytree(experiment, copy)
    monkeypatch.setitem(artifacts_module.CODE_VERSIONS, part, 2)
    result = CliRunner().invoke(app, ["--quiet", "bench", "tiny", "--out", str(copy)])
    assert result.exit_code == 1 and refused in result.output and "--overwrite" in result.output


def test_a_training_code_bump_with_overwrite_really_retrains(experiment, tmp_path, monkeypatch):
    import deft.artifacts as artifacts_module

    copy = tmp_path / "run"
    shutil.copytree(experiment, copy)
    adapters = {p: p.read_bytes() for p in copy.glob("arms/*/train/train_result.json")}
    monkeypatch.setitem(artifacts_module.CODE_VERSIONS, "training", 2)
    result = CliRunner().invoke(app, ["--quiet", "bench", "tiny", "--out", str(copy), "--overwrite"])
    assert result.exit_code == 0, result.output
    # every run was trained again (a new fingerprint in each training result), not just given a new record
    assert all(p.read_bytes() != old for p, old in adapters.items())


def test_an_arm_evaluated_on_other_prompts_is_refused_and_reevaluated_with_overwrite(experiment, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(experiment, copy)
    arm = copy / "arms" / "random-6-s0"
    record = json.loads((arm / "record.json").read_text())
    evaluated = json.loads((arm / "eval" / "metrics.json").read_text())
    # as if the test prompts had been built differently back then: both the record and the evaluation say so
    (arm / "record.json").write_text(json.dumps({**record, "eval": {**record["eval"], "users_fingerprint": "0"}}))
    (arm / "eval" / "metrics.json").write_text(json.dumps({**evaluated, "fingerprint": "0" * 16}))
    trained = (arm / "train" / "train_result.json").read_bytes()
    result = CliRunner().invoke(app, ["--quiet", "bench", "tiny", "--out", str(copy)])
    assert result.exit_code == 1 and "arm random-6-s0" in result.output and "other test prompts" in result.output
    result = CliRunner().invoke(app, ["--quiet", "bench", "tiny", "--out", str(copy), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert json.loads((arm / "eval" / "metrics.json").read_text())["fingerprint"] == evaluated["fingerprint"]
    assert json.loads((arm / "record.json").read_text())["eval"]["users_fingerprint"] == \
        record["eval"]["users_fingerprint"]
    assert (arm / "train" / "train_result.json").read_bytes() == trained  # training kept


def test_records_from_before_the_prompts_fingerprint_are_taken_as_they_are(experiment, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(experiment, copy)
    for path in copy.glob("arms/*/record.json"):
        record = json.loads(path.read_text())
        record["eval"].pop("users_fingerprint")
        path.write_text(json.dumps(record))
    records = {p: p.read_bytes() for p in copy.glob("arms/*/record.json")}
    result = CliRunner().invoke(app, ["--quiet", "bench", "tiny", "--out", str(copy)])
    assert result.exit_code == 0, result.output
    assert {p: p.read_bytes() for p in copy.glob("arms/*/record.json")} == records


def test_effort_scores_and_runs_are_keyed_by_precision(tmp_path):
    """Cached effort scores and finished runs are not served to a run with other numerics (fp32 keys carry none:
    they predate it)."""
    from deft.config import load_config
    from deft.experiment import _arm_fingerprint, plan_runs
    from deft.pipeline import Pipeline

    fps, arms = {}, {}
    for autocast in ("off", "bf16"):
        cfg = load_config(ROOT / "configs" / "bench" / "tiny.yaml", {"model.autocast": autocast, "model.device": "cpu"})
        pipe = Pipeline(cfg, tmp_path / autocast)
        pool = pipe.pool_from_source()
        fps[autocast] = pipe.stage_fp("effort", pool)
        arms[autocast] = [_arm_fingerprint(pipe, pool, run) for run in plan_runs(cfg, len(pool.samples))]
        assert (pipe.llm().numerics_key() == {}) == (autocast == "off")
    assert fps["off"] != fps["bf16"]
    assert not set(arms["off"]) & set(arms["bf16"])  # random and full too: a finished record is not served


def test_cache_keys_do_not_change_by_accident(tmp_path):
    """Finished stages and runs in users' directories (the CPU benchmark's among them) are found by these keys.
    A change that moves them retires all of that work: make it on purpose (a CODE_VERSIONS bump, a legacy key
    accepted) and then update the values here."""
    from deft.config import load_config
    from deft.experiment import _arm_fingerprint, plan_runs
    from deft.pipeline import Pipeline

    # fp32 on the CPU, the numerics these keys were written with: "auto" keys bf16 on a GPU or a bf16 CPU.
    cfg = load_config(ROOT / "configs" / "bench" / "tiny.yaml", {"model.device": "cpu", "model.autocast": "off"})
    pipe = Pipeline(cfg, tmp_path)
    pool = pipe.pool_from_source()
    assert pool.fingerprint == "4f9f451c156b6e4b"
    assert (pipe.stage_fp("effort", pool), pipe.stage_fp("influence", pool)) == ("8adf3e0c31c648ba", "8d9736a6db7b18f0")
    runs = {run.key: _arm_fingerprint(pipe, pool, run) for run in plan_runs(cfg, len(pool.samples))}
    assert (runs["random-6-s0"], runs["dealrec-6-s0"]) == ("e7a69179c49ef3ee", "fa4c0114bec5f9b5")
