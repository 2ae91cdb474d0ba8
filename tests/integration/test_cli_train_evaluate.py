"""`deft train` on a coreset file and `deft evaluate` of the adapter, end to end on tiny data."""

import json
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from deft.errors import DeftError
from deft_cli.main import app

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "data_samples" / "tiny-recbole")
CONFIG = str(ROOT / "configs" / "bench" / "tiny.yaml")


def invoke(*args: str):
    return CliRunner().invoke(app, ["--quiet", *args], catch_exceptions=False)


def test_train_then_evaluate(tmp_path):
    assert invoke("prune", TINY, "--config", CONFIG, "--budget", "6", "--out", str(tmp_path / "p")).exit_code == 0
    trained = invoke("train", "--samples", str(tmp_path / "p" / "coreset.jsonl"), "--valid",
                     str(tmp_path / "p" / "valid.jsonl"), "--config", CONFIG, "--out", str(tmp_path / "t"))
    assert trained.exit_code == 0, trained.output
    assert "best validation loss" in trained.output
    assert (tmp_path / "t" / "adapter" / "adapter_config.json").is_file()
    evaluated = invoke("evaluate", TINY, "--config", CONFIG, "--adapter", str(tmp_path / "t" / "adapter"),
                       "--out", str(tmp_path / "e"))
    assert evaluated.exit_code == 0, evaluated.output
    assert "ndcg@10=" in evaluated.output
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    per_user = pd.read_parquet(tmp_path / "e" / "per_user.parquet")
    assert abs(per_user["ndcg@10"].mean() - metrics["metrics"]["ndcg@10"]) < 1e-9
    # the base model into the same directory would replace the adapter's results: refused without --overwrite
    before = (tmp_path / "e" / "metrics.json").read_bytes()
    base = CliRunner().invoke(app, ["--quiet", "evaluate", TINY, "--config", CONFIG, "--out", str(tmp_path / "e")])
    assert base.exit_code == 1 and "--overwrite" in base.output and "fingerprint" in base.output
    assert (tmp_path / "e" / "metrics.json").read_bytes() == before
    replaced = invoke("evaluate", TINY, "--config", CONFIG, "--out", str(tmp_path / "e"), "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["adapter"] is None


def test_evaluate_names_a_missing_or_wrong_adapter_before_loading_anything(tmp_path):
    for adapter, expected in ((tmp_path / "nowhere", "does not exist"), (tmp_path, "adapter_config.json")):
        result = CliRunner().invoke(app, ["evaluate", TINY, "--config", CONFIG, "--adapter", str(adapter),
                                          "--out", str(tmp_path / "e")])
        assert result.exit_code == 1, result.output
        assert result.output.startswith("error: ") and expected in result.output
        assert result.output.count("\n") == 1


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


def test_train_names_the_row_with_a_missing_or_empty_field(tmp_path):
    good = '{"instruction": "x", "input": "y", "output": "z"}\n'
    for row, expected in (('{"instruction": "x", "input": "y"}', "bad.jsonl line 3: field 'output': is missing"),
                          ('{"instruction": "x", "input": "y", "output": " "}', "line 3: field 'output': is empty"),
                          ('{"instruction": 7, "input": "y", "output": "z"}', "line 3: field 'instruction'"),
                          ('["x", "y", "z"]', "bad.jsonl line 3: not a JSON object")):
        bad = tmp_path / "bad.jsonl"
        bad.write_text(good + good + row + "\n")
        result = CliRunner().invoke(app, ["train", "--samples", str(bad), "--config", CONFIG,
                                          "--out", str(tmp_path / "t")])
        assert result.exit_code == 1 and expected in result.output, result.output
    pd.DataFrame({"instruction": ["x", "x"], "input": ["y", None], "output": ["z", "z"]}).to_parquet(
        tmp_path / "bad.parquet")
    result = CliRunner().invoke(app, ["train", "--samples", str(tmp_path / "bad.parquet"), "--config", CONFIG,
                                      "--out", str(tmp_path / "t")])
    assert result.exit_code == 1 and "bad.parquet: field 'input': row 2: is missing" in result.output


ROW = '{"sample_id": "%s", "instruction": "x", "input": "y", "output": "z"}\n'


@pytest.mark.parametrize(("name", "content", "expected"), [
    ("dup.jsonl", (ROW % "a" + ROW % "b" + "\n" + ROW % "a").encode(),
     "dup.jsonl line 4: field 'sample_id': 'a' repeats the id of line 1"),
    ("latin.jsonl", (ROW % "Amélie").encode("latin-1"), "latin.jsonl line 1: not UTF-8 text (byte 0xe9"),
    ("empty.jsonl", b"\n\n", "empty.jsonl: the file holds no samples"),
    ("rows.csv", b"instruction,input,output\nx,y,z\n", "rows.csv: unsupported samples file type '.csv'"),
    ("broken.parquet", b"PAR1 not really", "broken.parquet: not a readable Parquet file"),
])
def test_samples_file_errors_name_file_line_and_field(tmp_path, name, content, expected):
    from deft.errors import DeftError
    from deft.pipeline import load_samples_file

    (tmp_path / name).write_bytes(content)
    with pytest.raises(DeftError) as info:
        load_samples_file(tmp_path / name)
    assert expected in str(info.value)


def test_samples_file_ids_and_targets_must_be_present(tmp_path):
    from deft.errors import DeftError
    from deft.pipeline import load_samples_file

    frame = pd.DataFrame({"sample_id": ["1:1", None], "instruction": "x", "input": "y", "output": "z"})
    frame.to_parquet(tmp_path / "ids.parquet")
    with pytest.raises(DeftError, match=r"ids\.parquet: field 'sample_id': row 2: is missing"):
        load_samples_file(tmp_path / "ids.parquet")
    frame.assign(sample_id=["1:1", "1:2"], user=["1", "1"], target_item=["5", None]).to_parquet(tmp_path / "t.parquet")
    with pytest.raises(DeftError, match=r"t\.parquet: field 'target_item': row 2: is missing"):
        load_samples_file(tmp_path / "t.parquet")
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + (ROW % "a").encode())
    assert list(load_samples_file(tmp_path / "bom.jsonl")["sample_id"]) == ["a"]


