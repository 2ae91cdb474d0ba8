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
                 "manifest.json"):
        assert (experiment / name).is_file(), name
    text = (experiment / "results.md").read_text()
    assert "## Verdict" in text and "dealrec" in text and "Paired bootstrap" in text
    # dealrec is stratified: its score distribution is drawn and linked; random and full have none
    runs = {r["arm"]: r for r in json.loads((experiment / "results.json").read_text())["runs"]}
    assert runs["random"]["score_plot"] is None and runs["full"]["score_plot"] is None
    assert (experiment / runs["dealrec"]["score_plot"]).is_file()
    assert f"]({runs['dealrec']['score_plot']})" in text


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


def test_resume_recomputes_nothing(experiment):
    records = {p: p.stat().st_mtime_ns for p in experiment.glob("arms/*/record.json")}
    stages = {p: p.stat().st_mtime_ns for p in (experiment / "stages").iterdir()}
    result = CliRunner().invoke(app, ["--quiet", "bench", "tiny", "--out", str(experiment)])
    assert result.exit_code == 0, result.output
    assert {p: p.stat().st_mtime_ns for p in experiment.glob("arms/*/record.json")} == records
    assert {p: p.stat().st_mtime_ns for p in (experiment / "stages").iterdir()} == stages


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
    assert partial["status"] == {"finished": 2, "planned": 3, "pending": ["full-all-s0"],
                                 "estimated_remaining_s": partial["status"]["estimated_remaining_s"]}
    assert partial["status"]["estimated_remaining_s"] > 0
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
