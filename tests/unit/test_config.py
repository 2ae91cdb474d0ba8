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


@pytest.mark.parametrize("section, key", [("influence", "strict"), ("surrogate", "exclude_history")])
def test_switches_must_be_booleans(section, key):
    with pytest.raises(ConfigError) as info:
        from_dict({section: {key: "no"}})  # YAML's quoted "no" is a string, not false
    assert f"`{section}.{key}` must be true or false, got 'no'" in str(info.value)
