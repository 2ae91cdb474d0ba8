"""benchmarks/batch_speed.py: shapes parse or are refused by name, and every setting gets its measured row."""

from __future__ import annotations

import argparse

import pandas as pd
import pytest


@pytest.fixture(scope="module")
def batch_speed(benchmark_script):
    return benchmark_script("batch_speed")


def _frame(n: int) -> pd.DataFrame:
    titles = ["Heat (1995)", "Fargo (1996)", "Babe (1995)"]
    return pd.DataFrame({"sample_id": [f"s{i}" for i in range(n)], "instruction": ["Recommend a movie."] * n,
                         "input": [f"The user watched: {titles[i % 3]}." for i in range(n)],
                         "output": [titles[(i + 1) % 3] for i in range(n)]})


def test_shapes_parse_and_bad_ones_are_refused(batch_speed):
    assert batch_speed.parse_shape("16x1") == (16, 1)
    assert batch_speed.parse_shape("8X2") == (8, 2)
    for bad in ("16", "16x", "0x2", "8x2x1", "ax1"):
        with pytest.raises(argparse.ArgumentTypeError, match="shape"):
            batch_speed.parse_shape(bad)


def test_report_has_a_row_per_setting_with_the_real_step_count(batch_speed, monkeypatch, tmp_path):
    monkeypatch.setattr(batch_speed, "pool_samples", lambda loaded, n, seed: (_frame(n), "test samples"))
    out = tmp_path / "speed.md"
    batch_speed.main(["--model", "tiny-llama", "--samples", "8", "--shapes", "2x2", "4x1", "--effort", "4",
                      "--out", str(out)])
    lines = out.read_text().splitlines()
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in lines if line.startswith("| ")}
    # 8 samples: 4 micro-batches of 2 accumulated in pairs, or 2 of 4, are 2 optimizer steps either way
    assert rows["2x2"][1] == "2" and rows["4x1"][1] == "2"
    assert float(rows["2x2"][2]) > 0 and float(rows["4"][1]) > 0
    assert "8 samples from the test samples" in out.read_text()
