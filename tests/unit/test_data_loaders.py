"""Loaders on the invented fixtures in data_samples/ (and the real ML-100K from the installed recbole)."""

from __future__ import annotations

import gzip
import importlib.metadata
import json
import logging
import shutil
from pathlib import Path

import pandas as pd
import pytest

from deft.config import DataConfig
from deft.data import detect_format, load_interactions, natural_key, readers
from deft.errors import DataFormatError, DeftError

SAMPLES = Path(__file__).resolve().parents[2] / "data_samples"
MOVIE_DIRS = ["tiny-recbole", "tiny-movielens", "tiny-csv", "tiny-parquet"]
TITLES = {
    "1": "The Clockwork Garden (1987)", "2": "Paper Lanterns Over Oslo (1992)",
    "3": "The Last Ferry to Marlow (1979)", "4": "Seven Quiet Rivers (2001)",
    "5": "Captain Velvet, Reluctant Hero (1995)", "6": "A Map of Small Hours (1998)",
    "7": "Midnight at the Lighthouse (1994)", "8": "The Glass Orchard (1983)", "9": "Running with Foxes (2004)",
    "10": "Crème Brûlée at Dawn (1990)", "11": "The Copper Astronomer (1976)",
    "12": "Midnight at the Lighthouse (1994)", "13": "Tin Soldiers Dance (1999)",
    "14": "Harbor of Echoes (1985)", "15": "The Unfinished Symphony of Dr. Lark",
}
# Each user's items in chronological order after deduplication (user 3's repeat of item 3 is dropped;
# user 5's items 4 and 5 share a timestamp and keep file order).
SEQUENCES = {
    "1": ["1", "2", "3", "4", "5", "6"], "2": ["2", "7", "1", "8", "9"], "3": ["3", "10", "11", "12", "13"],
    "4": ["14", "15"], "5": ["4", "5", "6", "7", "1"], "6": ["8", "9", "10", "11"], "7": ["12", "13", "14"],
    "10": ["15", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13"],
}


def load(source: str | Path, **options) -> object:
    return load_interactions(DataConfig(source=str(source), **options))


def sequences(events: pd.DataFrame) -> dict[str, list[str]]:
    return {u: g["item"].tolist() for u, g in events.groupby("user", sort=False)}


@pytest.mark.parametrize("name", MOVIE_DIRS)
def test_movie_formats_load_the_same_data(name: str) -> None:
    inter = load(SAMPLES / name)
    assert inter.titles == TITLES
    assert sequences(inter.events) == SEQUENCES
    assert list(inter.events.columns) == ["user", "item", "timestamp", "rating"]
    assert inter.events["timestamp"].dtype == "int64"
    assert inter.events["rating"].dtype == "float64"
    assert inter.n_users == 8 and inter.n_items == 15 and len(inter.events) == 44


def test_formats_agree_row_for_row() -> None:
    frames = [load(SAMPLES / name).events.astype({"user": str, "item": str}) for name in MOVIE_DIRS]
    for frame in frames[1:]:
        pd.testing.assert_frame_equal(frame, frames[0])


def test_users_in_natural_order_and_events_chronological() -> None:
    events = load(SAMPLES / "tiny-recbole").events
    assert list(pd.unique(events["user"])) == ["1", "2", "3", "4", "5", "6", "7", "10"]
    assert (events.groupby("user")["timestamp"].diff().dropna() >= 0).all()
    assert events.loc[events["user"] == "1", "timestamp"].tolist()[:2] == [881003600, 881010800]


def test_deduplicate_keeps_the_first_event_chronologically() -> None:
    events = load(SAMPLES / "tiny-recbole").events
    repeat = events[(events["user"] == "3") & (events["item"] == "3")]
    assert repeat["rating"].tolist() == [4.0]  # the earlier event (rating 4), not the later rating 5 listed first
    kept = load(SAMPLES / "tiny-recbole", deduplicate=False).events
    assert len(kept) == 45
    assert kept.loc[kept["user"] == "3", "item"].tolist() == ["3", "3", "10", "11", "12", "13"]


def test_min_rating_filters_before_everything_else() -> None:
    events = load(SAMPLES / "tiny-csv", min_rating=3).events
    assert len(events) == 41
    assert sequences(events)["3"] == ["3", "10", "12", "13"]  # item 11 (rating 1) is gone
    assert sequences(events)["1"] == ["1", "2", "3", "4", "6"]


def test_k_core_iterates_until_stable(tmp_path: Path) -> None:
    (tmp_path / "interactions.csv").write_text(
        "user,item,timestamp\nu1,i1,1\nu1,i2,2\nu2,i1,3\nu2,i2,4\nu3,i3,5\nu3,i1,6\nu4,i3,7\n")
    (tmp_path / "items.csv").write_text("item,title\ni1,One\ni2,Two\ni3,Three\n")
    # Round 1 drops u4 (1 event); then i3 has 1 event left; then u3 has 1 event left.
    inter = load(tmp_path, min_user_interactions=2, min_item_interactions=2)
    assert sequences(inter.events) == {"u1": ["i1", "i2"], "u2": ["i1", "i2"]}
    assert inter.titles == {"i1": "One", "i2": "Two"}


def test_ratings_optional_for_csv(tmp_path: Path) -> None:
    (tmp_path / "interactions.csv").write_text("user,item,timestamp\n1,a,5\n1,b,3\n")
    (tmp_path / "items.csv").write_text("item,title\na,Alpha\nb,Beta\n")
    events = load(tmp_path).events
    assert events["item"].tolist() == ["b", "a"]
    assert events["rating"].isna().all()


def test_configurable_columns_and_explicit_files(tmp_path: Path) -> None:
    (tmp_path / "log.csv").write_text("uid,sku,when,stars\n7,x,20,5\n7,y,10,4\n")
    (tmp_path / "catalog.csv").write_text("sku,name\nx,Ex\ny,Why\n")
    cfg = DataConfig(source=str(tmp_path / "log.csv"), items="catalog.csv", user_column="uid", item_column="sku",
                     time_column="when", rating_column="stars", title_column="name")
    inter = load_interactions(cfg)
    assert inter.events["item"].tolist() == ["y", "x"]
    assert inter.events["rating"].tolist() == [4.0, 5.0]
    assert inter.titles == {"y": "Why", "x": "Ex"}


def test_two_input_files_of_one_name_both_count_in_the_fingerprint(tmp_path: Path) -> None:
    (tmp_path / "events").mkdir()
    (tmp_path / "items").mkdir()
    (tmp_path / "events" / "part.csv").write_text("user,item,timestamp\n1,a,1\n1,b,2\n2,a,3\n")
    (tmp_path / "items" / "part.csv").write_text("item,title\na,Alpha\nb,Beta\n")
    cfg = DataConfig(source=str(tmp_path / "events" / "part.csv"), items=str(tmp_path / "items" / "part.csv"))
    before = load_interactions(cfg).fingerprint
    (tmp_path / "events" / "part.csv").write_text("user,item,timestamp\n1,a,1\n1,b,2\n")
    after = load_interactions(cfg).fingerprint
    (tmp_path / "items" / "part.csv").write_text("item,title\na,Alpha\nb,Bravo\n")
    assert len({before, after, load_interactions(cfg).fingerprint}) == 3


@pytest.mark.parametrize("name", ["mine.jsonl", "mine.csv", "mine.parquet"])
def test_instruction_samples_given_as_a_data_source_say_to_use_samples(tmp_path: Path, name: str) -> None:
    frame = pd.DataFrame({"instruction": ["Answer."] * 2, "input": ["q1", "q2"], "output": ["a1", "a2"]})
    path = tmp_path / name
    if name.endswith(".jsonl"):
        frame.to_json(path, orient="records", lines=True)
    elif name.endswith(".csv"):
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path)
    with pytest.raises(DataFormatError, match=r"holds instruction samples .* `--samples FILE` on the command line"):
        load_interactions(DataConfig(source=str(path)))


