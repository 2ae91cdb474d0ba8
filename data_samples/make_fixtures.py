"""Write the tiny invented datasets in data_samples/ (run from the repository root: python data_samples/make_fixtures.py).

Every user, item, title and timestamp here is made up for DEFT's tests and docs; none comes from MovieLens or
Amazon. One movie catalogue (8 users, 15 items) is written in four formats that must load to identical data:
RecBole atomic files, MovieLens raw files, CSV and Parquet. A small shop catalogue is written as Amazon 2018
and Amazon 2023 JSONL. The movie data has deliberate corner cases the tests rely on:

- user "10" sorts after "7" (natural order), user "4" has only two interactions;
- user "3" saw item 3 twice (the later, higher-rated duplicate is listed first in the files);
- user "5" saw items 4 and 5 at the same timestamp (file order decides: item 4 first);
- items 7 and 12 share the title "Midnight at the Lighthouse (1994)"; item 15 has no release year;
- item 10's title is not ASCII; item 5's title contains a comma.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
BASE_TIME = 881_000_000  # Unix seconds; event t happens BASE_TIME + t * 3600

# item id -> (title without year, release year or "")
MOVIES: dict[int, tuple[str, str]] = {
    1: ("The Clockwork Garden", "1987"),
    2: ("Paper Lanterns Over Oslo", "1992"),
    3: ("The Last Ferry to Marlow", "1979"),
    4: ("Seven Quiet Rivers", "2001"),
    5: ("Captain Velvet, Reluctant Hero", "1995"),
    6: ("A Map of Small Hours", "1998"),
    7: ("Midnight at the Lighthouse", "1994"),
    8: ("The Glass Orchard", "1983"),
    9: ("Running with Foxes", "2004"),
    10: ("Crème Brûlée at Dawn", "1990"),
    11: ("The Copper Astronomer", "1976"),
    12: ("Midnight at the Lighthouse", "1994"),
    13: ("Tin Soldiers Dance", "1999"),
    14: ("Harbor of Echoes (1985)", "1985"),  # RecBole title already ends with its year: not doubled
    15: ("The Unfinished Symphony of Dr. Lark", ""),
}

# user -> [(item, rating, t)]
EVENTS: dict[int, list[tuple[int, int, int]]] = {
    1: [(1, 5, 1), (2, 4, 3), (3, 3, 5), (4, 5, 8), (5, 2, 12), (6, 4, 44)],
    2: [(2, 5, 2), (7, 4, 4), (1, 3, 9), (8, 5, 15), (9, 4, 40)],
    3: [(3, 4, 6), (3, 5, 7), (10, 4, 10), (11, 1, 13), (12, 5, 16), (13, 3, 22)],
    4: [(14, 5, 11), (15, 4, 14)],
    5: [(4, 3, 17), (5, 4, 17), (6, 5, 18), (7, 2, 23), (1, 4, 42)],
    6: [(8, 4, 19), (9, 3, 25), (10, 5, 26), (11, 4, 38)],
    7: [(12, 4, 28), (13, 5, 29), (14, 3, 41)],
    10: [(15, 5, 20), (1, 4, 21), (2, 3, 24), (3, 4, 27), (4, 5, 30), (5, 4, 31), (6, 3, 32), (7, 5, 33),
         (8, 4, 34), (9, 5, 35), (10, 4, 36), (11, 3, 37), (12, 5, 39), (13, 4, 43)],
}

# A small shop for the Amazon formats: asin -> title, and reviews (user, asin, rating, t).
SHOP: dict[str, str] = {
    "B0TOY00001": "Lanterns of Kessler Bay - Strategy Board Game",
    "B0TOY00002": "Pocket Orrery Puzzle Cube",
    "B0TOY00003": "Wooden Marble Run, 40 Pieces",
    "B0TOY00004": "Moonlit Meadow Jigsaw (1000 pieces)",
    "B0TOY00005": "Clockwork Beetle Construction Kit",
    "B0TOY00006": "Tidepool Explorer Card Game",
}
REVIEWS: list[tuple[str, str, float, int]] = [
    ("AQUILL7RIVER", "B0TOY00001", 5.0, 3), ("AQUILL7RIVER", "B0TOY00003", 4.0, 1),
    ("AQUILL7RIVER", "B0TOY00002", 3.0, 7), ("AQUILL7RIVER", "B0TOY00005", 5.0, 12),
    ("BFERN2STONE", "B0TOY00002", 4.0, 2), ("BFERN2STONE", "B0TOY00004", 5.0, 5),
    ("BFERN2STONE", "B0TOY00006", 2.0, 9),
    ("CMAPLE9WIND", "B0TOY00001", 4.0, 4), ("CMAPLE9WIND", "B0TOY00006", 5.0, 6),
    ("CMAPLE9WIND", "B0TOY00003", 3.0, 10), ("CMAPLE9WIND", "B0TOY00004", 4.0, 11),
    ("DOTTER4LAKE", "B0TOY00005", 5.0, 8), ("DOTTER4LAKE", "B0TOY00002", 4.0, 13),
]
SHOP_TIME = 1_500_000_000
VARIANT = {"B0TOY00003": "B0TOY00003X"}  # 2023: a review of a variant asin rolls up to its parent_asin


def movie_rows() -> list[tuple[int, int, int, int]]:
    """(user, item, rating, timestamp) in file order: by item, then user, the later duplicate first."""
    rows = [(u, i, r, BASE_TIME + t * 3600) for u, evs in EVENTS.items() for i, r, t in evs]
    return sorted(rows, key=lambda row: (row[1], row[0], -row[3]))


def full_title(item: int) -> str:
    title, year = MOVIES[item]
    return title if not year or title.endswith(f"({year})") else f"{title} ({year})"


def write_recbole(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    lines += [f"{u}\t{i}\t{r}\t{t}" for u, i, r, t in movie_rows()]
    (root / "tiny.inter").write_text("\n".join(lines) + "\n", encoding="utf-8")
    lines = ["item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"]
    lines += [f"{i}\t{title}\t{year}\tDrama" for i, (title, year) in MOVIES.items()]
    (root / "tiny.item").write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_movielens(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    lines = [f"{u}\t{i}\t{r}\t{t}" for u, i, r, t in movie_rows()]
    (root / "u.data").write_text("\n".join(lines) + "\n", encoding="utf-8")
    genres = "|".join(["0"] * 18 + ["1"])
    lines = [f"{i}|{full_title(i)}|{'01-Jan-' + year if year else ''}||{genres}" for i, (_, year) in MOVIES.items()]
    # MovieLens raw item files are Latin-1 by design.
    (root / "u.item").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))


def movie_frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    inter = pd.DataFrame(movie_rows(), columns=["user", "item", "rating", "timestamp"])
    inter = inter[["user", "item", "timestamp", "rating"]].astype({"rating": "float64"})
    items = pd.DataFrame({"item": list(MOVIES), "title": [full_title(i) for i in MOVIES]})
    return inter, items


def write_csv_and_parquet(csv_root: Path, parquet_root: Path) -> None:
    inter, items = movie_frames()
    csv_root.mkdir(parents=True, exist_ok=True)
    parquet_root.mkdir(parents=True, exist_ok=True)
    inter.to_csv(csv_root / "interactions.csv", index=False, float_format="%g")
    items.to_csv(csv_root / "items.csv", index=False, quoting=csv.QUOTE_MINIMAL)
    inter.to_parquet(parquet_root / "interactions.parquet", index=False)
    items.to_parquet(parquet_root / "items.parquet", index=False)


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def write_amazon(root2018: Path, root2023: Path) -> None:
    root2018.mkdir(parents=True, exist_ok=True)
    root2023.mkdir(parents=True, exist_ok=True)
    reviews18 = [{"overall": r, "verified": True, "reviewerID": u, "asin": a, "reviewerName": u.title(),
                  "reviewText": "Fun for the whole family.", "summary": "Nice", "unixReviewTime": SHOP_TIME + t * 86400}
                 for u, a, r, t in REVIEWS]
    meta18 = [{"asin": a, "title": title, "brand": "Invented Toys", "category": ["Toys & Games"]}
              for a, title in SHOP.items()]
    write_jsonl(root2018 / "Tiny_Shop.json", reviews18)
    write_jsonl(root2018 / "meta_Tiny_Shop.json", meta18)
    reviews23 = [{"rating": r, "title": "Nice", "text": "Fun for the whole family.", "images": [],
                  "asin": VARIANT.get(a, a), "parent_asin": a, "user_id": u,
                  "timestamp": (SHOP_TIME + t * 86400) * 1000, "helpful_vote": 0, "verified_purchase": True}
                 for u, a, r, t in REVIEWS]
    meta23 = [{"main_category": "Toys & Games", "title": title, "average_rating": 4.5, "parent_asin": a}
              for a, title in SHOP.items()]
    write_jsonl(root2023 / "Tiny_Shop.jsonl", reviews23)
    write_jsonl(root2023 / "meta_Tiny_Shop.jsonl", meta23)


def main() -> None:
    write_recbole(HERE / "tiny-recbole")
    write_movielens(HERE / "tiny-movielens")
    write_csv_and_parquet(HERE / "tiny-csv", HERE / "tiny-parquet")
    write_amazon(HERE / "tiny-amazon-2018", HERE / "tiny-amazon-2023")


if __name__ == "__main__":
    main()
