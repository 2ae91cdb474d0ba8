"""Config: defaults validate, every problem is reported at once, YAML round-trips, every shipped YAML loads."""

from pathlib import Path

import pytest
import yaml

from deft.config import DeftConfig, dump_config, from_dict, load_config, resolve_budget, validate
from deft.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_are_valid():
    assert validate(DeftConfig()).selection.method == "dealrec"


def test_every_problem_reported_at_once():
    raw = {"selection": {"budgets": [0], "strata": -1}, "surrogate": {"hidden": 65, "heads": 2},
           "data": {"split": "random"}}
    with pytest.raises(ConfigError) as info:
        from_dict(raw)
    problems = info.value.problems
    assert len(problems) == 4
    assert "`selection.budgets` must be positive integers or percentages like '2%', got [0]" in problems
    assert any("selection.strata" in p for p in problems)
    assert any("surrogate.hidden" in p and "divisible" in p for p in problems)
    assert any("data.split" in p and "'random'" in p for p in problems)


def test_unknown_section_and_key_are_problems():
    with pytest.raises(ConfigError) as info:
        from_dict({"selektion": {}, "selection": {"budgit": 3}})
    text = str(info.value)
    assert "unknown section `selektion`" in text
    assert "unknown key `selection.budgit`" in text


def test_yaml_round_trip_and_lambda_alias(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("selection:\n  lambda: 0.3\n  budgets: [256, '2%']\n")
    cfg = load_config(path)
    assert cfg.selection.lambda_ == 0.3
    again = tmp_path / "again.yaml"
    again.write_text(dump_config(cfg))
    assert load_config(again) == cfg


def test_bad_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("selection:\n  budgets: [1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "bad.yaml" in str(info.value) and "line" in str(info.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize(("budget", "pool", "expected"), [(256, 1000, 256), ("2%", 9400, 188), ("0.5%", 100, 1),
                                                          ("100%", 37, 37), ("12", 50, 12)])
def test_resolve_budget(budget, pool, expected):
    assert resolve_budget(budget, pool) == expected


