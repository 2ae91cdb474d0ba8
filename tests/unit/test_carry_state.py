"""benchmarks/carry_state.py: an experiment's resumable state survives a trip through a committed directory."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def carry(benchmark_script):
    return benchmark_script("carry_state")


def _write(root: Path, rel: str, text: str = "x") -> None:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_text(text)


KEPT = ["stages/effort.json", "scores.parquet", "effort/effort_shards/00000.npy", "surrogate/model.safetensors",
        "arms/random-8-s0/record.json", "arms/random-8-s0/eval/per_user.parquet",
        "arms/random-8-s0/train/train_log.json",
        # a run still training: its resume point and best adapter so far are the state
        "arms/dealrec-8-s0/train/checkpoint/optimizer.safetensors", "arms/dealrec-8-s0/train/adapter/a.safetensors",
        "arms/dealrec-8-s0/train/checkpoint.old/state.json"]
LEFT = ["cache/model/model.safetensors", "arms/random-8-s0/train/adapter/a.safetensors",
        "arms/dealrec-8-s0/train/.checkpoint.abc.tmp/state.json", "stages/.effort.json.x.tmp"]


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    root = tmp_path / "run"
    for rel in KEPT + LEFT:
        _write(root, rel, rel)
    return root


def test_save_and_restore_round_trip(carry, run_dir: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    saved = carry.save(run_dir, state)
    assert sorted(map(str, saved)) == sorted(KEPT)
    fresh = tmp_path / "fresh" / "run"
    carry.restore(state, fresh)
    got = sorted(str(p.relative_to(fresh)) for p in fresh.rglob("*") if p.is_file())
    assert got == sorted(KEPT)
    assert all((fresh / rel).read_text() == rel for rel in KEPT)


def test_save_replaces_the_earlier_copy(carry, run_dir: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    carry.save(run_dir, state)
    (run_dir / "arms/dealrec-8-s0/train/checkpoint.old/state.json").unlink()
    _write(run_dir, "arms/dealrec-8-s0/train/checkpoint/state.json", "step 2")
    carry.save(run_dir, state)
    assert not (state / "arms/dealrec-8-s0/train/checkpoint.old").exists()
    assert (state / "arms/dealrec-8-s0/train/checkpoint/state.json").read_text() == "step 2"


def test_a_file_changing_while_copied_is_taken_again(carry, run_dir: Path, tmp_path: Path, monkeypatch) -> None:
    real, calls = carry._copy_into, []

    def copy_then_checkpoint(src, files, target):
        real(src, files, target)
        calls.append(1)
        if len(calls) == 1:  # the training writes a checkpoint while the first copy is taken
            _write(run_dir, "arms/dealrec-8-s0/train/checkpoint/optimizer.safetensors", "newer moments")

    monkeypatch.setattr(carry, "_copy_into", copy_then_checkpoint)
    carry.save(run_dir, tmp_path / "state")
    assert len(calls) == 2
    assert (tmp_path / "state/arms/dealrec-8-s0/train/checkpoint/optimizer.safetensors").read_text() == "newer moments"


def test_refusals(carry, run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no stages"):
        carry.save(tmp_path / "nothing", tmp_path / "state")
    state = tmp_path / "state"
    carry.save(run_dir, state)
    with pytest.raises(SystemExit, match="may be newer"):
        carry.restore(state, run_dir)  # the run directory may be further on than the saved state
    carry.restore(state, run_dir, overwrite=True)
    assert not (run_dir / "cache").exists()
    other = tmp_path / "other"
    _write(other, "notes.txt")
    with pytest.raises(SystemExit, match="holds no earlier saved state"):
        carry.save(run_dir, other)