def test_an_items_file_for_the_built_in_dataset_is_refused_not_ignored() -> None:
    with pytest.raises(DataFormatError, match=r"the built-in dataset 'ml-100k' brings its own items file"):
        load_interactions(DataConfig(source="ml-100k", items="my_items.csv"))


def test_a_json_array_of_samples_says_to_write_json_lines(tmp_path: Path) -> None:
    from deft.pipeline import load_samples_file

    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps([{"instruction": "Answer.", "input": "q", "output": "a"}], indent=2))
    with pytest.raises(DeftError, match=r"alpaca\.json line 1: holds a JSON array; samples files are JSON lines.*"
                                        r"jq -c '\.\[\]' alpaca\.json > alpaca\.jsonl"):
        load_samples_file(path)


def test_recbole_columns_named_in_the_config_are_those_columns() -> None:
    tiny = SAMPLES / "tiny-recbole"
    with pytest.raises(DataFormatError, match=r"missing column 'uid'.*found user_id"):
        load(tiny, user_column="uid")  # not silently user_id
    with pytest.raises(DataFormatError, match=r"missing column 'name_en'"):
        load(tiny, title_column="name_en")
    assert load(tiny, rating_column=None).events["rating"].isna().all()  # null: ratings not read
    assert load(tiny).events["rating"].notna().all()