@pytest.mark.parametrize("path", sorted((ROOT / "configs").rglob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_yaml_loads(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("#"), f"{path} must start with a comment giving the command that uses it"
    load_config(path)
    assert isinstance(yaml.safe_load(path.read_text()), dict)


def test_repeated_experiment_seeds_are_refused():
    with pytest.raises(ConfigError, match=r"`experiment.seeds` repeats a seed, got \[0, 1, 0\]"):
        from_dict({"experiment": {"seeds": [0, 1, 0]}})
    with pytest.raises(ConfigError, match="`experiment.full_seeds` repeats a seed"):
        from_dict({"experiment": {"full_seeds": [2, 2]}})


@pytest.mark.parametrize("text", ["User {user}: {history}", "Watched {history} {", "{0} {history}"])
def test_input_formats_that_would_fail_while_rendering_are_refused(text):
    with pytest.raises(ConfigError, match="can only use the field"):
        from_dict({"prompt": {"input_format": text}})


def test_input_format_with_literal_braces_is_fine():
    assert from_dict({"prompt": {"input_format": "{{json}} {history}"}}).prompt.input_format == "{{json}} {history}"


@pytest.mark.parametrize("section, key", [("influence", "strict"), ("surrogate", "exclude_history"),
                                          ("data", "deduplicate"), ("model", "trust_remote_code"),
                                          ("effort", "ifd"), ("evaluation", "exclude_history")])
def test_switches_must_be_booleans(section, key):
    with pytest.raises(ConfigError) as info:
        from_dict({section: {key: "no"}})  # YAML's quoted "no" is a string, not false
    assert f"`{section}.{key}` must be true or false, got 'no'" in str(info.value)


def test_wrong_types_are_listed_together_never_a_traceback():
    raw = {"training": {"lr": float("nan")}, "evaluation": {"ks": ["ten"]}, "experiment": {"seeds": [0, "1"]},
           "selection": {"strata": 2.5, "budgets": [{"n": 3}]}, "prompt": {"max_tokens": "256"}}
    with pytest.raises(ConfigError) as info:
        from_dict(raw)
    assert sorted(info.value.problems) == sorted([
        "`training.lr` must be a number, got nan",
        "`evaluation.ks` must be a list of integers, got ['ten']",
        "`experiment.seeds` must be a list of integers, got [0, '1']",
        "`selection.strata` must be an integer, got 2.5",
        "`selection.budgets` must be a list of integers or strings, got [{'n': 3}]",
        "`prompt.max_tokens` must be an integer or null, got '256'",
    ])


def test_a_config_built_in_python_is_type_checked_too():
    from deft.config import SelectionConfig

    with pytest.raises(ConfigError, match=r"`selection.budgets` must be a list of integers or strings, got 256"):
        validate(DeftConfig(selection=SelectionConfig(budgets=256)))


def test_yaml_spellings_of_one_value_and_of_exponents(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("training:\n  lr: 1e-3\nselection:\n  budgets: 256\n  lambda: 5e-1\n"
                    "lora:\n  target_modules: q_proj\nevaluation:\n  ks: 10\n")
    assert yaml.safe_load(path.read_text())["training"]["lr"] == "1e-3"  # PyYAML reads it as a string
    cfg = load_config(path, {"experiment.seeds": 3})
    assert cfg.training.lr == 0.001 and cfg.selection.lambda_ == 0.5
    assert cfg.selection.budgets == [256] and cfg.lora.target_modules == ["q_proj"]
    assert cfg.evaluation.ks == [10] and cfg.experiment.seeds == [3]
    with pytest.raises(ConfigError, match=r"`training.lr` \(from the command line\) must be a number, got 'fast'"):
        load_config(path, {"training.lr": "fast"})


def test_a_config_that_is_not_utf8_names_its_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes("selection:\n  method: dealrec\n# Überblick\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"c\.yaml: line 3: not UTF-8 text \(byte 0xdc\)"):
        load_config(path)


def test_a_bad_value_from_the_command_line_is_not_blamed_on_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("selection:\n  strata: 4\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, {"selection.budgets": ["0.02"]})
    assert str(info.value).startswith("`selection.budgets` (from the command line) must be positive integers")
    assert info.value.file is None
    path.write_text("selection:\n  strata: -4\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, {"selection.budgets": ["0.02"]})
    assert info.value.file == str(path) and "`selection.strata` must be" in str(info.value)
    assert "`selection.budgets` (from the command line)" in str(info.value)


def test_an_aliased_key_or_unknown_section_from_the_command_line_is_not_blamed_on_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("selection:\n  lambda: 0.5\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, {"selection.lambda": -1})  # checked as selection.lambda_
    assert str(info.value).startswith("`selection.lambda_` (from the command line) must be >= 0.0")
    assert info.value.file is None
    with pytest.raises(ConfigError) as info:
        load_config(path, {"trainin.epochs": 3})
    assert str(info.value).startswith("unknown section `trainin` (from the command line)")
    assert info.value.file is None


def test_unknown_keys_of_mixed_types_are_listed_not_a_traceback(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  1: 2\n  foo: 3\n")
    with pytest.raises(ConfigError, match=r"unknown key `data.1`.*unknown key `data.foo`"):
        load_config(path)


def test_infinite_numbers_and_impossible_history_bounds_are_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("training:\n  lr: .inf\nselection:\n  lambda_: .nan\nsamples:\n  min_history: 5\n"
                    "  max_history: 2\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    problems = info.value.problems
    assert "`training.lr` must be a finite number, got inf" in problems
    assert any(p.startswith("`selection.lambda_` must be") and p.endswith("got nan") for p in problems)
    assert any(p.startswith("`samples.min_history` (5) must not exceed `samples.max_history` (2)") for p in problems)


def test_a_section_that_is_not_a_mapping_is_named_even_with_command_line_values(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("selection: 5\n")
    with pytest.raises(ConfigError, match=r"section `selection` must be a mapping, got 5"):
        load_config(path, {"selection.budgets": [10]})


def test_tuples_in_a_config_built_in_python_are_lists():
    from deft.config import EvaluationConfig, LoraConfig

    cfg = validate(DeftConfig(lora=LoraConfig(target_modules=("q_proj", "v_proj")), evaluation=EvaluationConfig(ks=(10, 20))))
    assert list(cfg.evaluation.ks) == [10, 20]
