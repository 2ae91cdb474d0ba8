"""`deft prune` end to end on tiny data with the tiny model, through click's CliRunner."""

import hashlib
import json
import re
import time
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from deft_cli.main import app

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "data_samples" / "tiny-recbole")
CONFIG = str(ROOT / "configs" / "bench" / "tiny.yaml")


def _prune(out: Path, *extra: str):
    args = ["--quiet", "prune", TINY, "--config", CONFIG, "--out", str(out), "--budget", "6", *extra]
    return CliRunner().invoke(app, args, catch_exceptions=False)


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    out = tmp_path_factory.mktemp("prune") / "run"
    start = time.perf_counter()
    result = _prune(out)
    assert result.exit_code == 0, result.output
    return out, time.perf_counter() - start, result


def test_files_present(pruned):
    out, _, result = pruned
    for name in ("coreset.jsonl", "scores.parquet", "samples.parquet", "manifest.json", "report.md"):
        assert (out / name).is_file(), name
    assert "coreset (6 samples)" in result.output and "report.md" in result.output
    assert list(out.glob("*.png")), "the report has plots"
    assert f"--valid): {out / 'valid.jsonl'}" in result.output
    report = (out / "report.md").read_text()  # dealrec on a source: where the data came from, every stage's settings
    assert f"| input.source | {TINY} |" in report and f"| data.source | {TINY} |" in report
    assert all(f"| {section}." in report for section in ("samples", "surrogate", "influence", "effort", "selection"))


def test_validation_samples_are_one_held_out_item_per_user(pruned):
    out, _, _ = pruned
    pool = pd.read_parquet(out / "samples.parquet")
    valid = [json.loads(line) for line in (out / "valid.jsonl").read_text().splitlines()]
    assert valid and len({v["user"] for v in valid}) == len(valid)
    assert {"instruction", "input", "output"} <= set(valid[0])
    windows = set(zip(pool["user"], pool["target_item"], strict=True))
    assert not any((v["user"], v["target_item"]) in windows for v in valid)  # never a training target


