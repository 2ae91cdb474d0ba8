"""A summary of a dataset, its split and its sample pool, as a dict (for manifests) and as text (for people)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from deft.data.loaders import natural_key
from deft.data.prompts import render_prompt
from deft.data.types import Interactions, Split

EXAMPLES = 2  # rendered samples shown by format_description
DUPLICATE_EXAMPLES = 3  # duplicate titles listed by name


def describe(inter: Interactions, split: Split | None = None, samples: pd.DataFrame | None = None) -> dict[str, Any]:
    """Counts and distributions of the data, and (when given) of its split and sample pool."""
    events = inter.events
    users, items = inter.n_users, inter.n_items
    out: dict[str, Any] = {
        "source": inter.source,
        "fingerprint": inter.fingerprint,
        "users": users,
        "items": items,
        "interactions": len(events),
        "density": len(events) / (users * items) if users and items else 0.0,
        "interactions_per_user": _stats(events.groupby("user").size()),
        "duplicate_titles": duplicate_titles(inter.titles),
    }
    if split is not None:
        out["split"] = _split_stats(split)
    if samples is not None:
        out["samples"] = _sample_stats(samples)
    return out


def duplicate_titles(titles: Mapping[str, str]) -> dict[str, Any]:
    """Titles shared by several items: how many, how many items share them, and a few examples."""
    series = pd.Series(titles, dtype=object)
    groups = series.groupby(series.to_numpy()).groups
    shared = sorted((t, sorted(map(str, ids), key=natural_key)) for t, ids in groups.items() if len(ids) > 1)
    return {"count": len(shared), "items": sum(len(ids) for _, ids in shared),
            "examples": [{"title": t, "items": ids} for t, ids in shared[:DUPLICATE_EXAMPLES]]}


def _stats(values: pd.Series) -> dict[str, float]:
    if values.empty:
        return {"min": 0, "median": 0.0, "mean": 0.0, "max": 0}
    return {"min": int(values.min()), "median": float(values.median()), "mean": round(float(values.mean()), 2),
            "max": int(values.max())}


def _split_stats(split: Split) -> dict[str, Any]:
    return {
        "kind": split.kind,
        "train_users": len(split.train),
        "train_interactions": sum(map(len, split.train.values())),
        "valid_users": len(split.valid),
        "valid_targets": sum(map(len, split.valid.values())),
        "test_users": len(split.test),
        "test_targets": sum(map(len, split.test.values())),
        "train_only_users": sum(1 for u in split.train if u not in split.valid and u not in split.test),
    }


def _sample_stats(samples: pd.DataFrame) -> dict[str, Any]:
    examples = [{"sample_id": str(r.sample_id), "prompt": render_prompt(r.instruction, r.input), "output": r.output}
                for r in samples.head(EXAMPLES).itertuples(index=False)]
    return {"count": len(samples), "users": int(samples["user"].nunique()),
            "history_length": _stats(samples["history"].map(len)), "examples": examples}


def format_description(d: dict[str, Any]) -> str:
    """The text ``deft data describe`` prints: counts, split, pool and two rendered samples."""
    dup = d["duplicate_titles"]
    per_user = d["interactions_per_user"]
    lines = [
        f"Data: {d['source']}  (fingerprint {d['fingerprint']})",
        f"  users {d['users']:,} | items {d['items']:,} | interactions {d['interactions']:,} | "
        f"density {d['density']:.2%}",
        f"  interactions per user: {_fmt_stats(per_user)}",
        f"  duplicate titles: {dup['count']:,} titles shared by {dup['items']:,} items"
        + (" (e.g. " + "; ".join(f"{e['title']!r}: {', '.join(e['items'])}" for e in dup["examples"]) + ")"
           if dup["examples"] else ""),
    ]
    if "split" in d:
        s = d["split"]
        lines += [f"Split: {s['kind']}",
                  f"  train: {s['train_interactions']:,} interactions of {s['train_users']:,} users "
                  f"({s['train_only_users']:,} train-only)",
                  f"  valid: {s['valid_targets']:,} targets of {s['valid_users']:,} users",
                  f"  test:  {s['test_targets']:,} targets of {s['test_users']:,} users"]
    if "samples" in d:
        p = d["samples"]
        lines += [f"Samples: {p['count']:,} from {p['users']:,} users",
                  f"  history length: {_fmt_stats(p['history_length'])}"]
        for e in p["examples"]:
            lines += ["", f"--- sample {e['sample_id']} ---", e["prompt"] + e["output"]]
    return "\n".join(lines) + "\n"


def _fmt_stats(s: dict[str, float]) -> str:
    return f"min {s['min']}, median {s['median']:g}, mean {s['mean']:g}, max {s['max']}"
