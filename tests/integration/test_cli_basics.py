"""The CLI surface: help, describe, validate, one-line errors, --debug tracebacks."""

from pathlib import Path

from click.testing import CliRunner

from deft_cli.main import app

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "data_samples" / "tiny-recbole")


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def test_help_lists_every_command_with_an_example():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("data", "validate", "score", "prune", "train", "evaluate", "compare", "run", "bench"):
        assert f"\n  {command}" in result.output
        assert f"deft {command}" in result.output


def test_describe_tiny_source():
    result = invoke("data", "describe", TINY)
    assert result.exit_code == 0, result.output
    assert "users" in result.output and "samples" in result.output
    assert "### Instruction:" in result.output


def test_validate_reports_every_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("selection:\n  budgets: [0]\n  strata: 0\nsurrogate:\n  dropout: 2\n")
    result = invoke("validate", str(bad))
    assert result.exit_code == 1
    line = result.output.strip()
    assert line.startswith("error: ") and line.count("\n") == 0
    assert "3 problems" in line and "selection.budgets" in line and "selection.strata" in line
    assert "surrogate.dropout" in line


def test_validate_ok():
    result = invoke("validate", str(ROOT / "configs" / "demo.yaml"))
    assert result.exit_code == 0 and result.output.strip().endswith(": ok (data source found; model found)")


def test_validate_does_not_claim_to_have_found_a_hub_model(tmp_path):
    config = tmp_path / "hub.yaml"
    config.write_text(f"data:\n  source: {ROOT / 'data_samples' / 'tiny-recbole'}\nmodel:\n  name: someorg/somemodel\n")
    result = invoke("validate", str(config))
    assert result.exit_code == 0
    assert result.output.strip().endswith("model 'someorg/somemodel' taken as a hub id, not checked offline)")


def test_validate_looks_for_the_data_and_the_model(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"data:\n  source: {tmp_path / 'nowhere'}\nmodel:\n  name: smollm2\n")
    result = invoke("validate", str(bad))
    assert result.exit_code == 1 and "2 problems" in result.output
    assert "field 'data.source': data source not found" in result.output
    assert "did you mean 'smollm2-135m'?" in result.output


def test_missing_source_is_one_line_error(tmp_path):
    result = invoke("data", "describe", str(tmp_path / "nowhere"))
    assert result.exit_code == 1
    assert result.output.startswith("error: ") and "Traceback" not in result.output


def test_debug_shows_traceback(tmp_path):
    result = CliRunner().invoke(app, ["--debug", "data", "describe", str(tmp_path / "nowhere")])
    assert result.exit_code != 0 and result.exception is not None


def test_global_flags_work_after_the_command_too(tmp_path):
    from deft.errors import DataFormatError

    result = CliRunner().invoke(app, ["data", "describe", str(tmp_path / "nowhere"), "--debug"])
    assert isinstance(result.exception, DataFormatError)  # raised with its traceback, not one line
    loud, quiet = (CliRunner().invoke(app, ["data", "describe", TINY, *flag]) for flag in ([], ["--quiet"]))
    assert loud.exit_code == quiet.exit_code == 0
    assert "INFO deft" in loud.output and "INFO" not in quiet.output  # the flag took effect, not just parsed
    assert "Same as `deft --quiet COMMAND`" in invoke("prune", "--help").output


def test_python_dash_m_deft_runs():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "deft", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "prune" in proc.stdout


def test_library_does_not_import_click():
    import subprocess
    import sys

    code = "import sys, deft, deft.pipeline, deft.selection, deft.config; assert 'click' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


def test_compare_prints_each_metric_with_interval_and_verdict(tmp_path):
    import pandas as pd

    users = list(range(50))
    for name, shift in (("a", 0.2), ("b", 0.0)):
        (tmp_path / name).mkdir()
        pd.DataFrame({"user": users, "ndcg@10": [0.1 + shift + 0.01 * (u % 5) for u in users]}).to_parquet(
            tmp_path / name / "per_user.parquet")
    result = invoke("compare", str(tmp_path / "a"), str(tmp_path / "b"), "--samples", "200")
    assert result.exit_code == 0, result.output
    assert "50 users" in result.output
    assert "ndcg@10  A 0.3200  B 0.1200  A-B +0.2000 [+0.2000, +0.2000]  p < 0.01  A better" in result.output
    assert result.output.rstrip().endswith("A better")
    bad = invoke("compare", str(tmp_path / "a"), str(tmp_path / "b"), "--metric", "ndcg@20")
    assert bad.exit_code == 1 and bad.output.startswith("error: ") and "ndcg@20" in bad.output


def test_set_overrides_are_checked_before_anything_runs(tmp_path):
    tiny = str(ROOT / "configs" / "bench" / "tiny.yaml")
    out = tmp_path / "run"
    result = invoke("run", tiny, "--out", str(out), "--set", "training.epoch=2", "--set", "selection.strata=0")
    assert result.exit_code == 1
    assert "unknown key `training.epoch`" in result.output and "selection.strata" in result.output
    result = invoke("bench", "tiny", "--out", str(out), "--set", "epochs=2")
    assert result.exit_code == 2 and "SECTION.KEY=VALUE" in result.output and "'epochs=2'" in result.output
    result = invoke("bench", "tiny", "--out", str(out), "--set", "experiment.arms=[random")
    assert result.exit_code == 2 and "not valid YAML" in result.output
    assert not out.exists()


def test_evaluate_without_a_source_reads_the_configs(tmp_path, monkeypatch):
    import deft.pipeline

    seen = {}
    monkeypatch.setattr(deft.pipeline, "run_evaluate", lambda cfg, *a, **k: seen.setdefault("cfg", cfg))
    config = tmp_path / "c.yaml"
    config.write_text(f"data:\n  source: {TINY}\n")
    invoke("evaluate", "--config", str(config), "--out", str(tmp_path / "e"))
    assert seen["cfg"].data.source == TINY
    seen.clear()
    invoke("evaluate", "--out", str(tmp_path / "e"))
    assert seen["cfg"].data.source == "ml-100k"


def test_running_out_of_memory_is_one_line_with_what_to_lower(tmp_path, monkeypatch):
    import deft.pipeline

    def exhausted(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 38453641216 bytes.\nmore")

    monkeypatch.setattr(deft.pipeline, "run_prune", exhausted)
    result = invoke("prune", TINY, "--budget", "3", "--out", str(tmp_path / "p"))
    assert result.exit_code == 1
    line = result.output.strip()
    assert line.startswith("error: out of memory (") and "38453641216 bytes" in line and line.count("\n") == 0
    assert "batch_size" in line
    other = RuntimeError("a bug, not memory")
    monkeypatch.setattr(deft.pipeline, "run_prune", lambda *a, **k: (_ for _ in ()).throw(other))
    assert invoke("prune", TINY, "--budget", "3", "--out", str(tmp_path / "q")).exception is other
