"""Loaders on the invented fixtures in data_samples/ (and the real ML-100K from the installed recbole)."""

from __future__ import annotations

import importlib.metadata
import logging
import shutil
from pathlib import Path

import pandas as pd
import pytest

from deft.config import DataConfig
from deft.data import detect_format, load_interactions, natural_key

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


def test_recbole_title_gets_year_once() -> None:
    titles = load(SAMPLES / "tiny-recbole").titles
    assert titles["1"] == "The Clockwork Garden (1987)"
    assert titles["14"] == "Harbor of Echoes (1985)"  # already ends with its year
    assert titles["15"] == "The Unfinished Symphony of Dr. Lark"  # no release year


def test_movielens_item_file_is_latin1() -> None:
    raw = (SAMPLES / "tiny-movielens" / "u.item").read_bytes()
    assert "Crème".encode("latin-1") in raw
    assert load(SAMPLES / "tiny-movielens").titles["10"] == "Crème Brûlée at Dawn (1990)"


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
