"""Load interactions and item titles from any supported source into one cleaned :class:`Interactions`.

Sources (``DataConfig.source``): the built-in ``ml-100k`` (read from the installed ``recbole`` package, never
imported), or a path to a RecBole atomic directory, a MovieLens raw directory, CSV or Parquet interactions
plus an items file, or Amazon review JSONL plus its metadata JSONL. ``format: auto`` decides by the files
present (see :func:`detect_format`).

Cleaning, the same for every format and in this order: ``min_rating``; chronological sort per user (stable,
so events with equal timestamps keep their file order); ``deduplicate`` (keep the first event of a repeated
(user, item) pair, chronologically); items without titles (``missing_titles``: error, or drop their events);
the k-core (``min_user_interactions``, ``min_item_interactions``), repeated until nothing changes. Each step
that leaves no interactions is an error naming that step. Timestamps become int64 Unix seconds (fractions are
dropped after sorting, so sub-second order survives in the row order).
"""

from __future__ import annotations

import csv
import gzip
import json
import logging
import re
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from deft.artifacts import file_sha256, fingerprint
from deft.config import DataConfig
from deft.data import readers
from deft.data.types import EVENT_COLUMNS, Interactions
from deft.errors import DataFormatError, MissingAssetError

log = logging.getLogger(__name__)

LOADER_VERSION = 1  # bump when cleaning semantics change, so fingerprints (and caches) change with them
BUILTIN = {
    "ml-100k": ("recbole", "recbole", "recbole/dataset_example/ml-100k/ml-100k.inter",
                "recbole/dataset_example/ml-100k/ml-100k.item"),
}
INSTALL_HINT = {"recbole": "pip install --no-deps recbole==1.2.1"}
JSON_SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz")
LOOKED_FOR = ("*.inter + *.item (recbole)", "u.data + u.item (movielens)", "interactions.csv + items.csv (csv)",
              "interactions.parquet + items.parquet (parquet)", "NAME.json[l][.gz] + meta_NAME.json[l][.gz] (amazon)")
# The official Amazon review files add to the category name that their metadata file has (meta_Books): a
# "reviews_" prefix (2014) and a k-core suffix ("_5", "_5-core"), e.g. reviews_Books_5.json, Books_5.json.gz.
AMAZON_REVIEWS_NAME = re.compile(r"(?:reviews_)?(?P<name>.+?)(?:_\d+(?:-?core)?)?")


def load_interactions(cfg: DataConfig) -> Interactions:
    """Read, clean and fingerprint the interactions and titles that ``cfg`` points to."""
    start = time.perf_counter()
    fmt, files = resolve_source(cfg)
    raw = _read(fmt, files, cfg)
    events, titles = clean(raw, cfg)
    fp = fingerprint({"files": _file_hashes(files), "options": _loading_options(fmt, cfg), "loader": LOADER_VERSION})
    log.info("loaded %s (%s): %d users, %d items, %d interactions in %.2f s", cfg.source, fmt,
             events["user"].nunique(), len(titles), len(events), time.perf_counter() - start)
    return Interactions(events, titles, cfg.source, fp)


def _file_hashes(files: dict[str, Path]) -> dict[str, str]:
    """Each input file's SHA-256 under its name; under role and name when two share a name (``a/part.csv`` and
    ``b/part.csv``), which would otherwise leave one file out. Names alone otherwise, so that fingerprints of
    existing runs stay what they were."""
    names = [p.name for p in files.values()]
    if len(set(names)) == len(names):
        return {p.name: file_sha256(p) for p in files.values()}
    return {f"{role}:{p.name}": file_sha256(p) for role, p in files.items()}


def _loading_options(fmt: str, cfg: DataConfig) -> dict[str, object]:
    keys = ("user_column", "item_column", "time_column", "rating_column", "title_column", "min_rating",
            "min_user_interactions", "min_item_interactions", "deduplicate", "missing_titles")
    return {"format": fmt, **{k: getattr(cfg, k) for k in keys}}


def _columns(cfg: DataConfig) -> dict[str, str | None]:
    return {"user": cfg.user_column, "item": cfg.item_column, "timestamp": cfg.time_column,
            "rating": cfg.rating_column, "title": cfg.title_column}