def test_recbole_title_gets_year_once() -> None:
    titles = load(SAMPLES / "tiny-recbole").titles
    assert titles["1"] == "The Clockwork Garden (1987)"
    assert titles["14"] == "Harbor of Echoes (1985)"  # already ends with its year
    assert titles["15"] == "The Unfinished Symphony of Dr. Lark"  # no release year


def test_movielens_item_file_is_latin1() -> None:
    raw = (SAMPLES / "tiny-movielens" / "u.item").read_bytes()
    assert "Crème".encode("latin-1") in raw
    assert load(SAMPLES / "tiny-movielens").titles["10"] == "Crème Brûlée at Dawn (1990)"


@pytest.mark.parametrize("probe", [readers.UTF8_PROBE, 1])  # 1: every multi-byte character spans two reads
def test_movielens_item_file_may_be_utf8(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, probe: int) -> None:
    monkeypatch.setattr(readers, "UTF8_PROBE", probe)
    shutil.copytree(SAMPLES / "tiny-movielens", tmp_path / "ml")
    item = tmp_path / "ml" / "u.item"
    item.write_bytes(item.read_bytes().decode("latin-1").encode("utf-8"))
    assert load(tmp_path / "ml").titles == TITLES  # not "CrÃ¨me BrÃ»lÃ©e"


@pytest.mark.parametrize("name", ["tiny-csv", "tiny-parquet"])
def test_blank_ratings_are_nan_without_min_rating(tmp_path: Path, name: str) -> None:
    shutil.copytree(SAMPLES / name, tmp_path / name)
    events_file = tmp_path / name / f"interactions.{name[5:]}"
    if name == "tiny-csv":
        lines = events_file.read_text().splitlines()
        for number in (2, 5):  # blank the rating (the last field) of two rows
            lines[number - 1] = lines[number - 1].rsplit(",", 1)[0] + ","
        events_file.write_text("\n".join(lines) + "\n")
    else:
        frame = pd.read_parquet(events_file)
        frame["rating"] = frame["rating"].astype("float64")
        frame.loc[[0, 3], "rating"] = None
        frame.to_parquet(events_file, index=False)
    events = load(tmp_path / name).events
    assert sequences(events) == SEQUENCES
    assert events["rating"].isna().sum() == 2 and events["rating"].dtype == "float64"


@pytest.mark.parametrize(("year", "file", "rating"), [("2018", "Tiny_Shop.json", "overall"),
                                                        ("2023", "Tiny_Shop.jsonl", "rating")])
def test_amazon_reviews_without_a_rating_load(tmp_path: Path, year: str, file: str, rating: str) -> None:
    folder = tmp_path / year
    shutil.copytree(SAMPLES / f"tiny-amazon-{year}", folder)
    records = [json.loads(line) for line in (folder / file).read_text().splitlines()]
    del records[1][rating]
    (folder / file).write_text("".join(json.dumps(r) + "\n" for r in records))
    events = load(folder).events
    assert len(events) == 13 and events["rating"].isna().sum() == 1
    for r in records:  # no record has a rating at all
        r.pop(rating, None)
    (folder / file).write_text("".join(json.dumps(r) + "\n" for r in records))
    assert load(folder).events["rating"].isna().all()


@pytest.mark.parametrize(("year", "reviews", "meta"), [
    ("2018", "reviews_Tiny_Shop_5.json", "meta_Tiny_Shop.json"),  # 2014 names
    ("2018", "reviews_Tiny_Shop.json", "meta_Tiny_Shop.json"),
    ("2018", "Tiny_Shop_5.json.gz", "meta_Tiny_Shop.json.gz"),  # 2018 names
    ("2023", "Tiny_Shop_5.jsonl", "meta_Tiny_Shop.jsonl"),
    ("2023", "Tiny_Shop_5-core.jsonl.gz", "meta_Tiny_Shop.jsonl"),
    ("2023", "reviews.jsonl", "meta_Toys.jsonl"),  # unrelated names, but the folder's only metadata file
])
def test_amazon_official_file_names_pair(tmp_path: Path, year: str, reviews: str, meta: str) -> None:
    source = SAMPLES / f"tiny-amazon-{year}"
    for src, dst in ((next(source.glob("Tiny_Shop.*")), reviews), (next(source.glob("meta_*")), meta)):
        data = src.read_bytes()
        (tmp_path / dst).write_bytes(gzip.compress(data) if dst.endswith(".gz") else data)
    for path in (tmp_path, tmp_path / reviews):  # a directory, or the review file itself
        inter = load(path)
        assert len(inter.events) == 13
        assert inter.titles["B0TOY00003"] == "Wooden Marble Run, 40 Pieces"


