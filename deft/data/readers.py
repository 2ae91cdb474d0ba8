"""Format readers: each turns source files into raw events and titles, with every error located.

A reader returns :class:`RawData` (events with string ids and float timestamps, titles per item) and does no
cleaning: filtering, deduplication and sorting happen once, in :mod:`deft.data.loaders`, for every format.
Bad input raises :class:`~deft.errors.DataFormatError` naming the file, the 1-based line (counting the header
line; Parquet files have no lines, so their errors name the 1-based row) and the column. Line numbers assume
one record per line, which holds for every format read here except CSV fields with quoted newlines.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import json
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from deft.config import DataConfig
from deft.errors import DataFormatError

log = logging.getLogger(__name__)

JSON_CHUNK = 100_000  # JSONL records parsed at a time; only the needed fields of each chunk are kept
AMAZON_2018 = {"user": "reviewerID", "item": "asin", "timestamp": "unixReviewTime", "rating": "overall"}
AMAZON_2023 = {"user": "user_id", "item": "parent_asin", "timestamp": "timestamp", "rating": "rating"}
UTF8_PROBE = 1 << 20  # bytes decoded at a time when checking whether a file is UTF-8
RATING_NEEDED = " (data.min_rating needs a rating on every interaction)"


@dataclass(frozen=True)
class RawData:
    """What a reader found: events (user, item: str; timestamp, rating: float64) and titles (item -> title)."""

    events: pd.DataFrame
    titles: pd.Series  # index: item id (str); values: title (str), NaN where the source has none
    events_file: Path
    items_file: Path
    title_field: str


@dataclass(frozen=True)
class Table:
    """A parsed file whose index locates each row: a file line, a Parquet row, or a JSONL record number."""

    frame: pd.DataFrame
    file: Path
    unit: str  # "line" | "row" | "record"

    def error(self, label: int, message: str, field: str | None = None) -> DataFormatError:
        if self.unit == "line":
            return DataFormatError(message, file=self.file, line=int(label), field=field)
        if self.unit == "record":
            return DataFormatError(message, file=self.file, line=_record_line(self.file, int(label)), field=field)
        return DataFormatError(f"row {int(label)}: {message}", file=self.file, field=field)

    def missing_columns(self, wanted: Sequence[str], optional: Sequence[str] = ()) -> None:
        """Raise naming the expected and the found columns if any wanted column is absent."""
        found = list(self.frame.columns)
        absent = [c for c in wanted if c not in found]
        if absent:
            expected = ", ".join(wanted) + (f" (optional: {', '.join(optional)})" if optional else "")
            names = "column " + ", ".join(repr(c) for c in absent)
            raise DataFormatError(f"missing {names}; expected {expected}; found {', '.join(map(str, found))}",
                                  file=self.file, line=1 if self.unit == "line" else None, field=absent[0])


# ----------------------------------------------------------------------------------------------- locating


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with _open_binary(path) as fh:
        yield from enumerate(fh, start=1)


def _utf8_error(path: Path, exc: UnicodeDecodeError) -> DataFormatError:
    """Find the first line that is not UTF-8 (pandas reports a byte offset in a buffer, not a line)."""
    for number, raw in _lines(path):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as bad:
            byte = raw[bad.start : bad.start + 1].hex()
            return DataFormatError(f"not valid UTF-8 (byte 0x{byte} at column {bad.start + 1}); save the file "
                                   "as UTF-8", file=path, line=number)
    return DataFormatError(f"not valid UTF-8: {exc.reason}; save the file as UTF-8", file=path)


def _record_line(path: Path, record: int) -> int | None:
    """The file line of the record-th (0-based) non-blank line: pandas numbers JSONL records, skipping blanks."""
    seen = -1
    for number, raw in _lines(path):
        if raw.strip():
            seen += 1
            if seen == record:
                return number
    return None


def _json_error(path: Path) -> DataFormatError:
    """Locate the first line of a JSONL file that is not a JSON object."""
    for number, raw in _lines(path):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except ValueError as exc:
            hint = " (Amazon 2014 metadata is Python literals, not JSON: convert it first)" if raw[:2] == b"{'" else ""
            return DataFormatError(f"not valid JSON: {exc}{hint}", file=path, line=number)
        if not isinstance(record, dict):
            return DataFormatError(f"expected a JSON object, got {type(record).__name__}", file=path, line=number)
    return DataFormatError("not valid JSON lines", file=path)


# ----------------------------------------------------------------------------------------------- parsing


def read_text_table(path: Path, *, sep: str, header: bool, encoding: str = "utf-8-sig",
                    usecols: Sequence[int] | Callable[[str], bool] | None = None, quoted: bool = False) -> Table:
    """Read a delimited text file as strings, indexed by 1-based file line; blank lines are dropped.

    UTF-8 files may start with a byte-order mark (spreadsheet exports do); it is not part of the first column name.
    """
    try:
        frame = pd.read_csv(path, sep=sep, header=0 if header else None, usecols=usecols,
                            dtype=str, keep_default_na=False, skip_blank_lines=False, encoding=encoding,
                            quoting=csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE)
    except UnicodeDecodeError as exc:
        raise _utf8_error(path, exc) from exc
    except pd.errors.EmptyDataError as exc:
        raise DataFormatError("the file is empty", file=path) from exc
    except pd.errors.ParserError as exc:
        raise _parser_error(path, exc) from exc
    frame.index = frame.index + (2 if header else 1)
    frame.columns = [str(c).strip() for c in frame.columns]
    blank = (frame == "").all(axis=1) if len(frame.columns) else np.zeros(len(frame), bool)
    return Table(frame[~blank], path, "line")


def _parser_error(path: Path, exc: pd.errors.ParserError) -> DataFormatError:
    """pandas says "Expected 4 fields in line 17, saw 5": keep the counts, move the line into the location."""
    text = str(exc).split("C error: ", 1)[-1].strip()
    found = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", text)
    if found:
        expected, line, saw = found.groups()
        return DataFormatError(f"expected {expected} fields, found {saw}", file=path, line=int(line))
    return DataFormatError(f"cannot parse the file: {text}", file=path)


def read_header(path: Path, *, sep: str) -> list[str]:
    """Column names of a CSV file, read without parsing its rows."""
    try:
        return [str(c).strip() for c in pd.read_csv(path, sep=sep, nrows=0, encoding="utf-8-sig").columns]
    except UnicodeDecodeError as exc:
        raise _utf8_error(path, exc) from exc
    except pd.errors.EmptyDataError as exc:
        raise DataFormatError("the file is empty", file=path) from exc


def read_jsonl(path: Path, fields: Sequence[str], optional: Sequence[str] = ()) -> Table:
    """Read the given fields of a JSON-lines file (gzip allowed), indexed by record number; a record without
    an ``optional`` field, or a file where no record has it, gets NaN there."""
    columns = [*fields, *(f for f in optional if f not in fields)]
    frames, found = [], {}
    try:
        with pd.read_json(path, lines=True, dtype=False, convert_dates=False, chunksize=JSON_CHUNK,
                          encoding="utf-8-sig") as reader:  # -sig: a leading byte-order mark is not JSON
            for chunk in reader:
                found.update(dict.fromkeys(chunk.columns))
                frames.append(chunk.reindex(columns=columns))
    except UnicodeDecodeError as exc:
        raise _utf8_error(path, exc) from exc
    except (ValueError, TypeError) as exc:  # TypeError: a line that is JSON but not an object, e.g. [1, 2]
        raise _json_error(path) from exc
    frame = pd.concat(frames) if frames else pd.DataFrame(columns=columns)
    table = Table(frame, path, "record")
    Table(pd.DataFrame(columns=list(found)), path, "record").missing_columns(list(fields), optional)
    return table


def parse_ids(table: Table, column: str, label: str | None = None) -> pd.Series:
    """A column of ids as stripped strings (integer-valued numbers without '.0'); a missing id is an error."""
    values = table.frame[column]
    if pd.api.types.is_float_dtype(values) and values.notna().all() and (values % 1 == 0).all():
        values = values.astype("int64")
    text = values.astype(str).str.strip()
    missing = values.isna().to_numpy() | (text == "").to_numpy()
    if missing.any():
        pos = int(np.argmax(missing))
        raise table.error(table.frame.index[pos], f"column '{label or column}' is missing", label or column)
    return text


def parse_numbers(table: Table, column: str, label: str | None = None, *, allow_missing: bool = False,
                  why: str = "", below: float | None = None) -> pd.Series:
    """A numeric column as float64; the first value that is not a finite number is an error naming it.

    With ``allow_missing`` a blank or absent value becomes NaN (text that is not a number is still an error);
    ``why`` is appended to the error for a missing value, to say what needs it. With ``below``, a value whose
    magnitude reaches it is an error too.
    """
    values = table.frame[column]
    if pd.api.types.is_datetime64_any_dtype(values):
        values = _unix_seconds(values)
    numbers = _fast_float(values)
    if numbers is None:
        numbers = pd.to_numeric(values, errors="coerce").astype("float64")
    bad = ~np.isfinite(numbers.to_numpy())
    if allow_missing and bad.any():
        bad &= ~_blank(values)
    if bad.any():
        pos = int(np.argmax(bad))
        value = values.iloc[pos]
        name = label or column
        what = f"is missing{why}" if _blank(values.iloc[pos : pos + 1])[0] else f"is not a number: {value!r}"
        raise table.error(table.frame.index[pos], f"column '{name}' {what}", name)
    if below is not None and (big := np.abs(numbers.to_numpy()) >= below).any():
        pos = int(np.argmax(big))
        name = label or column
        raise table.error(table.frame.index[pos], f"column '{name}' is out of range: {values.iloc[pos]!r} (its "
                                                  f"magnitude must be below {below:.3g})", name)
    return numbers


def _blank(values: pd.Series) -> np.ndarray:
    """Where a value is absent (None, NaN, NaT) or empty text."""
    blank = values.isna().to_numpy()
    if values.dtype == object or pd.api.types.is_string_dtype(values):
        blank = blank | (values.astype(str).str.strip() == "").to_numpy()
    return blank


def _fast_float(values: pd.Series) -> pd.Series | None:
    """Text to float64 through an Arrow cast (~50x faster than pd.to_numeric); None if any value fails."""
    if not (pd.api.types.is_string_dtype(values) or values.dtype == object):
        return None
    try:
        return values.astype("float64[pyarrow]").astype("float64")
    except (ValueError, TypeError, ImportError, pa.ArrowException):
        return None  # the slow path finds and names the bad value


def _unix_seconds(values: pd.Series) -> pd.Series:
    """Datetimes (Parquet timestamp columns) as Unix seconds; naive datetimes are taken as UTC."""
    if values.dt.tz is None:
        values = values.dt.tz_localize("UTC")
    return (values - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)


def parse_titles(table: Table, item_column: str, title_column: str, label: str = "item") -> pd.Series:
    """item -> title (stripped; empty titles become NaN); the first row of a repeated item wins, and a
    repeated item whose titles differ is counted in a warning.

    A title that is not text (a number, a list: Parquet and JSON keep types) is an error naming its row: its
    printed form would become the prompt's text, and a numeric column usually means the wrong ``title_column``.
    """
    items = parse_ids(table, item_column, label)
    raw = table.frame[title_column]
    bad = ~raw.map(lambda v: isinstance(v, str) or (pd.api.types.is_scalar(v) and pd.isna(v))).to_numpy()
    if bad.any():
        pos = int(np.argmax(bad))
        value = raw.iloc[pos].tolist() if hasattr(raw.iloc[pos], "tolist") else raw.iloc[pos]  # numpy -> Python
        raise table.error(table.frame.index[pos], f"column '{title_column}' is not text: {value!r} "
                          f"({type(value).__name__})", title_column)
    titles = raw.astype("string").str.strip()
    titles = titles.where(titles != "").astype(object)
    series = pd.Series(titles.to_numpy(), index=items.to_numpy(), name="title")
    repeated = series.index.duplicated(keep="first")
    if repeated.any():
        first = series[~repeated]
        differ = [i for i, t in series[repeated].items() if t != first[i] and not (pd.isna(t) and pd.isna(first[i]))]
        if differ:
            log.warning("%s: %d repeated %s id(s) have another title than their first row, which is kept: %s",
                        table.file, len(set(differ)), label, ", ".join(repr(i) for i in list(dict.fromkeys(differ))[:5]))
    return series[~repeated]


def make_events(table: Table, cols: dict[str, str | None], labels: dict[str, str] | None = None, *,
                require_ratings: bool = False) -> pd.DataFrame:
    """The four event columns from a table; ``cols`` maps user/item/timestamp/rating to source columns.

    A blank rating is NaN unless ``require_ratings`` (a ``min_rating`` filter would silently drop its event).
    """
    labels = labels or {}
    rating_col = cols.get("rating")
    rating = (parse_numbers(table, rating_col, labels.get("rating"), allow_missing=not require_ratings,
                            why=RATING_NEEDED) if rating_col
              else pd.Series(np.nan, index=table.frame.index))
    return pd.DataFrame({
        "user": parse_ids(table, cols["user"], labels.get("user")).to_numpy(),
        "item": parse_ids(table, cols["item"], labels.get("item")).to_numpy(),
        # timestamps become int64: a larger one would wrap to a negative time and silently reorder its user
        "timestamp": parse_numbers(table, cols["timestamp"], labels.get("timestamp"), below=2.0**63).to_numpy(),
        "rating": rating.to_numpy(dtype="float64"),
    })


def pick(columns: Sequence[str], candidates: Sequence[str | None]) -> str | None:
    """The first candidate column present, or None."""
    return next((c for c in candidates if c and c in columns), None)


# ----------------------------------------------------------------------------------------------- formats


# RecBole's own event column names, used when the config keeps the generic defaults (DataConfig's *_column)
RECBOLE_EVENT_COLUMNS = {"user": "user_id", "item": "item_id", "timestamp": "timestamp", "rating": "rating"}
GENERIC_COLUMNS = {key: getattr(DataConfig, f"{name}_column") for key, name in
                   (("user", "user"), ("item", "item"), ("timestamp", "time"), ("rating", "rating"),
                    ("title", "title"))}


def read_recbole(inter_path: Path, item_path: Path, cols: dict[str, str | None], *,
                 require_ratings: bool = False) -> RawData:
    """RecBole atomic files: tab-separated, header ``name:type``; the title gets " (year)" from release_year."""
    table = read_text_table(inter_path, sep="\t", header=True)
    table.frame.columns = [c.split(":", 1)[0] for c in table.frame.columns]
    names = list(table.frame.columns)
    found: dict[str, str | None] = {}
    for key, recbole in RECBOLE_EVENT_COLUMNS.items():
        # A column named in the config is that column; only the generic default falls back to RecBole's name.
        chosen = cols[key]
        found[key] = chosen if chosen != GENERIC_COLUMNS[key] else pick(names, [chosen, recbole]) or recbole
    required = [found["user"], found["item"], found["timestamp"]]
    if cols["rating"] == GENERIC_COLUMNS["rating"]:  # ratings are optional unless a column for them was named
        optional = [found["rating"]]
        found["rating"] = found["rating"] if found["rating"] in names else None
    else:
        optional = []
        required += [found["rating"]] if found["rating"] is not None else []
    table.missing_columns(required, optional)
    events = make_events(table, found, require_ratings=require_ratings)

    items = read_text_table(item_path, sep="\t", header=True)
    items.frame.columns = [c.split(":", 1)[0] for c in items.frame.columns]
    item_col = found["item"]
    title_col = cols["title"] if cols["title"] != GENERIC_COLUMNS["title"] else \
        pick(list(items.frame.columns), ["movie_title", "title", "name"]) or "movie_title"
    items.missing_columns([item_col, title_col], ["release_year"])
    if "release_year" in items.frame.columns:
        items.frame[title_col] = _with_year(items.frame[title_col], items.frame["release_year"])
    return RawData(events, parse_titles(items, item_col, title_col), inter_path, item_path, title_col)


def _with_year(titles: pd.Series, years: pd.Series) -> pd.Series:
    """Append " (YYYY)" when the year is four digits and the title does not already end with "(YYYY)"."""
    years = years.astype(str).str.strip()
    text = titles.astype(str).str.strip()
    add = years.str.fullmatch(r"\d{4}").fillna(False).astype(bool) & (text != "")
    add &= text.str[-6:] != "(" + years + ")"
    return text.where(~add, text + " (" + years + ")")


def read_movielens(data_path: Path, item_path: Path, *, require_ratings: bool = False) -> RawData:
    """MovieLens raw files: ``u.data`` (user, item, rating, timestamp; tabs) and ``u.item`` (pipes), which is
    UTF-8 when it decodes as such and Latin-1 (as ML-100K ships it) otherwise."""
    table = read_text_table(data_path, sep="\t", header=False)
    width = len(table.frame.columns)
    if width != 4:
        raise DataFormatError(f"expected 4 tab-separated columns (user, item, rating, timestamp), found {width}",
                              file=data_path, line=int(table.frame.index[0]) if len(table.frame) else None)
    table.frame.columns = ["user", "item", "rating", "timestamp"]
    events = make_events(table, {"user": "user", "item": "item", "timestamp": "timestamp", "rating": "rating"},
                         require_ratings=require_ratings)
    # ML-100K's u.item predates UTF-8 in MovieLens files and is Latin-1, where decoding cannot fail; an edited
    # or regenerated u.item is usually UTF-8, which Latin-1 would turn into mojibake ("CafÃ©"). Latin-1 text
    # with accents is almost never valid UTF-8, so strict UTF-8 decides.
    encoding = "utf-8-sig" if _is_utf8(item_path) else "latin-1"
    items = read_text_table(item_path, sep="|", header=False, encoding=encoding, usecols=[0, 1])
    items.frame.columns = ["item", "title"]
    return RawData(events, parse_titles(items, "item", "title"), data_path, item_path, "title")


def _is_utf8(path: Path) -> bool:
    """Whether the whole file decodes as strict UTF-8 (read in blocks; a character may span two blocks)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
    try:
        with _open_binary(path) as fh:
            for block in iter(lambda: fh.read(UTF8_PROBE), b""):
                decoder.decode(block)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def read_csv_source(inter_path: Path, item_path: Path, cols: dict[str, str | None], *,
                    require_ratings: bool = False) -> RawData:
    """CSV interactions with configurable column names, and an items CSV with item and title columns."""
    return _read_columns(inter_path, item_path, cols, _csv_table, require_ratings)