def _read(fmt: str, files: dict[str, Path], cfg: DataConfig) -> readers.RawData:
    # Ratings are optional data: only a min_rating filter makes a blank one an error (it would drop the event).
    need = cfg.min_rating is not None
    if fmt == "recbole":
        return readers.read_recbole(files["events"], files["items"], _columns(cfg), require_ratings=need)
    if fmt == "movielens":
        return readers.read_movielens(files["events"], files["items"], require_ratings=need)
    if fmt == "csv":
        return readers.read_csv_source(files["events"], files["items"], _columns(cfg), require_ratings=need)
    if fmt == "parquet":
        return readers.read_parquet_source(files["events"], files["items"], _columns(cfg), require_ratings=need)
    return readers.read_amazon(files["events"], files["items"], require_ratings=need)


# ----------------------------------------------------------------------------------------------- finding files


def resolve_source(cfg: DataConfig) -> tuple[str, dict[str, Path]]:
    """The format and the files (``events``, ``items``) of a source; every file is checked to exist."""
    if cfg.source in BUILTIN:
        # A built-in name always means the packaged data; write ./ml-100k for a local directory of that name.
        if cfg.items is not None:
            raise DataFormatError(f"the built-in dataset {cfg.source!r} brings its own items file, so data.items "
                                  f"({cfg.items!r}) would be ignored; for a local copy give its path as the source",
                                  field="data.items")
        return _builtin(cfg.source, cfg.format)
    path = Path(cfg.source).expanduser()
    if not path.exists():
        raise DataFormatError(f"data source not found: {cfg.source!r} is neither a file, a directory nor a "
                              f"built-in name ({', '.join(BUILTIN)})", field="data.source")
    fmt = detect_format(path) if cfg.format == "auto" else cfg.format
    if path.is_file() and {"instruction", "output"} <= _first_record_fields(path, fmt):
        raise DataFormatError("holds instruction samples (fields instruction, output), not interactions: give it "
                              "as samples, `--samples FILE` on the command line or a DataFrame / datasets.Dataset "
                              "of it in Python", file=path, field="data.source")
    files = _locate(fmt, path, cfg.items)
    for role, file in files.items():
        if not file.is_file():
            hint = "; set data.items to its path" if role == "items" else ""
            raise DataFormatError(f"file not found ({fmt} {role} file){hint}", file=file)
    return fmt, files


def _first_record_fields(path: Path, fmt: str) -> set[str]:
    """The field names of a file's first record (empty when they cannot be read cheaply): enough to tell a file
    of instruction samples, given where interactions were expected, from an interaction log."""
    if fmt not in ("parquet", "csv", "amazon"):  # RecBole and MovieLens files cannot hold such samples
        return set()
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return set(pq.read_schema(path).names)
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8-sig", errors="replace") as fh:
            first = next((line for line in fh if line.strip()), "")
        if fmt == "csv":
            return set(next(csv.reader([first]), []))
        record = json.loads(first)
        return set(record) if isinstance(record, dict) else set()
    except (OSError, ValueError, ImportError):
        return set()  # the reader proper will say what is wrong with the file


def _builtin(name: str, fmt: str) -> tuple[str, dict[str, Path]]:
    kind, package, inter, item = BUILTIN[name]
    if fmt not in ("auto", kind):
        raise DataFormatError(f"the built-in dataset {name!r} is in {kind} format, but data.format is {fmt!r}",
                              field="data.format")
    try:
        dist = metadata.distribution(package)
    except metadata.PackageNotFoundError as exc:
        raise MissingAssetError(f"the built-in dataset {name!r} ships in the {package!r} package, which is "
                                f"not installed; install it with: {INSTALL_HINT[package]}") from exc
    files = {"events": Path(str(dist.locate_file(inter))), "items": Path(str(dist.locate_file(item)))}
    for file in files.values():
        if not file.is_file():
            raise MissingAssetError(f"the {package!r} package has no {file.name}; reinstall it with: "
                                    f"{INSTALL_HINT[package]}", file=file)
    return kind, files


def _json_name(path: Path) -> str | None:
    """The dataset name of a JSON-lines file (``Books`` for ``Books.jsonl.gz``), or None."""
    name = path.name
    return next((name[: -len(s)] for s in JSON_SUFFIXES if name.endswith(s)), None)


