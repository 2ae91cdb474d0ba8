"""Splits on the tiny RecBole fixture, checked by hand against data_samples/make_fixtures.py."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest

from deft.config import DataConfig
from deft.data import Interactions, load_interactions, split_interactions
from deft.data.splits import split_points

SAMPLES = Path(__file__).resolve().parents[2] / "data_samples"


@pytest.fixture(scope="module")
def tiny() -> Interactions:
    return load_interactions(DataConfig(source=str(SAMPLES / "tiny-recbole")))


def test_leave_one_out(tiny: Interactions, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="deft.data.splits"):
        split = split_interactions(tiny, DataConfig(split="leave_one_out"))
    assert split.kind == "leave_one_out"
    assert split.train == {
        "1": ["1", "2", "3", "4"], "2": ["2", "7", "1"], "3": ["3", "10", "11"], "4": ["14", "15"],
        "5": ["4", "5", "6"], "6": ["8", "9"], "7": ["12"],
        "10": ["15", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11"],
    }
    assert split.valid == {"1": ["5"], "2": ["8"], "3": ["12"], "5": ["7"], "6": ["10"], "7": ["13"], "10": ["12"]}
    assert split.test == {"1": ["6"], "2": ["9"], "3": ["13"], "5": ["1"], "6": ["11"], "7": ["14"], "10": ["13"]}
    assert list(split.train) == ["1", "2", "3", "4", "5", "6", "7", "10"]  # natural order
    # user 4 has 2 interactions: train-only, and counted in the log
    assert "1 user(s) with fewer than 3 interactions are train-only" in caplog.text


def test_temporal(tiny: Interactions) -> None:
    # 44 events: train = the first floor(44 * 0.8) = 35 by time, valid = the next 4, test = the last 5.
    split = split_interactions(tiny, DataConfig(split="temporal", split_ratios=[0.8, 0.1, 0.1]))
    assert split.kind == "temporal"
    assert split.train == {
        "1": ["1", "2", "3", "4", "5"], "2": ["2", "7", "1", "8"], "3": ["3", "10", "11", "12", "13"],
        "4": ["14", "15"], "5": ["4", "5", "6", "7"], "6": ["8", "9", "10"], "7": ["12", "13"],
        "10": ["15", "1", "2", "3", "4", "5", "6", "7", "8", "9"],
    }
    assert split.valid == {"6": ["11"], "10": ["10", "11", "12"]}
    assert split.test == {"1": ["6"], "2": ["9"], "5": ["1"], "7": ["14"], "10": ["13"]}


def test_temporal_leaves_out_users_without_history(caplog: pytest.LogCaptureFixture) -> None:
    events = pd.DataFrame({"user": ["a", "a", "a", "b", "a", "b"], "item": ["x", "y", "z", "x", "w", "y"],
                           "timestamp": [1, 2, 3, 9, 4, 10], "rating": [float("nan")] * 6})
    inter = Interactions(events, {i: i.upper() for i in "wxyz"}, "test", "fp")
    with caplog.at_level(logging.INFO, logger="deft.data.splits"):
        split = split_interactions(inter, DataConfig(split="temporal", split_ratios=[0.5, 0.25, 0.25]))
    # cuts at 3 and 4 (floor 4.5): a's x, y, z train; a's w valid; b's x, y test -- but b has no history
    assert split.train == {"a": ["x", "y", "z"]}
    assert split.valid == {"a": ["w"]}
    assert split.test == {}
    assert "1 user(s) first seen after the train period" in caplog.text


def test_split_points_are_float_safe() -> None:
    assert split_points(44, [0.8, 0.1, 0.1]) == (35, 39)
    assert split_points(10, [0.7, 0.2, 0.1]) == (7, 9)
    assert split_points(100, [0.8, 0.1, 0.1]) == (80, 90)
