"""describe() counts on the tiny fixture, and the text block `deft data describe` prints."""

from __future__ import annotations

import json
from pathlib import Path

from deft.config import DataConfig, PromptConfig, SamplesConfig
from deft.data import build_samples, describe, format_description, load_interactions, split_interactions

SAMPLES = Path(__file__).resolve().parents[2] / "data_samples"


def tiny_description() -> dict:
    inter = load_interactions(DataConfig(source=str(SAMPLES / "tiny-recbole")))
    split = split_interactions(inter, DataConfig())
    samples = build_samples(split, inter.titles, SamplesConfig(), PromptConfig())
    return describe(inter, split, samples)


def test_describe_counts() -> None:
    d = tiny_description()
    assert (d["users"], d["items"], d["interactions"]) == (8, 15, 44)
    assert d["density"] == 44 / (8 * 15)
    assert d["interactions_per_user"] == {"min": 2, "median": 5.0, "mean": 5.5, "max": 14}
    assert d["duplicate_titles"] == {"count": 1, "items": 2, "examples": [
        {"title": "Midnight at the Lighthouse (1994)", "items": ["7", "12"]}]}
    assert d["split"] == {"kind": "leave_one_out", "train_users": 8, "train_interactions": 30, "valid_users": 7,
                          "valid_targets": 7, "test_users": 7, "test_targets": 7, "train_only_users": 1}
    assert d["samples"]["count"] == 22
    assert d["samples"]["users"] == 7
    # lengths: users 1-6 give 1,2,3 | 1,2 | 1,2 | 1 | 1,2 | 1; user 10 gives 1..10 and 10 (sum 82 over 22)
    assert d["samples"]["history_length"] == {"min": 1, "median": 2.0, "mean": 3.73, "max": 10}
    json.dumps(d)  # manifest-ready


def test_describe_without_split_or_samples() -> None:
    inter = load_interactions(DataConfig(source=str(SAMPLES / "tiny-amazon-2018")))
    d = describe(inter)
    assert "split" not in d and "samples" not in d
    assert d["duplicate_titles"]["count"] == 0
    assert "duplicate titles: 0 titles" in format_description(d)


def test_format_description_renders_two_samples() -> None:
    text = format_description(tiny_description())
    assert "users 8 | items 15 | interactions 44 | density 36.67%" in text
    assert "duplicate titles: 1 titles shared by 2 items (e.g. 'Midnight at the Lighthouse (1994)': 7, 12)" in text
    assert "train: 30 interactions of 8 users (1 train-only)" in text
    assert "Samples: 22 from 7 users" in text
    assert "--- sample 1:1 ---\n### Instruction:\nGiven the movies" in text
    assert ("### Input:\nThe user watched: The Clockwork Garden (1987).\n\n### Response:\n"
            "Paper Lanterns Over Oslo (1992)\n") in text
    assert "--- sample 1:2 ---" in text and "--- sample 1:3 ---" not in text