def detect_format(path: Path) -> str:
    """Guess the format from a file's name or a directory's files; an unknown layout lists what was sought."""
    if path.is_file():
        if path.suffix == ".inter":
            return "recbole"
        if path.name == "u.data":
            return "movielens"
        if path.suffix in (".csv", ".parquet"):
            return path.suffix[1:]
        if _json_name(path) is not None:
            return "amazon"
        raise DataFormatError("cannot tell the format of this file from its name; set data.format "
                              "(recbole, movielens, csv, parquet or amazon)", file=path, field="data.format")
    names = sorted(p.name for p in path.iterdir())
    checks = (("recbole", any(n.endswith(".inter") for n in names)),
              ("movielens", "u.data" in names),
              ("csv", "interactions.csv" in names),
              ("parquet", "interactions.parquet" in names),
              ("amazon", any(n.startswith("meta_") and _json_name(Path(n)) for n in names)))
    for fmt, present in checks:
        if present:
            return fmt
    shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "") or "nothing"
    raise DataFormatError(f"no recognisable dataset: looked for {'; '.join(LOOKED_FOR)}; found {shown}",
                          file=path, field="data.source")


def _locate(fmt: str, path: Path, items: str | None) -> dict[str, Path]:
    """Events and items files of a source path in a known format (existence is checked by the caller)."""
    folder = path if path.is_dir() else path.parent
    if fmt == "recbole":
        events = _one(path, sorted(path.glob("*.inter")), "*.inter") if path.is_dir() else path
        default_items = events.with_suffix(".item")
    elif fmt == "movielens":
        events, default_items = folder / "u.data", folder / "u.item"
    elif fmt in ("csv", "parquet"):
        events = path / f"interactions.{fmt}" if path.is_dir() else path
        default_items = folder / f"items.{fmt}"
    else:
        if path.is_dir():
            reviews = [p for p in sorted(path.iterdir()) if _json_name(p) and not p.name.startswith("meta_")]
            events = _one(path, reviews, "NAME.json[l][.gz] (reviews)")
        else:
            events = path
        return {"events": events, "items": _items_path(items, folder) if items else _amazon_meta(events)}
    return {"events": events, "items": _items_path(items, folder) if items else default_items}


def _amazon_meta(reviews: Path) -> Path:
    """The metadata file of a review file: ``meta_`` + its name, as is or without the prefix and k-core suffix
    of the official names; else the folder's only ``meta_*`` file. Several candidates are an error listing them.
    """
    exact = reviews.parent / f"meta_{reviews.name}"
    if exact.is_file():
        return exact
    metas = sorted(p for p in reviews.parent.iterdir() if p.name.startswith("meta_") and _json_name(p))
    name = _json_name(reviews) or reviews.stem
    for key in dict.fromkeys([name, AMAZON_REVIEWS_NAME.fullmatch(name)["name"]]):  # the pattern fits any name
        named = [p for p in metas if _json_name(p) == f"meta_{key}"]
        if named:
            return named[0] if len(named) == 1 else _ambiguous_meta(reviews, named)
    if len(metas) == 1:
        return metas[0]
    return exact if not metas else _ambiguous_meta(reviews, metas)


def _ambiguous_meta(reviews: Path, candidates: list[Path]) -> Path:
    listed = ", ".join(p.name for p in candidates)
    raise DataFormatError(f"cannot tell which metadata file belongs to {reviews.name}: found {listed}; set "
                          f"data.items to one of them (e.g. items: {candidates[0].name})", file=reviews.parent,
                          field="data.items")


def _one(folder: Path, candidates: list[Path], pattern: str) -> Path:
    """The single candidate file, or the one named after the folder; otherwise an error listing them."""
    if len(candidates) == 1:
        return candidates[0]
    named = [p for p in candidates if p.name.split(".")[0] == folder.name]
    if len(named) == 1:
        return named[0]
    listed = ", ".join(p.name for p in candidates) or "none"
    raise DataFormatError(f"expected one {pattern} file, found {listed}; point data.source at the file",
                          file=folder, field="data.source")


def _items_path(items: str, folder: Path) -> Path:
    """``data.items`` as given, or relative to the source folder when that is where it exists."""
    given = Path(items).expanduser()
    return folder / given if not given.is_absolute() and not given.exists() and (folder / given).exists() else given


# ----------------------------------------------------------------------------------------------- cleaning


def natural_key(value: str) -> tuple[int, int, str]:
    """Sort key: numeric-looking ids numerically ("2" < "10"), before all other ids, which sort as text."""
    return (0, int(value), value) if value.isascii() and value.isdigit() else (1, 0, value)