@pytest.mark.parametrize("name", ["tiny-amazon-2018", "tiny-amazon-2023"])
def test_amazon_formats(name: str) -> None:
    inter = load(SAMPLES / name)
    assert list(pd.unique(inter.events["user"])) == ["AQUILL7RIVER", "BFERN2STONE", "CMAPLE9WIND", "DOTTER4LAKE"]
    first = inter.events[inter.events["user"] == "AQUILL7RIVER"]
    # 2023 reviews of variant B0TOY00003X roll up to parent_asin B0TOY00003; ms timestamps become seconds.
    assert first["item"].tolist() == ["B0TOY00003", "B0TOY00001", "B0TOY00002", "B0TOY00005"]
    assert first["timestamp"].tolist()[0] == 1_500_086_400
    assert first["rating"].tolist() == [4.0, 5.0, 3.0, 5.0]
    assert inter.titles["B0TOY00003"] == "Wooden Marble Run, 40 Pieces"
    assert len(inter.events) == 13 and inter.n_items == 6


def test_amazon_2018_and_2023_agree() -> None:
    a, b = load(SAMPLES / "tiny-amazon-2018"), load(SAMPLES / "tiny-amazon-2023")
    pd.testing.assert_frame_equal(a.events, b.events)
    assert a.titles == b.titles


def test_amazon_single_file_source_finds_its_metadata() -> None:
    inter = load(SAMPLES / "tiny-amazon-2023" / "Tiny_Shop.jsonl")
    assert len(inter.events) == 13


@pytest.mark.parametrize(("path", "fmt"), [
    ("tiny-recbole", "recbole"), ("tiny-movielens", "movielens"), ("tiny-csv", "csv"),
    ("tiny-parquet", "parquet"), ("tiny-amazon-2018", "amazon"), ("tiny-amazon-2023", "amazon"),
    ("tiny-recbole/tiny.inter", "recbole"), ("tiny-csv/interactions.csv", "csv"),
    ("tiny-parquet/interactions.parquet", "parquet"), ("tiny-amazon-2018/Tiny_Shop.json", "amazon"),
    ("tiny-movielens/u.data", "movielens"),
])
def test_detect_format(path: str, fmt: str) -> None:
    assert detect_format(SAMPLES / path) == fmt


def test_fingerprint_depends_on_bytes_and_options(tmp_path: Path) -> None:
    base = load(SAMPLES / "tiny-recbole").fingerprint
    assert load(SAMPLES / "tiny-recbole").fingerprint == base
    assert load(SAMPLES / "tiny-recbole", min_rating=3).fingerprint != base
    copy = tmp_path / "copy"
    shutil.copytree(SAMPLES / "tiny-recbole", copy)
    assert load(copy).fingerprint == base  # the location does not matter, the bytes do
    with open(copy / "tiny.inter", "a") as fh:
        fh.write("1\t7\t3\t881900000\n")
    assert load(copy).fingerprint != base


def test_missing_titles_drop_logs_a_count(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "interactions.csv").write_text("user,item,timestamp\n1,a,1\n1,b,2\n2,b,3\n")
    (tmp_path / "items.csv").write_text("item,title\na,Alpha\nb,\n")
    with caplog.at_level(logging.WARNING, logger="deft.data.loaders"):
        inter = load(tmp_path, missing_titles="drop")
    assert inter.events["item"].tolist() == ["a"]
    assert inter.titles == {"a": "Alpha"}
    assert "dropped 2 interactions of 1 items without a title" in caplog.text


def test_natural_key_orders_numbers_numerically() -> None:
    assert sorted(["10", "2", "b", "1", "a", "02"], key=natural_key) == ["1", "02", "2", "10", "a", "b"]


def test_real_ml100k_from_installed_recbole() -> None:
    try:
        importlib.metadata.distribution("recbole")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("recbole is not installed (pip install --no-deps recbole==1.2.1): the real ML-100K ships in it")
    inter = load_interactions(DataConfig())
    assert inter.n_users == 943
    assert inter.n_items == 1682
    assert len(inter.events) == 100_000
    assert inter.titles["1"] == "Toy Story (1995)"
    assert inter.source == "ml-100k"


def test_csv_with_byte_order_mark(tmp_path: Path) -> None:
    (tmp_path / "interactions.csv").write_bytes(b"\xef\xbb\xbfuser,item,timestamp\n1,a,1\n")
    (tmp_path / "items.csv").write_text("item,title\na,Alpha\n")
    assert load(tmp_path).events["user"].tolist() == ["1"]