def test_coreset_is_a_subset_with_unchanged_fields(pruned):
    out, _, _ = pruned
    pool = pd.read_parquet(out / "samples.parquet").set_index("sample_id")
    rows = [json.loads(line) for line in (out / "coreset.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and len({r["sample_id"] for r in rows}) == 6
    for row in rows:
        original = pool.loc[row["sample_id"]]
        for field in ("instruction", "input", "output", "user", "target_item"):
            assert row[field] == original[field]
        assert row["history"] == list(original["history"])
        assert isinstance(row["stratum"], int)


def test_manifest_counts_add_up(pruned):
    out, _, _ = pruned
    manifest = json.loads((out / "manifest.json").read_text())
    pool = len(pd.read_parquet(out / "samples.parquet"))
    assert manifest["counts"]["pool"] == pool
    assert manifest["counts"]["coreset"] == {"6": 6}
    per_stratum = manifest["counts"]["per_stratum"]["6"]
    assert sum(s["chosen"] for s in per_stratum) == 6
    assert len(manifest["data_fingerprint"]) >= 16
    for stage in ("samples", "surrogate", "influence", "effort", "selection-6"):
        assert manifest["stages"][stage]["wall_s"] >= 0


def test_second_run_reuses_every_stage(pruned, monkeypatch):
    import deft.models

    def no_loading(*args, **kwargs):
        raise AssertionError("a run whose stages are all cached loaded the LLM's weights")

    monkeypatch.setattr(deft.models, "load_target_llm", no_loading)  # the cache keys come from the model's files
    out, _, _ = pruned
    before = {p.name: p.stat().st_mtime_ns for p in (out / "stages").iterdir()}
    result = _prune(out)
    assert result.exit_code == 0, result.output
    # every stage record untouched: nothing was recomputed (a wall-time comparison would be flaky on a busy machine)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "stages").iterdir()} == before


def test_changed_argument_without_overwrite_fails_untouched(pruned):
    out, _, _ = pruned
    snapshot = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    result = CliRunner().invoke(app, ["prune", TINY, "--config", CONFIG, "--out", str(out), "--budget", "6",
                                      "--seed", "7"])
    assert result.exit_code == 1
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("error: stage 'selection-6'") and "--overwrite" in last
    assert "(changed: seed: 0 -> 7);" in last  # what changed, not only two fingerprints
    assert "Traceback" not in result.output
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == snapshot


def test_overwrite_replaces(pruned, tmp_path):
    out, _, _ = pruned
    result = _prune(out, "--seed", "7", "--overwrite")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seeds"]["selection"] == 7
    _prune(out, "--overwrite")  # restore seed 0 for other tests in this module


def test_overwrite_replaces_a_resumable_effort_stage(pruned, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(pruned[0], out)
    config = tmp_path / "effort.yaml"
    text = Path(CONFIG).read_text()
    assert "effort:\n  batch_size: 4" in text
    config.write_text(text.replace("effort:\n  batch_size: 4", "effort:\n  batch_size: 4\n  loss_on: prompt"))
    args = ["--quiet", "prune", TINY, "--config", str(config), "--out", str(out), "--budget", "6"]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 1 and "--overwrite" in refused.output
    result = CliRunner().invoke(app, [*args, "--overwrite"])
    assert result.exit_code == 0, result.output  # the effort shards of the old settings are replaced too


def test_same_seed_same_coreset_bit_for_bit(pruned, tmp_path):
    out, _, _ = pruned
    other = tmp_path / "again"
    assert _prune(other).exit_code == 0
    assert (other / "coreset.jsonl").read_bytes() == (out / "coreset.jsonl").read_bytes()




def test_effort_does_not_depend_on_the_selection_seed(pruned, tmp_path):
    """A run directory reuses its effort stage when only --seed changes; that is exact only because effort's
    LoRA draw is seed-independent, so a fresh run with another seed must compute the same effort."""
    out, _, _ = pruned
    other = tmp_path / "seed7"
    assert _prune(other, "--seed", "7").exit_code == 0
    fresh = pd.read_parquet(other / "scores.parquet").set_index("sample_id")["effort"]
    reused = pd.read_parquet(out / "scores.parquet").set_index("sample_id")["effort"]
    pd.testing.assert_series_equal(fresh.sort_index(), reused.sort_index())

def test_stage_costs_are_not_nested(tmp_path, monkeypatch):
    """The surrogate trains in its own stage, so the influence stage's time excludes it (no double count)."""
    import deft.surrogate

    real = deft.surrogate.train_surrogate

    def slow(*args, **kwargs):
        time.sleep(3.0)  # long beside the tiny influence stage, which took 1.6 s on a loaded machine
        return real(*args, **kwargs)

    monkeypatch.setattr(deft.surrogate, "train_surrogate", slow)
    out = tmp_path / "run"
    assert _prune(out).exit_code == 0
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    assert stages["surrogate"]["wall_s"] >= 3.0
    # nested, influence would last at least as long as the surrogate; compared, not against a fixed bound,
    # so that a loaded machine slowing both cannot fail it
    assert stages["influence"]["wall_s"] < stages["surrogate"]["wall_s"]


def test_score_command_writes_every_requested_column(tmp_path):
    out = tmp_path / "scores"
    args = ["--quiet", "score", TINY, "--config", CONFIG, "--out", str(out), "--scores", "influence,grand,el2n,loss"]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    scores = pd.read_parquet(out / "scores.parquet")
    pool = pd.read_parquet(out / "samples.parquet")
    assert list(scores["sample_id"]) == list(pool["sample_id"])
    for column in ("influence", "grand", "el2n", "loss"):
        assert scores[column].notna().all(), column
    # adding effort later keeps the columns already there and reuses the trained surrogate
    surrogate_meta = (out / "stages" / "surrogate.json").stat().st_mtime_ns
    args[args.index("influence,grand,el2n,loss")] = "effort"
    assert CliRunner().invoke(app, args).exit_code == 0
    scores = pd.read_parquet(out / "scores.parquet")
    assert {"influence", "grand", "el2n", "loss", "effort"} <= set(scores.columns)
    assert (out / "stages" / "surrogate.json").stat().st_mtime_ns == surrogate_meta
    assert json.loads((out / "manifest.json").read_text())["counts"]["pool"] == len(pool)
    # a stage since invalidated (a run with other settings killed inside it) leaves no column behind
    meta = json.loads((out / "stages" / "loss.json").read_text())
    (out / "stages" / "loss.json").write_text(json.dumps({**meta, "done": False}))
    assert CliRunner().invoke(app, args).exit_code == 0
    assert "loss" not in pd.read_parquet(out / "scores.parquet").columns
    assert {"influence", "grand", "el2n", "effort"} <= set(pd.read_parquet(out / "scores.parquet").columns)
    # a finished stage whose output was deleted is computed again, not a FileNotFoundError
    (out / "scores" / "effort.parquet").unlink()
    assert CliRunner().invoke(app, args).exit_code == 0
    assert (out / "scores" / "effort.parquet").is_file()
    # a pool rebuilt with other settings keeps its sample ids (user:position): the columns scored on the old
    # pool must not stay beside the new one's
    rebuilt = ["--quiet", "score", TINY, "--config", CONFIG, "--out", str(out), "--scores", "influence",
               "--max-history", "3", "--overwrite"]
    assert CliRunner().invoke(app, rebuilt, catch_exceptions=False).exit_code == 0
    scores = pd.read_parquet(out / "scores.parquet")
    assert list(scores["sample_id"]) == list(pool["sample_id"])  # the same ids...
    assert list(scores.columns) == ["sample_id", "influence"]  # ...but only what was scored on this pool


def test_ccs_stratifies_the_configured_score(tmp_path):
    config = tmp_path / "ccs.yaml"
    config.write_text(Path(CONFIG).read_text().replace("selection:\n", "selection:\n  ccs_score: loss\n", 1))
    out = tmp_path / "run"
    args = ["--quiet", "prune", TINY, "--config", str(config), "--out", str(out), "--budget", "6", "--method", "ccs"]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    columns = set(pd.read_parquet(out / "scores.parquet").columns)
    assert "loss" in columns and "el2n" not in columns  # the surrogate loss was computed, not EL2N


def test_unknown_ccs_score_is_a_config_error(tmp_path):
    config = tmp_path / "ccs.yaml"
    config.write_text(Path(CONFIG).read_text().replace("selection:\n", "selection:\n  ccs_score: forgetting\n", 1))
    result = CliRunner().invoke(app, ["prune", TINY, "--config", str(config), "--out", str(tmp_path / "x")])
    assert result.exit_code == 1 and "selection.ccs_score" in result.output


def test_a_random_coreset_follows_its_pool_and_survives_a_new_budget(tmp_path):
    out = tmp_path / "random"
    assert _prune(out, "--method", "random").exit_code == 0
    # adding a budget to the sweep leaves the first coreset as it is: no --overwrite needed
    first = (out / "coreset.jsonl").read_bytes()
    assert _prune(out, "--method", "random", "--budget", "5").exit_code == 0
    assert (out / "coreset-6.jsonl").read_bytes() == first
    # another pool (shorter histories) is another coreset, even though random reads no score
    assert _prune(out, "--method", "random", "--max-history", "3", "--overwrite").exit_code == 0
    pool = pd.read_parquet(out / "samples.parquet").set_index("sample_id")
    rows = [json.loads(line) for line in (out / "coreset.jsonl").read_text().splitlines()]
    assert all(row["input"] == pool.loc[row["sample_id"], "input"] for row in rows)
    # the old pool's coresets went with it (budget 6's file stays only if it holds this run's coreset)
    assert not (out / "coreset-5.jsonl").exists() and not (out / "stages" / "selection-5.json").exists()
    for name in ("coreset-6.jsonl",):
        assert not (out / name).exists() or (out / name).read_bytes() == (out / "coreset.jsonl").read_bytes()


def test_a_samples_run_over_a_source_run_removes_the_sources_validation_samples(tmp_path):
    out = tmp_path / "run"
    assert _prune(out, "--method", "random").exit_code == 0 and (out / "valid.jsonl").is_file()
    table = tmp_path / "mine.jsonl"
    table.write_text("".join(json.dumps({"instruction": "Say a number.", "output": str(i)}) + "\n" for i in range(9)))
    result = CliRunner().invoke(app, ["--quiet", "prune", "--samples", str(table), "--config", CONFIG, "--method",
                                      "random", "--budget", "3", "--out", str(out), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert not (out / "valid.jsonl").exists() and not (out / "stages" / "valid.json").exists()
    assert "validation samples" not in result.output


def test_coresets_of_other_settings_are_named_and_removed_only_with_overwrite(tmp_path):
    out = tmp_path / "run"

    def prune(*args: str):
        result = CliRunner().invoke(app, ["--quiet", "prune", TINY, "--config", CONFIG, "--out", str(out),
                                          "--method", "random", *args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return [line for line in result.output.splitlines() if "earlier run with other data or settings" in line]

    assert prune("--budget", "6", "--budget", "5") == []
    sweep = {name: (out / name).read_bytes() for name in ("coreset-6.jsonl", "coreset-5.jsonl")}
    warned = prune("--budget", "4", "--seed", "1")
    assert {name: (out / name).read_bytes() for name in sweep} == sweep  # kept, but named
    assert len(warned) == 1 and "coreset-5.jsonl" in warned[0] and "coreset-6.jsonl" in warned[0]
    assert "coreset.jsonl" not in warned[0].replace("coreset-", "")
    # the sweep again with seed 1 replaces the seed-0 coresets; budget 4's coreset.jsonl has these settings: kept
    assert prune("--budget", "6", "--budget", "5", "--seed", "1", "--overwrite") == []
    assert sorted(p.name for p in out.glob("coreset*.jsonl")) == ["coreset-5.jsonl", "coreset-6.jsonl", "coreset.jsonl"]
    assert {p.stem for p in (out / "stages").glob("selection-*.json")} == {"selection-4", "selection-5", "selection-6"}
    assert (out / "coreset-6.jsonl").read_bytes() != sweep["coreset-6.jsonl"]
    # with another seed again, --overwrite leaves only this run's coreset
    assert prune("--budget", "6", "--seed", "2", "--overwrite") == []
    assert [p.name for p in out.glob("coreset*.jsonl")] == ["coreset.jsonl"]
    assert [p.stem for p in (out / "stages").glob("selection-*.json")] == ["selection-6"]


def test_another_single_budget_does_not_replace_the_coreset_silently(tmp_path):
    out = tmp_path / "run"

    def prune(budget: str, *extra: str):
        return CliRunner().invoke(app, ["--quiet", "prune", TINY, "--config", CONFIG, "--out", str(out),
                                        "--method", "random", "--budget", budget, *extra])

    def rows() -> int:
        return len((out / "coreset.jsonl").read_text().splitlines())

    assert prune("6").exit_code == 0 and rows() == 6
    refused = prune("4")
    assert refused.exit_code != 0 and rows() == 6
    assert "coreset.jsonl holds the coreset of budget 6 from an earlier run; use --overwrite" in refused.output
    assert prune("4", "--overwrite").exit_code == 0 and rows() == 4
    # budget 6's stage is finished, but the file it wrote is gone: refused, not reported as a 6-sample coreset
    refused = prune("6")
    assert refused.exit_code != 0 and "holds the coreset of budget 4" in refused.output and rows() == 4
    result = prune("6", "--overwrite")
    assert result.exit_code == 0 and rows() == 6 and "coreset (6 samples)" in result.output
    assert prune("6").exit_code == 0 and rows() == 6  # its own file again: reused as it is


def test_a_directory_of_other_files_is_not_written_into(tmp_path):
    out = tmp_path / "theirs"
    out.mkdir()
    (out / "report.md").write_text("someone's notes")
    args = ["--quiet", "prune", TINY, "--config", CONFIG, "--out", str(out), "--method", "random", "--budget", "6"]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code != 0 and "holds report.md but no DEFT run" in refused.output
    assert sorted(p.name for p in out.iterdir()) == ["report.md"]
    assert CliRunner().invoke(app, [*args, "--overwrite"]).exit_code == 0 and (out / "coreset.jsonl").is_file()


def test_new_prompt_texts_rescore_without_retraining_the_surrogate(pruned, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(pruned[0], out)
    surrogate = {p: p.read_bytes() for p in (out / "surrogate").iterdir()}
    stages = {name: json.loads((out / "stages" / f"{name}.json").read_text())["fingerprint"]
              for name in ("surrogate", "influence", "effort")}
    config = tmp_path / "prompt.yaml"
    config.write_text(Path(CONFIG).read_text() + "prompt:\n  instruction: Name the next film this viewer picks.\n")
    result = CliRunner().invoke(app, ["--quiet", "prune", TINY, "--config", str(config), "--out", str(out),
                                      "--budget", "6", "--overwrite"])
    assert result.exit_code == 0, result.output
    after = {name: json.loads((out / "stages" / f"{name}.json").read_text())["fingerprint"] for name in stages}
    assert after["surrogate"] == stages["surrogate"]  # same user sequences: the surrogate is reused
    assert {p: p.read_bytes() for p in (out / "surrogate").iterdir()} == surrogate
    assert after["influence"] != stages["influence"] and after["effort"] != stages["effort"]  # new samples


def test_influence_kept_by_a_non_strict_failed_solve_is_refused_by_a_strict_run(tmp_path):
    """strict is not in the scores' identity (a finished solve is the same either way), so the failure itself
    must travel with the cached stage."""
    base = Path(CONFIG).read_text()
    failing = "effort:\n"
    loose, strict = tmp_path / "loose.yaml", tmp_path / "strict.yaml"
    loose.write_text(base.replace(failing, "influence:\n  cg_max_iter: 1\n  cg_tol: 1.0e-12\n  strict: false\n"
                                           "effort:\n", 1))
    strict.write_text(base.replace(failing, "influence:\n  cg_max_iter: 1\n  cg_tol: 1.0e-12\neffort:\n", 1))
    out = tmp_path / "scores"
    args = ["score", TINY, "--out", str(out), "--scores", "influence"]
    result = CliRunner().invoke(app, [*args, "--config", str(strict)])
    assert result.exit_code == 1 and "not converged after `influence.cg_max_iter` = 1" in result.output
    result = CliRunner().invoke(app, [*args, "--config", str(loose)])
    assert result.exit_code == 0, result.output
    assert "not converged" in result.output  # the warning
    result = CliRunner().invoke(app, [*args, "--config", str(strict)])
    assert result.exit_code == 1 and "cached influence scores" in result.output and "strict" in result.output


def test_moving_the_data_keeps_the_pool_and_its_stages(pruned, tmp_path):
    import os
    import shutil

    from deft.config import load_config
    from deft.pipeline import Pipeline

    moved = tmp_path / "elsewhere"
    shutil.copytree(TINY, moved)
    keys = set()
    for source in (TINY, TINY + "/", str(moved), os.path.relpath(moved)):
        pipe = Pipeline(load_config(CONFIG, {"data.source": source}), tmp_path / "run")
        keys.add(pipe.pool_from_source().fingerprint)
    assert len(keys) == 1
    out, _, _ = pruned  # the finished run, pointed at the moved copy: nothing is refused or recomputed
    result = CliRunner().invoke(app, ["--quiet", "prune", str(moved), "--config", CONFIG, "--out", str(out),
                                      "--budget", "6"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (moved / "tiny.item").write_text((moved / "tiny.item").read_text().replace("\t1987\t", "\t1988\t"))
    changed = Pipeline(load_config(CONFIG, {"data.source": str(moved)}), tmp_path / "run2")
    assert changed.pool_from_source().fingerprint not in keys  # the contents still count


def test_a_budget_the_pool_cannot_fill_is_refused_before_scoring(tmp_path):
    out = tmp_path / "big"
    result = CliRunner().invoke(app, ["--quiet", "prune", TINY, "--config", CONFIG, "--out", str(out),
                                      "--budget", "100"])
    assert result.exit_code != 0
    assert "budget 100 exceeds the 20 samples dealrec can take: the pool of 22 minus the 2 that hard_prune=0.1" \
        in result.output
    assert "--hard-prune 0" not in result.output  # no use: the whole pool is too small for it
    assert not (out / "scores").exists() and not (out / "surrogate").exists()
    result = CliRunner().invoke(app, ["--quiet", "prune", TINY, "--config", CONFIG, "--out", str(out),
                                      "--budget", "21"])
    assert result.exit_code != 0 and "hard_prune 0 (--hard-prune 0) selects from the whole pool" in result.output
    result = CliRunner().invoke(app, ["--quiet", "score", TINY, "--config", CONFIG, "--out", str(tmp_path / "s"),
                                      "--scores", "influence,efort"])
    assert result.exit_code != 0 and "unknown score ['efort']" in result.output
    assert not (tmp_path / "s").exists()


def test_a_long_effort_pass_on_a_cpu_is_announced_once(tmp_path, monkeypatch, caplog):
    import deft.pipeline
    from deft.config import load_config

    monkeypatch.setattr(deft.pipeline, "LARGE_CPU_POOL", 5)
    # On the CPU even where a GPU is: the announcement is for CPU runs alone.
    cfg = load_config(CONFIG, {"data.source": TINY, "selection.budgets": [6], "model.device": "cpu"})
    for announced in (True, False):  # the second time the effort stage is done: nothing to announce
        caplog.clear()
        with caplog.at_level("WARNING", logger="deft.pipeline"):
            deft.pipeline.run_prune(cfg, tmp_path / "run", progress=False)
        lines = [r.getMessage() for r in caplog.records if "effort pass" in r.getMessage()]
        assert bool(lines) == announced
        assert not lines or lines[0].startswith("the effort pass runs the target LLM forward and backward on each "
                                                "of the 22 pool samples")


def test_prune_and_score_a_file_of_instruction_samples(tmp_path):
    rows = [{"id": f"q{i}", "instruction": "Answer briefly.", "input": f"What is {i} plus {i}?",
             "output": f"{2 * i}"} for i in range(12)]
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps({"sample_id": r.pop("id"), **r}) + "\n" for r in rows))
    base = ["--quiet", "prune", "--samples", str(path), "--model", "tiny-llama", "--device", "cpu"]
    result = CliRunner().invoke(app, [*base, "--method", "effort_only", "--budget", "4", "--out",
                                      str(tmp_path / "p")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    coreset = [json.loads(line) for line in (tmp_path / "p" / "coreset.jsonl").read_text().splitlines()]
    given = {json.loads(line)["sample_id"]: json.loads(line) for line in path.read_text().splitlines()}
    assert len(coreset) == 4 and all({k: c[k] for k in given[c["sample_id"]]} == given[c["sample_id"]]
                                     for c in coreset)
    # the run names its input, not the default data source it never read
    # a file without an input column: its rows come back without one, though the prompts had an empty input
    bare = tmp_path / "bare.jsonl"
    bare.write_text("".join(json.dumps({"instruction": r["instruction"], "output": r["output"]}) + "\n" for r in rows))
    result = CliRunner().invoke(app, [*base[:3], str(bare), *base[4:], "--method", "effort_only", "--budget", "4",
                                      "--out", str(tmp_path / "bare")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    chosen = [json.loads(line) for line in (tmp_path / "bare" / "coreset.jsonl").read_text().splitlines()]
    assert len(chosen) == 4 and all(set(c) == {"sample_id", "instruction", "output", "stratum"} for c in chosen)
    manifest = json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert manifest["input"] == {"samples_file": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                                 "rows": 12}
    report = (tmp_path / "p" / "report.md").read_text()
    assert f"| input.samples_file | {path} |" in report and "effort.batch_size" in report
    assert "data.source" not in report and "ml-100k" not in report and "influence." not in report
    result = CliRunner().invoke(app, ["--quiet", "score", "--samples", str(path), "--model", "tiny-llama",
                                      "--scores", "effort", "--out", str(tmp_path / "s")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    scores = pd.read_parquet(tmp_path / "s" / "scores.parquet")
    assert list(scores["sample_id"]) == list(given) and scores["effort"].gt(0).all()
    result = CliRunner().invoke(app, ["--quiet", "score", "--samples", str(path), "--model", "tiny-llama",
                                      "--scores", "influence", "--out", str(tmp_path / "i")])
    assert result.exit_code != 0 and "(for scores influence) need samples with columns user" in result.output
    assert "for plain instruction data compute --scores effort only" in result.output
    out = ["--out", str(tmp_path / "x")]
    for args, message in ((["prune", *out], "either SOURCE"),  # neither
                          (["prune", TINY, "--samples", str(path), *out], "either SOURCE"),  # both
                          (["prune", "--samples", str(path), "--stride", "2", *out], "--stride shapes the samples")):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2 and message in result.output, result.output


def test_source_may_come_from_the_config(tmp_path):
    import yaml

    config = yaml.safe_load(Path(CONFIG).read_text())
    config.setdefault("data", {})["source"] = TINY
    path = tmp_path / "with-source.yaml"
    path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(app, ["--quiet", "prune", "--config", str(path), "--out", str(tmp_path / "p"),
                                      "--budget", "6", "--method", "random"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert len((tmp_path / "p" / "coreset.jsonl").read_text().splitlines()) == 6
    manifest = json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert manifest["config"]["data"]["source"] == TINY


def test_a_samples_file_comes_back_as_read(tmp_path):
    # Whole numbers with gaps stay whole (pandas would make them 5.0), a 20-digit id is not rounded, a key some
    # records lack comes back null (not NaN, which strict JSON parsers reject), and dates are ISO text.
    rows = [{"instruction": "Answer.", "input": f"q{i}", "output": f"a{i}", "n": i if i % 2 else None,
             "big": 12345678901234567890 + i, **({"tag": "x"} if i % 3 == 0 else {})} for i in range(8)]
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = ["--quiet", "prune", "--model", "tiny-llama", "--device", "cpu", "--method", "random", "--budget", "8"]
    result = CliRunner().invoke(app, [*base, "--samples", str(path), "--out", str(tmp_path / "p")],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "p" / "coreset.jsonl").read_text().splitlines()
    back = {r["input"]: r for r in (json.loads(line, parse_constant=pytest.fail) for line in lines)}
    for row in rows:
        got = back[row["input"]]
        assert got["n"] == row["n"] and type(got["n"]) is type(row["n"]) and got["big"] == row["big"]
        assert got["tag"] == row.get("tag")
    dated = pd.DataFrame({"instruction": ["Answer."] * 4, "input": list("abcd"), "output": list("wxyz"),
                          "when": pd.to_datetime(["2024-01-02", "2024-03-04", None, "2024-05-06"])})
    dated.to_parquet(tmp_path / "dated.parquet")
    result = CliRunner().invoke(app, [*base[:-1], "4", "--samples", str(tmp_path / "dated.parquet"), "--out",
                                      str(tmp_path / "d")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    whens = {json.loads(line)["when"] for line in (tmp_path / "d" / "coreset.jsonl").read_text().splitlines()}
    assert whens == {"2024-01-02T00:00:00", "2024-03-04T00:00:00", None, "2024-05-06T00:00:00"}


@pytest.mark.parametrize(("extra", "message"), [
    ({"stratum": 3}, r"mine\.jsonl: the samples already have a column 'stratum'"),
    ({"history": "['1', '2']"}, r"mine\.jsonl line 2: field 'history': must be a list of item ids, got str"),
    ({"meta": "two"}, r"column 'meta' cannot be stored .* types \['int', 'str'\]: give every row the same type"),
    # Python's JSON reader takes Infinity, but strict JSON lines cannot hold it: refused before the scoring
    ({"meta": float("inf")}, r"mine\.jsonl: field 'meta': sample 's1' \(row 1\): float value inf cannot be written "
                             r"to the coreset's JSON lines"),
])
def test_a_samples_file_that_cannot_be_pruned_is_refused_before_any_work(tmp_path, extra, message):
    rows = [{"sample_id": f"s{i}", "instruction": "Answer.", "input": f"q{i}", "output": f"a{i}", "meta": i,
             **({"history": ["1"], "user": "u", "target_item": str(i)} if "history" in extra else {})}
            for i in range(4)]
    rows[1].update(extra)
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = CliRunner().invoke(app, ["--quiet", "prune", "--samples", str(path), "--model", "tiny-llama", "--method",
                                      "random", "--budget", "2", "--out", str(tmp_path / "p")])
    assert result.exit_code != 0 and re.search(message, result.output), result.output
    assert not (tmp_path / "p" / "coreset.jsonl").exists()


def test_a_prune_killed_between_its_coreset_and_its_record_reruns_without_overwrite(tmp_path, monkeypatch):
    import deft.pipeline

    out = tmp_path / "run"
    real = deft.pipeline.write_jsonl

    def write_then_die(path, records):
        real(path, records)
        if Path(path).name == "coreset.jsonl":
            raise KeyboardInterrupt

    monkeypatch.setattr(deft.pipeline, "write_jsonl", write_then_die)
    killed = CliRunner().invoke(app, ["--quiet", "prune", TINY, "--config", CONFIG, "--out", str(out), "--budget",
                                      "6", "--method", "random"])
    assert killed.exit_code != 0 and (out / "coreset.jsonl").is_file()  # click turns the interrupt into Abort
    monkeypatch.undo()
    result = _prune(out, "--method", "random")
    assert result.exit_code == 0, result.output
    assert len((out / "coreset.jsonl").read_text().splitlines()) == 6
