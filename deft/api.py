"""The Python API: DEFT as a preprocessing step inside a data pipeline.

>>> import deft
>>> out = deft.prune(dataset, budget=256, out="runs/curated")   # a datasets.Dataset or a pandas DataFrame
>>> out.coreset      # the input's type: the chosen rows as given (fields, a DataFrame's index) + stratum
>>> out.scores       # pandas DataFrame: sample_id (a string; the row number if the input has none) + one column per score
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from deft.config import DeftConfig, from_dict, load_config, to_dict
from deft.errors import DeftError


@dataclass
class PruneOutput:
    """What :func:`prune` returns: the coreset (input type), all scores, and the selection per budget."""

    coreset: Any
    coresets: dict[int, Any]
    scores: pd.DataFrame
    selections: dict[int, Any]
    out: Path


def prune(
    data: Any,
    budget: int | str | list[int | str] | tuple[int | str, ...],
    *,
    method: str | None = None,
    out: str | Path | None = None,
    config: str | Path | DeftConfig | None = None,
    model: str | None = None,
    seed: int | None = None,
    lambda_: float | None = None,
    strata: int | None = None,
    hard_prune: float | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> PruneOutput:
    """Select a coreset of ``budget`` samples (or several budgets) from ``data``.

    ``data`` is a Hugging Face ``datasets.Dataset`` or a pandas DataFrame of samples with columns
    ``instruction``, ``input``, ``output`` (and ``sample_id``, ``user``, ``history``, ``target_item`` for the
    surrogate-based scores), or a source name/path such as ``"ml-100k"``. The coreset comes back in the same
    type as ``data`` (a DataFrame for a source name), each chosen row exactly as given (same fields, same
    types) plus its ``stratum``. ``method`` defaults to the config's ``selection.method`` (``dealrec``).
    ``out`` is the run directory (a temporary one if None, removed again if the run fails); finished stages
    in it are reused. A DataFrame's coreset keeps the input's index; ``scores`` is keyed by ``sample_id``,
    the row position (as text) where the input has no such column.
    """
    if isinstance(data, os.PathLike):
        data = os.fspath(data)  # a source path, as the string would be
    cfg = _resolve_config(config, method=method, model=model, seed=seed, lambda_=lambda_, strata=strata,
                          hard_prune=hard_prune, budget=budget, source=data if isinstance(data, str) else None)
    with _library_bars(progress):
        samples = _as_frame(data)  # before the temporary directory: a refused input must leave nothing behind
        from deft.pipeline import run_prune

        if out is not None:
            out = Path(out)
            result = run_prune(cfg, out, overwrite=overwrite, progress=progress, samples=samples)
        else:
            out = Path(tempfile.mkdtemp(prefix="deft-prune-"))
            try:
                result = run_prune(cfg, out, overwrite=overwrite, progress=progress, samples=samples)
            except BaseException:  # a run refused or interrupted in a directory nobody can name again is litter
                shutil.rmtree(out, ignore_errors=True)
                raise
        # The pool keeps the input's row order, so a selection's indices are rows of the input itself.
        source = result.pool.samples if samples is None else data
        coresets = {b: _chosen_rows(source, selection) for b, selection in result.selections.items()}
    first = next(iter(coresets.values()))
    return PruneOutput(first, coresets, result.scores, result.selections, out)


@contextmanager
def _library_bars(progress: bool) -> Iterator[None]:
    """``progress=False`` silences the progress bars of transformers (loading weights) and datasets
    (selecting rows) too, and puts their switches back as they were."""
    if progress:
        yield
        return
    import datasets
    from transformers.utils import logging as hf_logging

    was = datasets.is_progress_bar_enabled(), hf_logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was[0]:
            datasets.enable_progress_bars()
        if was[1]:
            hf_logging.enable_progress_bar()


def _resolve_config(config, *, method, model, seed, lambda_, strata, hard_prune, budget, source) -> DeftConfig:
    if isinstance(config, DeftConfig):
        raw = to_dict(config)
    elif config is not None:
        raw = to_dict(load_config(config))
    else:
        raw = {}
    budgets = list(budget) if isinstance(budget, list | tuple) else [budget]
    overrides = {"selection.method": method, "selection.budgets": budgets, "selection.seed": seed,
                 "selection.lambda_": lambda_, "selection.strata": strata, "selection.hard_prune": hard_prune,
                 "model.name": model, "data.source": source}
    for dotted, value in overrides.items():
        if value is not None:
            section, key = dotted.split(".", 1)
            raw.setdefault(section, {})[key] = value
    return from_dict(raw)


def _as_frame(data: Any) -> pd.DataFrame | None:
    """The samples as a DataFrame with string sample ids (None for a source name)."""
    if isinstance(data, str):
        return None
    if isinstance(data, pd.DataFrame):
        return _with_ids(data.reset_index(drop=True))
    if _is_dataset(data):
        return _with_ids(data.to_pandas())
    raise DeftError(f"prune() takes a datasets.Dataset, a pandas DataFrame or a source name or path, got "
                    f"{type(data).__name__}")


def _is_dataset(data: Any) -> bool:
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dependency
        return False
    return isinstance(data, datasets.Dataset)


def _chosen_rows(data: Any, selection: Any) -> Any:
    """The selected rows of ``data`` in its own type, fields and feature types untouched, plus ``stratum``."""
    if _is_dataset(data):
        return data.select(selection.indices).add_column("stratum", selection.strata.tolist())
    return data.iloc[selection.indices].assign(stratum=selection.strata)  # the input's index: rows stay traceable


def _with_ids(frame: pd.DataFrame) -> pd.DataFrame:
    from deft.pipeline import with_input

    frame = with_input(frame)
    if "sample_id" not in frame.columns:
        return frame.assign(sample_id=[str(i) for i in range(len(frame))])
    return frame.assign(sample_id=frame["sample_id"].astype(str))  # a copy: the caller's frame is not touched