def sort_events(events: pd.DataFrame) -> pd.DataFrame:
    """Users in natural order, each user's events by timestamp; ties keep their current (file) order."""
    codes, uniques = pd.factorize(events["user"])
    order = sorted(range(len(uniques)), key=lambda k: natural_key(str(uniques[k])))
    rank = np.empty(len(uniques), dtype=np.int64)
    rank[order] = np.arange(len(uniques))
    # Two stable argsorts (minor key first) give a stable sort by (user rank, timestamp).
    idx = np.argsort(events["timestamp"].to_numpy(), kind="stable")
    idx = idx[np.argsort(rank[codes[idx]], kind="stable")]
    return events.iloc[idx].reset_index(drop=True)


def clean(raw: readers.RawData, cfg: DataConfig) -> tuple[pd.DataFrame, dict[str, str]]:
    """Apply the cleaning steps of the module docstring; returns (events, titles of the items that remain)."""
    events = raw.events
    if events.empty:
        raise DataFormatError("no interactions in the file", file=raw.events_file)
    if cfg.min_rating is not None:
        if events["rating"].isna().all():
            raise DataFormatError(f"data.min_rating is {cfg.min_rating} but the source has no ratings",
                                  file=raw.events_file, field="data.min_rating")
        events = _keep(raw, events, (events["rating"] >= cfg.min_rating).to_numpy(), f"min_rating={cfg.min_rating}")
    events = sort_events(events)
    if cfg.deduplicate:
        before = len(events)
        events = events.drop_duplicates(["user", "item"], keep="first").reset_index(drop=True)
        if len(events) < before:
            log.info("deduplicate: dropped %d repeated (user, item) events", before - len(events))
    events = _check_titles(raw, events, cfg.missing_titles)
    events = _k_core(raw, events, cfg.min_user_interactions, cfg.min_item_interactions)
    events = events.astype({"timestamp": "float64"})
    events["timestamp"] = np.floor(events["timestamp"].to_numpy()).astype(np.int64)
    events = events[list(EVENT_COLUMNS)].reset_index(drop=True)
    items = pd.unique(events["item"])
    titles = dict(zip(items.tolist(), raw.titles.reindex(items).tolist(), strict=True))
    return events, titles


def _keep(raw: readers.RawData, events: pd.DataFrame, mask: np.ndarray, step: str) -> pd.DataFrame:
    """Rows where mask holds; an error naming ``step`` if none remain."""
    kept = events[mask]
    if kept.empty:
        raise DataFormatError(f"no interactions left after {step} ({len(events)} before)", file=raw.events_file)
    return kept.reset_index(drop=True)


def _check_titles(raw: readers.RawData, events: pd.DataFrame, policy: str) -> pd.DataFrame:
    """Every remaining item needs a title: raise listing the untitled ones, or drop their events."""
    titled = raw.titles.dropna().index
    has = events["item"].isin(titled).to_numpy()
    if has.all():
        return events
    missing = pd.unique(events.loc[~has, "item"]).tolist()
    if policy == "error":
        shown = ", ".join(repr(i) for i in missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise DataFormatError(f"{len(missing)} item(s) in the interactions have no title: {shown}; set "
                              f"data.missing_titles: drop to skip their {int((~has).sum())} interactions",
                              file=raw.items_file, field=raw.title_field)
    log.warning("missing_titles=drop: dropped %d interactions of %d items without a title", int((~has).sum()),
                len(missing))
    return _keep(raw, events, has, "dropping items without titles (missing_titles=drop)")


def _k_core(raw: readers.RawData, events: pd.DataFrame, min_user: int, min_item: int) -> pd.DataFrame:
    """Drop users and items with too few interactions, repeatedly, until every count meets its minimum."""
    if min_user <= 1 and min_item <= 1:
        return events
    rounds = 0
    while True:
        users = events["user"].map(events["user"].value_counts()).to_numpy()
        items = events["item"].map(events["item"].value_counts()).to_numpy()
        mask = (users >= min_user) & (items >= min_item)
        if mask.all():
            break
        rounds += 1
        step = f"the k-core filter (min_user_interactions={min_user}, min_item_interactions={min_item})"
        events = _keep(raw, events, mask, step)
    log.info("k-core: stable after %d round(s), %d interactions remain", rounds, len(events))
    return events

