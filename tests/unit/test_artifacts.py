"""Run directory: atomic writes, stage caching by fingerprint, refusal to mix runs, safe formats only."""

import json

import numpy as np
import pandas as pd
import pytest

from deft.artifacts import (
    RunDir,
    atomic_dir,
    atomic_path,
    fingerprint,
    frame_fingerprint,
    read_json,
    read_npy,
    write_json,
    write_jsonl,
    write_npy,
    write_parquet,
)
from deft.errors import ArtifactMismatchError, OutputExistsError


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "x.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert read_json(target) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_outputs_get_the_usual_file_mode_not_mkstemps_owner_only(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        write_json(tmp_path / "x.json", {"a": 1})
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "f").write_text("")
    finally:
        os.umask(old)
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755


def test_fingerprints_are_stable_and_sensitive():
    assert fingerprint({"b": 1, "a": [1, 2]}) == fingerprint({"a": [1, 2], "b": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})
    f = pd.DataFrame({"x": [1, 2], "y": ["a", "b"]})
    assert frame_fingerprint(f) == frame_fingerprint(f.copy())
    assert frame_fingerprint(f) != frame_fingerprint(f.iloc[::-1].reset_index(drop=True))


def test_long_array_cells_are_hashed_whole():
    # numpy abbreviates arrays over 1,000 items when printing them: the middle must still count
    a, b = np.arange(1200).astype(str), np.arange(1200).astype(str)
    b[600] = "x"
    assert frame_fingerprint(pd.DataFrame({"history": [a]})) != frame_fingerprint(pd.DataFrame({"history": [b]}))
    # short arrays hash as they always did (the keys of existing run directories hold)
    assert frame_fingerprint(pd.DataFrame({"history": [np.array(["1", "2"])]})) == "53ec24432d6f6743"


def test_jsonl_is_strict_and_writes_dates(tmp_path):
    when = pd.Timestamp("2024-05-01 12:30")
    write_jsonl(tmp_path / "a.jsonl", [{"t": when, "d": np.datetime64("2024-05-02"), "day": when.date()}])
    assert json.loads((tmp_path / "a.jsonl").read_text()) == {"t": "2024-05-01T12:30:00",
                                                              "d": "2024-05-02T00:00:00", "day": "2024-05-01"}
    with pytest.raises(ValueError, match="not JSON compliant"):
        write_jsonl(tmp_path / "b.jsonl", [{"x": float("nan")}])
    assert not (tmp_path / "b.jsonl").exists()


def test_stage_is_cached_and_mismatch_is_refused(tmp_path):
    run = RunDir(tmp_path)
    assert not run.is_done("scores", "fp1")
    with run.stage("scores", "fp1") as cost:
        write_parquet(run.path("scores.parquet"), pd.DataFrame({"sample_id": ["a"], "s": [1.0]}))
    assert cost.wall_s >= 0 and cost.peak_mb > 0
    assert run.is_done("scores", "fp1")
    with pytest.raises(ArtifactMismatchError) as info:
        run.is_done("scores", "fp2")
    assert "fp1" in str(info.value) and "fp2" in str(info.value) and "--overwrite" in str(info.value)
    assert not RunDir(tmp_path, overwrite=True).is_done("scores", "fp2")


def test_failed_stage_is_not_marked_done(tmp_path):
    run = RunDir(tmp_path)
    with pytest.raises(ValueError), run.stage("effort", "fp"):
        raise ValueError("interrupted")
    assert not run.is_done("effort", "fp")


def test_a_stage_redone_and_killed_midway_is_no_longer_done_under_its_old_key(tmp_path):
    run = RunDir(tmp_path)
    with run.stage("scores", "old"):
        write_parquet(run.path("scores.parquet"), pd.DataFrame({"s": [1.0]}))
    overwriting = RunDir(tmp_path, overwrite=True)
    assert not overwriting.is_done("scores", "new")
    with pytest.raises(KeyboardInterrupt), overwriting.stage("scores", "new"):
        write_parquet(run.path("scores.parquet"), pd.DataFrame({"s": [2.0]}))  # replaced, then killed
        raise KeyboardInterrupt
    assert not RunDir(tmp_path).is_done("scores", "old")  # the old settings do not trust the new file
    assert not RunDir(tmp_path).is_done("scores", "new")


