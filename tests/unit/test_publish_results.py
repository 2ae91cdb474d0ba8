"""benchmarks/publish_results.py: the report lands at DEST.md / DEST.json with its plots reachable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def publish_results(benchmark_script):
    return benchmark_script("publish_results")


def _experiment(root: Path, keys: list[str]) -> Path:
    root.mkdir()
    (root / "results.json").write_text(json.dumps({"date": "2026-11-21 10:00", "runs": [{"key": k} for k in keys]}))
    (root / "results.md").write_text(
        "# r\n- date: 2026-11-21 10:00\n![NDCG](ndcg_by_arm.png)\n"
        "![d](arms/dealrec-8-s0/score_distribution.png)\n![web](https://x.org/a.png)\n"
    )
    (root / "manifest.json").write_text("{}")
    (root / "ndcg_by_arm.png").write_bytes(b"png")
    (root / "coverage.png").write_bytes(b"png")  # in the directory but not in the report
    for key in [*keys, "unlisted-8-s0"]:
        (root / "arms" / key / "eval").mkdir(parents=True)
        (root / "arms" / key / "record.json").write_text(key)
        (root / "arms" / key / "eval" / "per_user.parquet").write_bytes(b"pq")
        (root / "arms" / key / "adapter.safetensors").write_bytes(b"weights")
    (root / "arms" / "dealrec-8-s0" / "score_distribution.png").write_bytes(b"png")
    return root


def test_report_lands_at_named_paths_with_links_into_the_asset_dir(tmp_path, publish_results):
    run = _experiment(tmp_path / "run", ["random-8-s0", "dealrec-8-s0"])
    dest = tmp_path / "results" / "tier"
    publish_results.publish(run, dest)

    report = (tmp_path / "results" / "tier.md").read_text()
    assert "![NDCG](tier/ndcg_by_arm.png)" in report
    assert "![d](tier/arms/dealrec-8-s0/score_distribution.png)" in report
    assert "![web](https://x.org/a.png)" in report  # absolute links are not rewritten
    for link in ("tier/ndcg_by_arm.png", "tier/arms/dealrec-8-s0/score_distribution.png"):
        assert (dest.parent / link).is_file()
    assert json.loads((tmp_path / "results" / "tier.json").read_text()) == json.loads((run / "results.json").read_text())
    assert (dest / "arms" / "random-8-s0" / "eval" / "per_user.parquet").is_file()
    assert not (dest / "arms" / "unlisted-8-s0").exists()  # only runs the report lists
    assert not list(dest.rglob("adapter.safetensors"))  # weights stay behind
    assert not (dest / "coverage.png").exists()


def test_republishing_drops_runs_no_longer_listed_and_refuses_a_foreign_dir(tmp_path, publish_results):
    run = _experiment(tmp_path / "run", ["random-8-s0", "dealrec-8-s0"])
    dest = tmp_path / "tier"
    publish_results.publish(run, dest)
    (run / "results.json").write_text(json.dumps({"date": "2026-11-21 11:00", "runs": [{"key": "random-8-s0"}]}))
    (run / "results.md").write_text("# r\n- date: 2026-11-21 11:00\n![NDCG](ndcg_by_arm.png)\n")
    publish_results.publish(run, dest)
    assert not (dest / "arms" / "dealrec-8-s0").exists()

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit, match="not empty"):
        publish_results.publish(run, foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"

    (run / "results.md").write_text("# r\n- date: 2026-11-21 11:00\n![gone](lost.png)\n")
    with pytest.raises(SystemExit, match="lost.png"):
        publish_results.publish(run, dest)
    assert (dest / "ndcg_by_arm.png").is_file()  # a refused publish leaves the earlier copy whole


def test_a_report_caught_between_its_two_writes_is_refused(tmp_path, publish_results):
    run = _experiment(tmp_path / "run", ["random-8-s0", "dealrec-8-s0"])
    payload = {"date": "2026-11-21 10:00", "runs": [{"key": "random-8-s0"}],
               "status": {"finished": 1, "planned": 2, "pending": ["dealrec-8-s0"]}}
    (run / "results.json").write_text(json.dumps(payload))
    with pytest.raises(SystemExit, match="different states"):  # the md is still the finished one
        publish_results.publish(run, tmp_path / "tier")
    (run / "results.md").write_text("- date: 2026-11-21 10:00\n> **Partial results: 1 of 2 runs finished.**\n")
    publish_results.publish(run, tmp_path / "v0.2")
    assert (tmp_path / "v0.2.md").is_file() and (tmp_path / "v0.2.json").is_file()  # a dotted name kept whole
