"""Copy an experiment's report into benchmarks/results/ so it can be committed.

Run from the repository root, e.g. after (or during) `deft bench ml100k-cpu`:
    python benchmarks/publish_results.py runs/bench-ml100k-cpu benchmarks/results/ml100k-cpu

Writes the report where readers look for it, `DEST.md` and `DEST.json` (results.md with its image links pointed
into DEST/, and results.json as written), and under `DEST/` what the report needs to be read and re-checked: the
plots the report shows, the manifest, and for each finished run its record and per-user results (the table is recomputable from
them). Models, adapters, checkpoints and caches stay behind. An experiment still running is copied as it stands;
its report says which runs are pending.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

PER_RUN = ("record.json", "eval/per_user.parquet", "coreset.parquet")
# A relative markdown image link, `![alt](path)`; absolute URLs are left alone.
_IMAGE = re.compile(r"(!\[[^\]]*\]\()(?![a-z]+://|/)([^)]+\))")


def relink(markdown: str, prefix: str) -> str:
    """Point the report's relative image links into `prefix/`, where the plots are published."""
    return _IMAGE.sub(lambda m: f"{m.group(1)}{prefix}/{m.group(2)}", markdown)


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _consistent(payload: dict, markdown: str, run_dir: Path) -> None:
    """results.json and results.md must come from one report: the experiment rewrites both after every run, and
    a copy taken in between would publish two different states under one name."""
    status = payload.get("status") or {}
    banner = (f"Partial results: {status.get('finished')} of {status.get('planned')} runs finished"
              if status.get("pending") else None)
    same = f"date: {payload.get('date')}" in markdown and (
        banner in markdown if banner else "Partial results:" not in markdown)
    if not same:
        raise SystemExit(f"error: {run_dir}/results.json and results.md describe different states (the experiment "
                         "is rewriting them?); publish again in a moment")


def publish(run_dir: Path, dest: Path) -> list[Path]:
    results = run_dir / "results.json"
    if not results.is_file():
        raise SystemExit(f"error: {results} does not exist; run the experiment first (deft run / deft bench)")
    data_text, markdown = results.read_text(), (run_dir / "results.md").read_text()
    payload = json.loads(data_text)
    _consistent(payload, markdown, run_dir)
    # The plots the report shows (not every PNG in the directory: `deft prune` may have left its own there).
    images = [m.group(2)[:-1] for m in _IMAGE.finditer(markdown)]
    if missing := [name for name in images if not (run_dir / name).is_file()]:
        raise SystemExit(f"error: {run_dir / 'results.md'} shows images that do not exist: {', '.join(missing)}")
    if dest.exists() and any(dest.iterdir()) and not (dest / "manifest.json").is_file():
        raise SystemExit(f"error: {dest} is not empty and holds no earlier copy (manifest.json); choose another")
    names = ["manifest.json", *images]
    for key in (r["key"] for r in payload["runs"]):
        names += [f"arms/{key}/{n}" for n in PER_RUN]
    # Build the copy beside the old one, then swap: a failure midway leaves the earlier copy whole, and the new
    # one never keeps runs that results.json no longer lists.
    staging, old = dest.with_name(dest.name + ".new"), dest.with_name(dest.name + ".old")
    for leftover in (staging, old):
        shutil.rmtree(leftover, ignore_errors=True)
    copied = []
    for name in [n for n in names if (run_dir / n).is_file()]:
        target = staging / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(run_dir / name, target)
        copied.append(dest / name)
    if dest.exists():
        dest.rename(old)
    staging.rename(dest)
    shutil.rmtree(old, ignore_errors=True)
    report, data = dest.with_name(dest.name + ".md"), dest.with_name(dest.name + ".json")
    _replace(report, relink(markdown, dest.name))
    _replace(data, data_text)
    return [report, data, *copied]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("dest", type=Path)
    args = parser.parse_args()
    copied = publish(args.run_dir, args.dest)
    print(f"wrote {copied[0]} and {copied[1]}, and {len(copied) - 2} files into {args.dest}")


if __name__ == "__main__":
    main()