def test_samples_without_input_read_it_as_empty_and_misnamed_columns_say_what_to_rename(tmp_path):
    from deft.data.prompts import render_prompt
    from deft.pipeline import load_samples_file

    path = tmp_path / "no_input.jsonl"
    path.write_text('{"instruction": "Name a colour.", "output": "red"}\n{"instruction": "And another.", '
                    '"output": "blue"}\n')
    frame = load_samples_file(path)
    assert list(frame["input"]) == ["", ""]
    assert render_prompt("Name a colour.", "") == render_prompt(frame["instruction"][0], frame["input"][0])
    for record, expected in (('{"instruction": "x", "Input": "bonjour", "output": "y"}',
                              "no column 'input', but 'Input': rename it"),  # not read as an empty input
                             ('{"instruction": "x", "Output": "y"}', "rename 'Output' to 'output'"),
                             ('{"prompt": "x", "response": "y"}', "rename the prompt and response columns"),
                             ('{"instruction": "x", "output": null}', "field 'output': is missing (null"),
                             ('{"instruction": "x", "output": 7}', "field 'output': is not a string but int 7")):
        path.write_text(record + "\n")
        with pytest.raises(DeftError) as caught:
            load_samples_file(path)
        assert expected in str(caught.value), str(caught.value)


def test_samples_files_may_be_gzipped_or_upper_case(tmp_path):
    import gzip

    from deft.pipeline import load_samples_file

    text = ROW % "a" + ROW % "b"
    (tmp_path / "plain.jsonl").write_text(text)
    (tmp_path / "LOUD.JSONL").write_text(text)
    with gzip.open(tmp_path / "packed.jsonl.gz", "wt") as fh:
        fh.write(text)
    frames = [load_samples_file(tmp_path / name) for name in ("plain.jsonl", "LOUD.JSONL", "packed.jsonl.gz")]
    for frame in frames[1:]:
        pd.testing.assert_frame_equal(frame, frames[0])
    with gzip.open(tmp_path / "bad.jsonl.gz", "wt") as fh:
        fh.write(ROW % "a" + '{"instruction": "x"\n')
    with pytest.raises(DeftError, match=r"bad\.jsonl\.gz line 2: not valid JSON"):
        load_samples_file(tmp_path / "bad.jsonl.gz")
    (tmp_path / "plain.jsonl.gz").write_text(text)  # named .gz, not compressed
    with pytest.raises(DeftError, match=r"plain\.jsonl\.gz: not a readable gzip file"):
        load_samples_file(tmp_path / "plain.jsonl.gz")
    (tmp_path / "cut.jsonl.gz").write_bytes(gzip.compress(text.encode())[:-12])  # truncated
    with pytest.raises(DeftError, match=r"cut\.jsonl\.gz: not a readable gzip file"):
        load_samples_file(tmp_path / "cut.jsonl.gz")
