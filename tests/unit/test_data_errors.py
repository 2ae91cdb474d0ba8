"""Every bad input is a DataFormatError / MissingAssetError naming the file, the line and the field."""

from __future__ import annotations

import importlib.metadata
import json
import shutil
from pathlib import Path

import pytest

from deft.config import DataConfig
from deft.data import load_interactions
from deft.errors import DataFormatError, MissingAssetError

SAMPLES = Path(__file__).resolve().parents[2] / "data_samples"
INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"


def load(source: str | Path, **options) -> object:
    return load_interactions(DataConfig(source=str(source), **options))


def recbole_dir(tmp_path: Path, name: str = "ml-100k") -> Path:
    """A copy of the tiny RecBole fixture named like the real data set, to be broken by each test."""
    folder = tmp_path / name
    folder.mkdir()
    shutil.copy(SAMPLES / "tiny-recbole" / "tiny.inter", folder / f"{name}.inter")
    shutil.copy(SAMPLES / "tiny-recbole" / "tiny.item", folder / f"{name}.item")
    return folder


def replace_line(path: Path, number: int, text: str) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[number - 1] = text
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def drop_field(path: Path, number: int, field: str) -> None:
    """Remove one field from the JSON record on line ``number``."""
    record = json.loads(path.read_text(encoding="utf-8").splitlines()[number - 1])
    del record[field]
    replace_line(path, number, json.dumps(record))


def test_non_numeric_timestamp_names_file_line_column_and_value(tmp_path: Path) -> None:
    folder = recbole_dir(tmp_path)
    replace_line(folder / "ml-100k.inter", 17, "5\t4\t3\tabc")
    with pytest.raises(DataFormatError) as err:
        load(folder)
    assert str(err.value).endswith("ml-100k.inter line 17: column 'timestamp' is not a number: 'abc'")
    assert (err.value.line, err.value.field) == (17, "timestamp")
    assert err.value.file == str(folder / "ml-100k.inter")


def test_missing_value_names_its_line(tmp_path: Path) -> None:
    folder = recbole_dir(tmp_path)
    replace_line(folder / "ml-100k.inter", 5, "5\t\t3\t881000000")
    with pytest.raises(DataFormatError, match=r"ml-100k\.inter line 5: column 'item_id' is missing"):
        load(folder)


def test_extra_field_names_its_line(tmp_path: Path) -> None:
    folder = recbole_dir(tmp_path)
    replace_line(folder / "ml-100k.inter", 9, "5\t4\t3\t881000000\t7")
    with pytest.raises(DataFormatError, match=r"ml-100k\.inter line 9: expected 4 fields, found 5"):
        load(folder)


def test_missing_items_file(tmp_path: Path) -> None:
    folder = recbole_dir(tmp_path)
    (folder / "ml-100k.item").unlink()
    with pytest.raises(DataFormatError, match=r"ml-100k\.item: file not found \(recbole items file\)") as err:
        load(folder)
    assert err.value.file == str(folder / "ml-100k.item")


def test_missing_csv_items_file_says_how_to_point_at_it(tmp_path: Path) -> None:
    (tmp_path / "interactions.csv").write_text("user,item,timestamp\n1,a,1\n")
    with pytest.raises(DataFormatError, match=r"items\.csv: file not found .*set data\.items"):
        load(tmp_path)


def test_wrong_recbole_columns_name_expected_and_found(tmp_path: Path) -> None:
    folder = recbole_dir(tmp_path)
    replace_line(folder / "ml-100k.inter", 1, "user_id:token\tmovie:token\trating:float\ttimestamp:float")
    with pytest.raises(DataFormatError) as err:
        load(folder)
    message = str(err.value)
    assert "ml-100k.inter line 1: missing column 'item_id'" in message
    assert "expected user_id, item_id, timestamp (optional: rating)" in message
    assert "found user_id, movie, rating, timestamp" in message
    assert err.value.field == "item_id"


def test_wrong_csv_columns(tmp_path: Path) -> None:
    (tmp_path / "interactions.csv").write_text("user,item,time\n1,a,1\n")
    (tmp_path / "items.csv").write_text("item,title\na,Alpha\n")
    with pytest.raises(DataFormatError, match=r"interactions\.csv line 1: missing column 'timestamp'; expected "
                                              r"user, item, timestamp \(optional: rating\); found user, item, time"):
        load(tmp_path)


def test_wrong_items_columns(tmp_path: Path) -> None:
    (tmp_path / "interactions.csv").write_text("user,item,timestamp\n1,a,1\n")
    (tmp_path / "items.csv").write_text("item,name\na,Alpha\n")
    with pytest.raises(DataFormatError, match=r"items\.csv line 1: missing column 'title'.*found item, name"):
        load(tmp_path)


