"""Train / validation / test splits of cleaned interactions (algorithms.md §1).

``leave_one_out`` (default for MovieLens): per user, chronologically, the last item is the test target and
the one before it the validation target; the rest is the training sequence. Users with fewer than 3
interactions cannot give up two targets and keep a training sequence, so they are kept **train-only** (all
their items in ``train``, no valid/test entry); their number is logged.

``temporal`` (DEALRec): all interactions in one chronological order (ties: user order, then each user's
order), cut at ``floor(n * r_train)`` and ``floor(n * (r_train + r_valid))`` into train, valid and test
periods. A user's training sequence is their items in the train period; their valid/test targets are all
their items in that period. Users with no training item (first seen after the train period) have no history
to prompt with, so they get no valid/test entry; their number is logged.

Users appear in every dict in natural order (numeric ids numerically); ``valid`` and ``test`` hold only
users with targets.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd

from deft.config import DataConfig
from deft.data.loaders import sort_events
from deft.data.types import Interactions, Split
from deft.errors import ConfigError

log = logging.getLogger(__name__)

MIN_LOO_INTERACTIONS = 3  # one test target, one validation target, at least one training item


def split_interactions(inter: Interactions, cfg: DataConfig) -> Split:
    """Split ``inter`` as ``cfg.split`` says (leave_one_out | temporal)."""
    events = sort_events(inter.events)
    if cfg.split == "leave_one_out":
        return leave_one_out(events)
    if cfg.split == "temporal":
        return temporal(events, cfg.split_ratios)
    raise ConfigError([f"`data.split` must be one of ['leave_one_out', 'temporal'], got {cfg.split!r}"])


def user_sequences(events: pd.DataFrame, column: str = "item") -> dict[str, list]:
    """user -> that user's values of ``column`` in row order; ``events`` must hold each user's rows together."""
    users = events["user"].to_numpy()
    values = events[column].to_numpy()
    if len(users) == 0:
        return {}
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    ends = np.r_[starts[1:], len(users)]
    return {str(users[s]): values[s:e].tolist() for s, e in zip(starts, ends, strict=True)}


def leave_one_out(events: pd.DataFrame) -> Split:
    """Last item -> test, the one before -> valid, the rest -> train; short users are train-only."""
    train: dict[str, list[str]] = {}
    valid: dict[str, list[str]] = {}
    test: dict[str, list[str]] = {}
    short = 0
    for user, seq in user_sequences(events).items():
        if len(seq) < MIN_LOO_INTERACTIONS:
            train[user] = seq
            short += 1
            continue
        train[user], valid[user], test[user] = seq[:-2], [seq[-2]], [seq[-1]]
    if short:
        log.info("leave_one_out: %d user(s) with fewer than %d interactions are train-only (no valid/test target)",
                 short, MIN_LOO_INTERACTIONS)
    return Split(train, valid, test, "leave_one_out")


def split_points(n: int, ratios: list[float]) -> tuple[int, int]:
    """Cut positions of n chronologically ordered events for (train, valid, test) ratios; floors, float-safe."""
    first = math.floor(n * ratios[0] + 1e-9)
    second = math.floor(n * (ratios[0] + ratios[1]) + 1e-9)
    return first, second


def temporal(events: pd.DataFrame, ratios: list[float]) -> Split:
    """Global chronological cut into periods; each user's items per period (see the module docstring)."""
    order = np.argsort(events["timestamp"].to_numpy(), kind="stable")
    first, second = split_points(len(events), ratios)
    period = np.empty(len(events), dtype=np.int8)
    period[order[:first]], period[order[first:second]], period[order[second:]] = 0, 1, 2
    seqs = user_sequences(events.assign(period=period), "period")
    items = user_sequences(events)
    train: dict[str, list[str]] = {}
    valid: dict[str, list[str]] = {}
    test: dict[str, list[str]] = {}
    cold = 0
    for user, periods in seqs.items():
        split = {0: [], 1: [], 2: []}
        for item, p in zip(items[user], periods, strict=True):
            split[p].append(item)
        if split[0]:
            train[user] = split[0]
        elif split[1] or split[2]:
            cold += 1
            continue
        if split[1]:
            valid[user] = split[1]
        if split[2]:
            test[user] = split[2]
    if cold:
        log.info("temporal: %d user(s) first seen after the train period have no history and are left out", cold)
    return Split(train, valid, test, "temporal")
