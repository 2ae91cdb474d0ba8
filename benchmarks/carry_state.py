"""Carry a long experiment's resumable state between machines through a committed directory, and back.

A benchmark tier that runs for days outlives the machine it started on: here each session may begin on a
fresh clone (a different machine, even), where `runs/` (ignored by git) is gone, and with it every finished run
and hours of scoring. `save` copies what the experiment needs to go on where it stopped into a directory that
can be committed; `restore` puts it back into a run directory, after which the same `deft bench` command resumes.

    python benchmarks/carry_state.py save runs/bench-ml100k-cpu benchmarks/state/ml100k-cpu
    python benchmarks/carry_state.py restore benchmarks/state/ml100k-cpu runs/bench-ml100k-cpu

Carried: stage records, samples and scores (the effort pass alone is ~1.5 h), the surrogate, each finished run's
record, coreset, per-user results and training log, and the running training's checkpoint (adapter, optimizer
moments, RNG states) and best adapter so far. Left behind: `cache/` (the converted model and the item
embeddings, rebuilt in minutes), finished runs' adapters (their results are in the records; the weights would
add ~2 MB per run to every commit), and temporary files of writes in progress. Save right after a checkpoint
is written (the log says when): a copy taken while one is being renamed in falls back to the one before.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from deft.artifacts import atomic_dir

SKIP_DIRS = ("cache",)  # top-level directories rebuilt from the installed model and data


def _finished_run_adapter(rel: Path, run_dir: Path) -> bool:
    """``arms/<key>/train/adapter`` of a run whose record is written: its weights are not needed to resume."""
    parts = rel.parts
    return (len(parts) == 4 and parts[0] == "arms" and parts[2:] == ("train", "adapter")
            and (run_dir / "arms" / parts[1] / "record.json").is_file())


def carried_files(run_dir: Path) -> list[Path]:
    """The files `save` copies, relative to ``run_dir``, in a stable order."""
    out: list[Path] = []

    def walk(directory: Path) -> None:
        for entry in sorted(directory.iterdir()):
            rel = entry.relative_to(run_dir)
            if entry.name.startswith(".") or entry.name.endswith(".tmp"):
                continue  # a write in progress, not yet renamed in
            if entry.is_dir():
                skipped = (len(rel.parts) == 1 and rel.name in SKIP_DIRS) or _finished_run_adapter(rel, run_dir)
                if not skipped:
                    walk(entry)
            elif entry.is_file():
                out.append(rel)

    walk(run_dir)
    return out


def _stats(root: Path) -> dict[Path, tuple[int, int]]:
    return {rel: ((st := (root / rel).stat()).st_size, st.st_mtime_ns) for rel in carried_files(root)}


def _copy_into(src_root: Path, files: list[Path], target: Path) -> None:
    for rel in files:
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src_root / rel, target / rel)


class _Changed(Exception):
    """A file of the run changed while the copy was taken."""


def save(run_dir: Path, dest: Path, attempts: int = 3) -> list[Path]:
    """Copy the running experiment's state; the copy is kept only if no file changed while it was taken (a
    checkpoint's adapter from one step and optimizer moments from another would resume wrongly)."""
    if not (run_dir / "stages").is_dir():
        raise SystemExit(f"error: {run_dir} holds no DEFT run (no stages/); nothing to save")
    if dest.exists() and any(dest.iterdir()) and not (dest / "stages").is_dir():
        raise SystemExit(f"error: {dest} is not empty and holds no earlier saved state (stages/); choose another")
    for _ in range(attempts):
        try:
            with atomic_dir(dest) as tmp:  # swapped in whole, or (on an exception) not at all
                before = _stats(run_dir)
                _copy_into(run_dir, sorted(before), tmp)
                if _stats(run_dir) != before:
                    raise _Changed
            return sorted(before)
        except (_Changed, FileNotFoundError):  # changed or renamed away while copied: take the copy again
            continue
    raise SystemExit(f"error: {run_dir} kept changing while it was copied ({attempts} tries); save again after "
                     f"the next checkpoint. {dest} is unchanged")


def restore(state: Path, run_dir: Path, *, overwrite: bool = False) -> list[Path]:
    if not (state / "stages").is_dir():
        raise SystemExit(f"error: {state} holds no saved state (no stages/); nothing to restore")
    if run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
        # The run directory may be further on than the saved state (the same machine, a later checkpoint).
        raise SystemExit(f"error: {run_dir} exists and is not empty; it may be newer than {state}. Use "
                         "--overwrite to replace it by the saved state")
    files = carried_files(state)
    with atomic_dir(run_dir) as tmp:
        _copy_into(state, files, tmp)
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    p_save = sub.add_parser("save", help="copy RUN_DIR's resumable state into STATE")
    p_save.add_argument("run_dir", type=Path)
    p_save.add_argument("state", type=Path)
    p_restore = sub.add_parser("restore", help="copy STATE back into RUN_DIR")
    p_restore.add_argument("state", type=Path)
    p_restore.add_argument("run_dir", type=Path)
    p_restore.add_argument("--overwrite", action="store_true", help="replace a non-empty RUN_DIR")
    args = parser.parse_args()
    if args.action == "save":
        files, root = save(args.run_dir, args.state), args.state
    else:
        files, root = restore(args.state, args.run_dir, overwrite=args.overwrite), args.run_dir
    size = sum((root / f).stat().st_size for f in files)
    print(f"{args.action}: {len(files)} files, {size / 2**20:.1f} MiB, into {root}")


if __name__ == "__main__":
    main()