@pytest.mark.parametrize(("file", "text", "line"), [
    ("items.csv", "item,title\na,Alpha\nb,Beta, the Sequel\n", 3),  # an unquoted comma in a title
    ("items.csv", "item,title\nb,Beta, the Sequel\na,Alpha\n", 2),  # on the first row, too
    ("interactions.csv", "user,item,timestamp\n1,a,1\n1,b,2,99\n", 3),
])
def test_csv_row_with_an_extra_field_names_its_line(tmp_path: Path, file: str, text: str, line: int) -> None:
    (tmp_path / "interactions.csv").write_text("user,item,timestamp\n1,a,1\n1,b,2\n")
    (tmp_path / "items.csv").write_text("item,title\na,Alpha\nb,Beta\n")
    (tmp_path / file).write_text(text)
    with pytest.raises(DataFormatError, match=rf"{file} line {line}: expected \d fields, found \d"):
        load(tmp_path)


def test_csv_columns_are_found_by_name_in_any_order(tmp_path: Path) -> None:
    (tmp_path / "interactions.csv").write_text("timestamp,rating,extra,item,user\n1,5,x,a,1\n2,4,y,b,1\n")
    (tmp_path / "items.csv").write_text("title,item\n\"Beta, the Sequel\",b\nAlpha,a\n")
    data = load(tmp_path)
    assert data.titles == {"a": "Alpha", "b": "Beta, the Sequel"}
    assert data.events[["user", "item", "rating"]].values.tolist() == [["1", "a", 5.0], ["1", "b", 4.0]]


def test_csv_non_numeric_timestamp(tmp_path: Path) -> None:
    (tmp_path / "interactions.csv").write_text("user,item,timestamp\n1,a,1\n1,a,2\n\n2,a,2019-01-01\n")
    (tmp_path / "items.csv").write_text("item,title\na,Alpha\n")
    # line 5: the blank line 4 still counts
    with pytest.raises(DataFormatError, match=r"interactions\.csv line 5: column 'timestamp' is not a number: "
                                              r"'2019-01-01'"):
        load(tmp_path)


def test_parquet_errors_name_the_row(tmp_path: Path) -> None:
    import pandas as pd

    pd.DataFrame({"user": ["1", "1", "2"], "item": ["a", "b", "a"], "timestamp": ["1", "2", "x"]}).to_parquet(
        tmp_path / "interactions.parquet")
    pd.DataFrame({"item": ["a", "b"], "title": ["Alpha", "Beta"]}).to_parquet(tmp_path / "items.parquet")
    with pytest.raises(DataFormatError, match=r"interactions\.parquet: row 3: column 'timestamp' is not a number: 'x'"):
        load(tmp_path)


@pytest.mark.parametrize(("titles", "shown"), [([7, 8], r"7 \(int\)"), ([["A", "B"], None], r"\['A', 'B'\] \(list\)")])
def test_a_title_that_is_not_text_names_its_row(tmp_path: Path, titles: list, shown: str) -> None:
    import pandas as pd

    pd.DataFrame({"user": ["1", "1"], "item": ["a", "b"], "timestamp": [1, 2]}).to_parquet(
        tmp_path / "interactions.parquet")
    pd.DataFrame({"item": ["a", "b"], "title": titles}).to_parquet(tmp_path / "items.parquet")
    with pytest.raises(DataFormatError, match=rf"items\.parquet: row 1: column 'title' is not text: {shown}"):
        load(tmp_path)


def test_a_missing_title_in_a_string_column_follows_missing_titles(tmp_path: Path) -> None:
    import pandas as pd

    pd.DataFrame({"user": ["1", "1"], "item": ["a", "b"], "timestamp": [1, 2]}).to_parquet(
        tmp_path / "interactions.parquet")
    pd.DataFrame({"item": ["a", "b"], "title": pd.array(["Alpha", None], dtype="string")}).to_parquet(
        tmp_path / "items.parquet")
    assert load(tmp_path, missing_titles="drop").titles == {"a": "Alpha"}


def test_a_wanted_csv_column_twice_in_the_header(tmp_path: Path) -> None:
    (tmp_path / "interactions.csv").write_text("user,item,item,timestamp\n1,a,b,1\n")
    (tmp_path / "items.csv").write_text("item,title\na,Alpha\nb,Beta\n")
    with pytest.raises(DataFormatError, match=r"interactions\.csv line 1: column 'item' appears 2 times"):
        load(tmp_path)