def read_parquet_source(inter_path: Path, item_path: Path, cols: dict[str, str | None], *,
                        require_ratings: bool = False) -> RawData:
    """Parquet interactions and items, the same columns as CSV; errors name the 1-based row."""
    return _read_columns(inter_path, item_path, cols, _parquet_table, require_ratings)


def _csv_table(path: Path, wanted: Sequence[str], optional: Sequence[str]) -> Table:
    header = read_header(path, sep=",")
    Table(pd.DataFrame(columns=header), path, "line").missing_columns(wanted, optional)
    keep = set(wanted) | set(optional)
    # Every column is parsed, the header line as a row: only then does pandas check each row's field count
    # (with usecols, or a header shorter than the first row, it drops or shifts the extra fields silently).
    table = read_text_table(path, sep=",", header=False, quoted=True)
    frame = table.frame
    frame.columns = [str(c).strip() for c in frame.iloc[0]] if len(frame) else header
    names = list(frame.columns)
    twice = next((c for c in names if c in keep and names.count(c) > 1), None)
    if twice is not None:  # which of the two holds the data is anyone's guess
        raise DataFormatError(f"column {twice!r} appears {names.count(twice)} times in the header", file=path,
                              line=1, field=twice)
    frame = frame.iloc[1:]
    return Table(frame[[c for c in frame.columns if c in keep]], path, "line")


