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

PER_RUN = ("record.json", "eval/per_user.parquet")
# A relative markdown image link, `![alt](path)`; absolute URLs are left alone.
_IMAGE = re.compile(r"(!\[[^\]]*\]\()(?![a-z]+://|/)([^)]+\))")


def relink(markdown: str, prefix: str) -> str:
    """Point the report's relative image links into `prefix/`, where the plots are published."""
    return _IMAGE.sub(lambda m: f"{m.group(1)}{prefix}/{m.group(2)}", markdown)


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def publish(run_dir: Path, dest: Path) -> list[Path]:
    results = run_dir / "results.json"
    if not results.is_file():
        raise SystemExit(f"error: {results} does not exist; run the experiment first (deft run / deft bench)")
    markdown = (run_dir / "results.md").read_text()
    # The plots the report shows (not every PNG in the directory: `deft prune` may have left its own there).
    images = [m.group(2)[:-1] for m in _IMAGE.finditer(markdown)]
    if missing := [name for name in images if not (run_dir / name).is_file()]:
        raise SystemExit(f"error: {run_dir / 'results.md'} shows images that do not exist: {', '.join(missing)}")
    report, data = dest.with_suffix(".md"), dest.with_suffix(".json")
    if dest.exists() and any(dest.iterdir()):
        if not (dest / "manifest.json").is_file() and not (dest / "results.json").is_file():
            raise SystemExit(f"error: {dest} is not empty and holds no earlier copy (manifest.json); choose another")
        shutil.rmtree(dest)  # replace an earlier copy whole: it must not keep runs results.json no longer lists
    copied = []
    names = ["manifest.json", *images]
    for key in (r["key"] for r in json.loads(results.read_text())["runs"]):
        names += [f"arms/{key}/{n}" for n in PER_RUN if (run_dir / "arms" / key / n).is_file()]
    for name in [n for n in names if (run_dir / n).is_file()]:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(run_dir / name, target)
        copied.append(target)
    _replace(report, relink(markdown, dest.name))
    _replace(data, results.read_text())
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
