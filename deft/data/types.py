"""The in-memory representation every loader returns, and the split of it."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

EVENT_COLUMNS = ("user", "item", "timestamp", "rating")
SAMPLE_COLUMNS = ("sample_id", "user", "history", "target_item", "instruction", "input", "output")


@dataclass(frozen=True)
class Interactions:
    """Cleaned interactions plus item titles.

    ``events`` has columns user (str), item (str), timestamp (int64), rating (float64, NaN when the source has
    none), sorted chronologically per user (stable: ties keep file order). ``titles`` maps every item that
    occurs in ``events`` to its display title. ``fingerprint`` is the SHA-256 of the source files' bytes and
    the loading options, so caches can tell two datasets apart.
    """

    events: pd.DataFrame
    titles: dict[str, str]
    source: str
    fingerprint: str

    @property
    def n_users(self) -> int:
        return int(self.events["user"].nunique())

    @property
    def n_items(self) -> int:
        return len(self.titles)


@dataclass(frozen=True)
class Split:
    """Per-user chronological item lists: training sequence, validation targets, test targets."""

    train: dict[str, list[str]]
    valid: dict[str, list[str]]
    test: dict[str, list[str]]
    kind: str
