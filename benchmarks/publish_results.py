"""Copy an experiment's report into benchmarks/results/ so it can be committed.

Run from the repository root, e.g. after (or during) `deft bench ml100k-cpu`:
    python benchmarks/publish_results.py runs/bench-ml100k-cpu benchmarks/results/ml100k-cpu

Copies what the report needs to be read and re-checked: results.md / results.json, the plots, and for each
finished run its record and per-user results (the table is recomputable from them). Models, adapters,
checkpoints and caches stay behind. An experiment still running is copied as it stands; its results.md says
which runs are pending.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

TOP = ("results.md", "results.json", "manifest.json")
PER_RUN = ("record.json", "eval/per_user.parquet", "score_distribution.png")


def publish(run_dir: Path, dest: Path) -> list[Path]:
    results = run_dir / "results.json"
    if not results.is_file():
        raise SystemExit(f"error: {results} does not exist; run the experiment first (deft run / deft bench)")
    if dest.exists() and any(dest.iterdir()):
        if not (dest / "results.json").is_file():
            raise SystemExit(f"error: {dest} is not empty and holds no earlier copy (results.json); choose another")
        shutil.rmtree(dest)  # replace an earlier copy whole: it must not keep runs results.json no longer lists
    copied = []
    names = [n for n in TOP if (run_dir / n).is_file()] + [p.name for p in sorted(run_dir.glob("*.png"))]
    for key in (r["key"] for r in json.loads(results.read_text())["runs"]):
        names += [f"arms/{key}/{n}" for n in PER_RUN if (run_dir / "arms" / key / n).is_file()]
    for name in names:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(run_dir / name, target)
        copied.append(target)
    return copied


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("dest", type=Path)
    args = parser.parse_args()
    copied = publish(args.run_dir, args.dest)
    print(f"copied {len(copied)} files into {args.dest}")


if __name__ == "__main__":
    main()
