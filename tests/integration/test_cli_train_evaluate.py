"""`deft train` on a coreset file and `deft evaluate` of the adapter, end to end on tiny data."""

import json
from pathlib import Path

import pandas as pd
from click.testing import CliRunner

from deft_cli.main import app

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "data_samples" / "tiny-recbole")
CONFIG = str(ROOT / "configs" / "bench" / "tiny.yaml")


def invoke(*args: str):
    return CliRunner().invoke(app, ["--quiet", *args], catch_exceptions=False)


def test_train_then_evaluate(tmp_path):
    assert invoke("prune", TINY, "--config", CONFIG, "--budget", "6", "--out", str(tmp_path / "p")).exit_code == 0
    trained = invoke("train", "--samples", str(tmp_path / "p" / "coreset.jsonl"), "--config", CONFIG,
                     "--out", str(tmp_path / "t"))
    assert trained.exit_code == 0, trained.output
    assert (tmp_path / "t" / "adapter" / "adapter_config.json").is_file()
    evaluated = invoke("evaluate", TINY, "--config", CONFIG, "--adapter", str(tmp_path / "t" / "adapter"),
                       "--out", str(tmp_path / "e"))
    assert evaluated.exit_code == 0, evaluated.output
    assert "ndcg@10=" in evaluated.output
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    per_user = pd.read_parquet(tmp_path / "e" / "per_user.parquet")
    assert abs(per_user["ndcg@10"].mean() - metrics["metrics"]["ndcg@10"]) < 1e-9


def test_train_rejects_a_file_without_the_fields(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "x", "input": "y"}\n')
    result = CliRunner().invoke(app, ["train", "--samples", str(bad), "--config", CONFIG, "--out", str(tmp_path / "t")])
    assert result.exit_code == 1
    assert "bad.jsonl" in result.output and "'output'" in result.output


def test_train_names_the_bad_json_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "x", "input": "y", "output": "z"}\n{not json\n')
    result = CliRunner().invoke(app, ["train", "--samples", str(bad), "--config", CONFIG, "--out", str(tmp_path / "t")])
    assert result.exit_code == 1
    assert "bad.jsonl line 2" in result.output