def test_a_directory_of_other_files_is_refused_only_where_names_collide(tmp_path):
    from deft.errors import OutputExistsError

    (tmp_path / "run.log").write_text("log")  # `deft run … > OUT/run.log`
    (tmp_path / ".gitkeep").write_text("")
    RunDir(tmp_path)
    (tmp_path / "report.md").write_text("someone's notes")
    with pytest.raises(OutputExistsError, match=r"holds report\.md but no DEFT run"):
        RunDir(tmp_path)
    RunDir(tmp_path, overwrite=True)


def test_a_run_killed_inside_its_first_stage_has_claimed_its_directory(tmp_path):
    run = RunDir(tmp_path)
    with pytest.raises(KeyboardInterrupt), run.stage("samples", "fp"):
        write_parquet(run.path("samples.parquet"), pd.DataFrame({"s": [1.0]}))
        raise KeyboardInterrupt
    again = RunDir(tmp_path)  # not refused as someone else's directory
    assert not again.is_done("samples", "fp") and again.stage_meta("samples")["fingerprint"] == "fp"


def test_guard_output_and_manifest(tmp_path):
    run = RunDir(tmp_path)
    (tmp_path / "coreset.jsonl").write_text("{}\n")
    with pytest.raises(OutputExistsError):
        run.guard_output(tmp_path / "coreset.jsonl")
    manifest = run.write_manifest(counts={"pool": 3})
    assert manifest["counts"] == {"pool": 3} and "machine" in manifest and "packages" in manifest


def test_npy_round_trip_without_pickle(tmp_path):
    write_npy(tmp_path / "a.npy", np.arange(5.0))
    assert read_npy(tmp_path / "a.npy").tolist() == [0, 1, 2, 3, 4]
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError):
        read_npy(tmp_path / "obj.npy")


def test_atomic_dir_replaces_whole_or_not_at_all(tmp_path):
    from deft.artifacts import atomic_dir, existing_dir

    dest = tmp_path / "adapter"
    with atomic_dir(dest) as tmp:
        (tmp / "a.txt").write_text("one")
    with pytest.raises(RuntimeError), atomic_dir(dest) as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("crash")
    assert (dest / "a.txt").read_text() == "one"
    with atomic_dir(dest) as tmp:
        (tmp / "b.txt").write_text("two")
    assert sorted(p.name for p in dest.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
    dest.rename(tmp_path / "adapter.old")  # a crash between the two renames
    assert existing_dir(dest) == tmp_path / "adapter.old"


def test_stage_resumed_from_an_earlier_run_is_charged_in_full(tmp_path):
    run = RunDir(tmp_path)
    with run.stage("effort", "fp") as cost:
        cost.extra["earlier_wall_s"] = 120.0  # shards an interrupted run computed before
    assert cost.wall_s < 1
    assert run.stage_costs()["effort"]["wall_s"] == round(120.0 + cost.wall_s, 3)


def test_key_changes_name_the_settings_that_differ():
    from deft.artifacts import key_changes

    old = {"pool": "abc", "settings": {"lambda_": 0.5, "strata": 10}, "seed": 0, "code": {"selection": 2}}
    new = {"pool": "abc", "settings": {"lambda_": 0.3, "strata": 10}, "seed": 0, "budget": 6}
    assert key_changes(old, new) == ["budget: (unset) -> 6", "code.selection: 2 -> (unset)",
                                     "settings.lambda_: 0.5 -> 0.3"]
    many = {f"k{i}": i for i in range(8)}
    assert key_changes(many, {k: v + 1 for k, v in many.items()}, limit=2)[-1] == "and 6 more"
    assert key_changes({"t": "x" * 50}, {"t": "y"}) == ['t: "' + "x" * 36 + '... -> "y"']