def test_a_repeated_item_with_another_title_is_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "interactions.csv").write_text("user,item,timestamp\n1,a,1\n1,b,2\n")
    (tmp_path / "items.csv").write_text("item,title\na,Alpha\nb,Beta\na,Alpha\nb,Beta II\n")
    with caplog.at_level("WARNING", logger="deft.data.readers"):
        assert load(tmp_path).titles == {"a": "Alpha", "b": "Beta"}
    assert [r.getMessage().split(": ", 1)[1] for r in caplog.records] == [
        "1 repeated item id(s) have another title than their first row, which is kept: 'b'"]


@pytest.mark.parametrize(("options", "step"), [
    ({"min_rating": 6}, r"min_rating=6 \(45 before\)"),  # before deduplication
    ({"min_user_interactions": 20}, r"the k-core filter \(min_user_interactions=20, min_item_interactions=0\)"),
])
def test_empty_after_a_filter_names_the_filter(options: dict, step: str) -> None:
    with pytest.raises(DataFormatError, match=r"tiny\.inter: no interactions left after " + step):
        load(SAMPLES / "tiny-recbole", **options)


def test_empty_file(tmp_path: Path) -> None:
    folder = recbole_dir(tmp_path)
    (folder / "ml-100k.inter").write_text(INTER_HEADER)
    with pytest.raises(DataFormatError, match=r"ml-100k\.inter: no interactions in the file"):
        load(folder)


def test_min_rating_without_ratings(tmp_path: Path) -> None:
    (tmp_path / "interactions.csv").write_text("user,item,timestamp\n1,a,1\n")
    (tmp_path / "items.csv").write_text("item,title\na,Alpha\n")
    with pytest.raises(DataFormatError, match=r"min_rating is 3 but the source has no ratings"):
        load(tmp_path, min_rating=3)


def test_blank_rating_with_min_rating_names_file_line_and_field(tmp_path: Path) -> None:
    (tmp_path / "interactions.csv").write_text("user,item,timestamp,rating\n1,a,1,5\n1,b,2,\n")
    (tmp_path / "items.csv").write_text("item,title\na,Alpha\nb,Beta\n")
    assert load(tmp_path).events["rating"].isna().sum() == 1  # optional without a filter that needs it
    with pytest.raises(DataFormatError, match=r"interactions\.csv line 3: column 'rating' is missing \(data\.min_rating "
                                              r"needs a rating on every interaction\)") as err:
        load(tmp_path, min_rating=3)
    assert (err.value.line, err.value.field) == (3, "rating")


def test_amazon_record_without_rating_and_min_rating_names_its_line(tmp_path: Path) -> None:
    folder = amazon_copy(tmp_path, "2018")
    drop_field(folder / "Tiny_Shop.json", 4, "overall")
    with pytest.raises(DataFormatError, match=r"Tiny_Shop\.json line 4: column 'overall' is missing") as err:
        load(folder, min_rating=1)
    assert err.value.field == "overall"


def test_a_blank_rating_that_is_not_a_number_is_still_an_error(tmp_path: Path) -> None:
    (tmp_path / "interactions.csv").write_text("user,item,timestamp,rating\n1,a,1,5\n1,b,2,good\n")
    (tmp_path / "items.csv").write_text("item,title\na,Alpha\nb,Beta\n")
    with pytest.raises(DataFormatError, match=r"interactions\.csv line 3: column 'rating' is not a number: 'good'"):
        load(tmp_path)


def test_ambiguous_amazon_metadata_lists_candidates(tmp_path: Path) -> None:
    source = SAMPLES / "tiny-amazon-2023"
    shutil.copy(source / "Tiny_Shop.jsonl", tmp_path / "Books_5.jsonl")
    for name in ("meta_Toys.jsonl", "meta_Games.jsonl"):  # neither is named after the reviews
        shutil.copy(source / "meta_Tiny_Shop.jsonl", tmp_path / name)
    with pytest.raises(DataFormatError) as err:
        load(tmp_path)
    assert str(err.value).endswith(": field 'data.items': cannot tell which metadata file belongs to Books_5.jsonl: "
                                   "found meta_Games.jsonl, meta_Toys.jsonl; set data.items to one of them "
                                   "(e.g. items: meta_Games.jsonl)")
    assert (err.value.file, err.value.field) == (str(tmp_path), "data.items")
    assert len(load(tmp_path, items="meta_Toys.jsonl").events) == 13


def test_items_without_titles_are_listed(tmp_path: Path) -> None:
    folder = recbole_dir(tmp_path)
    lines = (folder / "ml-100k.item").read_text(encoding="utf-8").splitlines()
    (folder / "ml-100k.item").write_text("\n".join(lines[:-2]) + "\n", encoding="utf-8")  # drop items 14, 15
    with pytest.raises(DataFormatError) as err:
        load(folder)
    assert str(err.value).endswith("ml-100k.item: field 'movie_title': 2 item(s) in the interactions have no title: "
                                   "'14', '15'; set data.missing_titles: drop to skip their 4 interactions")
    assert err.value.field == "movie_title"
    dropped = load(folder, missing_titles="drop")
    assert set(dropped.events["item"]) == {str(i) for i in range(1, 14)}