def _parquet_table(path: Path, wanted: Sequence[str], optional: Sequence[str]) -> Table:
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
    except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
        raise DataFormatError(f"not a Parquet file: {exc}", file=path) from exc
    Table(pd.DataFrame(columns=names), path, "row").missing_columns(wanted, optional)
    frame = pd.read_parquet(path, columns=[c for c in names if c in set(wanted) | set(optional)])
    frame.index = np.arange(1, len(frame) + 1)
    return Table(frame, path, "row")


def _read_columns(inter_path: Path, item_path: Path, cols: dict[str, str | None], reader,
                  require_ratings: bool) -> RawData:
    wanted = [cols["user"], cols["item"], cols["timestamp"]]
    optional = [cols["rating"]] if cols.get("rating") else []
    table = reader(inter_path, wanted, optional)
    found = dict(cols, rating=cols["rating"] if cols.get("rating") in table.frame.columns else None)
    events = make_events(table, found, require_ratings=require_ratings)
    items = reader(item_path, [cols["item"], cols["title"]], [])
    return RawData(events, parse_titles(items, cols["item"], cols["title"]), inter_path, item_path, cols["title"])


def read_amazon(reviews_path: Path, meta_path: Path, *, require_ratings: bool = False) -> RawData:
    """Amazon review JSONL (2014/2018 or 2023 fields, detected per file) and its metadata JSONL.

    The rating (``overall``/``rating``) is optional per record, as in the CSV and Parquet formats.
    """
    fields = _amazon_fields(reviews_path)
    table = read_jsonl(reviews_path, [fields[k] for k in ("user", "item", "timestamp")], [fields["rating"]])
    events = make_events(table, fields, require_ratings=require_ratings)
    if fields is AMAZON_2023:
        events["timestamp"] = events["timestamp"] / 1000.0  # 2023 timestamps are milliseconds
    meta = read_jsonl(meta_path, [fields["item"], "title"])
    return RawData(events, parse_titles(meta, fields["item"], "title"), reviews_path, meta_path, "title")


def _amazon_fields(path: Path) -> dict[str, str]:
    """2014/2018 reviews have ``reviewerID``; 2023 reviews have ``user_id`` and ``parent_asin``."""
    for number, raw in _lines(path):
        if not raw.strip():
            continue
        try:
            first = json.loads(raw)
        except ValueError:
            raise _json_error(path) from None
        if not isinstance(first, dict):
            raise _json_error(path)
        if "reviewerID" in first:
            return AMAZON_2018
        if "user_id" in first:
            return AMAZON_2023
        raise DataFormatError("not an Amazon review record: expected reviewerID, asin, unixReviewTime, overall "
                              "(2014/2018) or user_id, parent_asin, timestamp, rating (2023); found "
                              + ", ".join(first), file=path, line=number)
    raise DataFormatError("the file is empty", file=path)