def test_non_utf8_bytes_name_the_line(tmp_path: Path) -> None:
    (tmp_path / "interactions.csv").write_text("user,item,timestamp\n1,a,1\n")
    (tmp_path / "items.csv").write_bytes(b"item,title\nb,Beta\nc,Gamma\na,Caf\xe9 Noir\n")
    with pytest.raises(DataFormatError, match=r"items\.csv line 4: not valid UTF-8 \(byte 0xe9 at column 6\)") as err:
        load(tmp_path)
    assert err.value.line == 4


def test_non_utf8_recbole(tmp_path: Path) -> None:
    folder = recbole_dir(tmp_path)
    data = (folder / "ml-100k.item").read_bytes().replace("Crème".encode(), "Crème".encode("latin-1"))
    (folder / "ml-100k.item").write_bytes(data)
    with pytest.raises(DataFormatError, match=r"ml-100k\.item line 11: not valid UTF-8"):
        load(folder)


def amazon_copy(tmp_path: Path, year: str) -> Path:
    folder = tmp_path / f"amazon-{year}"
    shutil.copytree(SAMPLES / f"tiny-amazon-{year}", folder)
    return folder


def test_bad_json_line(tmp_path: Path) -> None:
    folder = amazon_copy(tmp_path, "2018")
    replace_line(folder / "Tiny_Shop.json", 3, '{"overall": 3.0, "reviewerID": "X", ')
    with pytest.raises(DataFormatError, match=r"Tiny_Shop\.json line 3: not valid JSON: ") as err:
        load(folder)
    assert err.value.line == 3


def test_json_line_that_is_not_an_object(tmp_path: Path) -> None:
    folder = amazon_copy(tmp_path, "2018")
    replace_line(folder / "Tiny_Shop.json", 2, "[1, 2]")
    with pytest.raises(DataFormatError, match=r"Tiny_Shop\.json line 2: expected a JSON object, got list"):
        load(folder)


def test_json_record_missing_a_field_names_its_line(tmp_path: Path) -> None:
    folder = amazon_copy(tmp_path, "2023")
    path = folder / "Tiny_Shop.jsonl"
    drop_field(path, 4, "parent_asin")
    text = path.read_text().replace("\n", "\n\n", 1)  # a blank line 2 shifts the broken record to line 5
    path.write_text(text)
    with pytest.raises(DataFormatError, match=r"Tiny_Shop\.jsonl line 5: column 'parent_asin' is missing"):
        load(folder)


def test_json_without_amazon_fields(tmp_path: Path) -> None:
    folder = amazon_copy(tmp_path, "2018")
    replace_line(folder / "Tiny_Shop.json", 1, '{"who": "x", "what": "y"}')
    with pytest.raises(DataFormatError, match=r"Tiny_Shop\.json line 1: not an Amazon review record: .*found who, what"):
        load(folder)


def test_unrecognised_directory_lists_what_was_looked_for(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataFormatError) as err:
        load(tmp_path)
    message = str(err.value)
    assert "no recognisable dataset: looked for *.inter + *.item (recbole); u.data + u.item (movielens)" in message
    assert "interactions.csv + items.csv (csv)" in message and "meta_NAME.json[l][.gz] (amazon)" in message
    assert message.endswith("found notes.txt")


def test_unknown_source() -> None:
    with pytest.raises(DataFormatError, match=r"data source not found: 'no/such/dir'"):
        load("no/such/dir")


def test_missing_recbole_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(MissingAssetError, match=r"pip install --no-deps recbole==1\.2\.1"):
        load_interactions(DataConfig(source="ml-100k"))


def test_timestamp_beyond_int64_is_an_error_not_a_wrapped_time(tmp_path: Path) -> None:
    # cast to int64 as it was, 1e20 became -9.2e18: the user's newest item would have sorted first
    (tmp_path / "interactions.csv").write_text("user,item,timestamp\n1,a,5\n1,b,1e20\n")
    (tmp_path / "items.csv").write_text("item,title\na,Alpha\nb,Beta\n")
    with pytest.raises(DataFormatError, match=r"interactions\.csv line 3: column 'timestamp' is out of range: "
                                              r"'1e20'"):
        load(tmp_path)


@pytest.mark.parametrize("year", ["2018", "2023"])
def test_json_lines_with_a_byte_order_mark_load_as_without(tmp_path: Path, year: str) -> None:
    folder = amazon_copy(tmp_path, year)
    plain = load(folder)
    for path in folder.iterdir():
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    marked = load(folder)
    assert marked.titles == plain.titles and marked.events.equals(plain.events)
