"""Instruction samples from a split (algorithms.md §1): the pool, validation samples and evaluation prompts.

A sample is (user, history, target) rendered as instruction / input (history titles) / output (target title).
``sample_id`` is ``"{user}:{position}"``, position being the target's 0-based index in the user's training
sequence (for :func:`valid_samples`, in the sequence train + valid, i.e. ``len(train)``).

Construction (``SamplesConfig.construction``):

* ``sliding_window`` (BIGRec): a user's training sequence s gives one sample per position p with
  ``p >= min_history`` and ``(p - min_history) % stride == 0``, i.e. p = min_history, min_history + stride, ...;
  history = s[max(0, p - max_history) : p], target = s[p]. A user with n training items gives
  ``ceil((n - min_history) / stride)`` samples (none if n <= min_history).
* ``last_per_user`` (DEALRec): one sample per user with p = n - 1 (if p >= min_history); history = all earlier
  training items (max_history does not apply: the token budget trims it).

Token budget (only when a tokenizer is given and ``PromptConfig.max_tokens`` is set): titles longer than
``max_title_tokens`` tokens are cut to that many tokens (also the output), then the oldest history items are
dropped until tokens(prompt) + tokens(output) + 1 (EOS) <= max_tokens, counted exactly as training encodes the
pair. The ``history`` column lists only the items kept, so the surrogate scores the pair the LLM sees. A sample left
with fewer than ``min_history`` items is kept and counted in a warning.

Rows are ordered by user (natural order: numeric ids numerically) and then by position.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import pandas as pd

from deft.config import PromptConfig, SamplesConfig
from deft.data.loaders import natural_key
from deft.data.prompts import Template, fit_histories, template_for, token_lengths, truncate_titles
from deft.data.types import SAMPLE_COLUMNS, Split
from deft.errors import DataFormatError

log = logging.getLogger(__name__)

EVAL_COLUMNS = ("user", "history", "targets", "instruction", "input")


def build_samples(split: Split, titles: Mapping[str, str], samples_cfg: SamplesConfig, prompt_cfg: PromptConfig,
                  tokenizer=None) -> pd.DataFrame:
    """The training pool: one row per (user, position) as the construction rule says; SAMPLE_COLUMNS."""
    users, positions, histories, targets = [], [], [], []
    for user in sorted(split.train, key=natural_key):
        seq = split.train[user]
        for p in _target_positions(len(seq), samples_cfg):
            start = 0 if samples_cfg.construction == "last_per_user" else max(0, p - samples_cfg.max_history)
            users.append(user)
            positions.append(p)
            histories.append(seq[start:p])
            targets.append(seq[p])
    return _sample_frame(users, positions, histories, targets, titles, prompt_cfg, tokenizer,
                         samples_cfg.min_history)


def _target_positions(n: int, cfg: SamplesConfig) -> range:
    if cfg.construction == "last_per_user":
        return range(n - 1, n) if n - 1 >= cfg.min_history else range(0)
    return range(cfg.min_history, n, cfg.stride)


def valid_samples(split: Split, titles: Mapping[str, str], samples_cfg: SamplesConfig, prompt_cfg: PromptConfig,
                  tokenizer=None) -> pd.DataFrame:
    """One sample per user with a validation target (the first, chronologically), for early stopping.

    History = the training sequence's last ``max_history`` items (all of it for ``last_per_user``); users with
    fewer than ``min_history`` training items are skipped. Same columns and budget rules as build_samples.
    """
    users, positions, histories, targets = [], [], [], []
    for user in sorted(split.valid, key=natural_key):
        train = split.train.get(user, [])
        if len(train) < samples_cfg.min_history:
            continue
        start = 0 if samples_cfg.construction == "last_per_user" else max(0, len(train) - samples_cfg.max_history)
        users.append(user)
        positions.append(len(train))
        histories.append(train[start:])
        targets.append(split.valid[user][0])
    return _sample_frame(users, positions, histories, targets, titles, prompt_cfg, tokenizer,
                         samples_cfg.min_history)


def build_eval_users(split: Split, titles: Mapping[str, str], prompt_cfg: PromptConfig, samples_cfg: SamplesConfig,
                     which: str = "test", tokenizer=None) -> pd.DataFrame:
    """Inference prompts for evaluation: one row per user with ``which`` (test | valid) targets; EVAL_COLUMNS
    plus ``seen``, every item the user interacted with before the target (what ``exclude_history`` removes).

    History = training items, plus validation items when ``which == "test"``: the ``max_history`` most recent, or
    all of them for ``last_per_user`` (as its training samples). With a tokenizer the prompt is trimmed so that it plus ``max_title_tokens + 1`` tokens (room for the
    generated title and EOS) fits ``max_tokens``: the real target's length is not used, so it cannot leak.
    """
    if which not in ("test", "valid"):
        raise ValueError(f"which must be 'test' or 'valid', got {which!r}")
    targets = split.test if which == "test" else split.valid
    users = sorted(targets, key=natural_key)
    histories, seen = [], []
    for user in users:
        seq = split.train.get(user, []) + (split.valid.get(user, []) if which == "test" else [])
        # As in training: last_per_user keeps the whole history (the token budget trims it), the windows H items.
        start = 0 if samples_cfg.construction == "last_per_user" else max(0, len(seq) - samples_cfg.max_history)
        histories.append(seq[start:])
        seen.append(list(dict.fromkeys(seq)))
    template = template_for(prompt_cfg)
    tokenizer = tokenizer if prompt_cfg.max_tokens is not None else None  # no budget: nothing to count
    text = _display_titles(titles, [i for h in histories for i in h], prompt_cfg, tokenizer)
    if tokenizer is not None:
        reserve = np.full(len(users), prompt_cfg.max_title_tokens + 1, dtype=np.int64)
        histories = _trim(histories, text, reserve, template, prompt_cfg.max_tokens, tokenizer)
    return pd.DataFrame({
        "user": users,
        "history": histories,
        "targets": [list(targets[u]) for u in users],
        "instruction": template.instruction,
        "input": [template.render_input([text[i] for i in h]) for h in histories],
        "seen": seen,
    }, columns=[*EVAL_COLUMNS, "seen"])


def _sample_frame(users: list[str], positions: list[int], histories: list[list[str]], targets: list[str],
                  titles: Mapping[str, str], prompt_cfg: PromptConfig, tokenizer,
                  min_history: int) -> pd.DataFrame:
    """Render rows into SAMPLE_COLUMNS, trimming histories to the token budget when a tokenizer is given.

    A sample the budget leaves with fewer than ``min_history`` items is kept (dropping it would change the pool
    silently) and counted in a warning, so that a too-small ``max_tokens`` is seen."""
    template = template_for(prompt_cfg)
    tokenizer = tokenizer if prompt_cfg.max_tokens is not None else None  # no budget: nothing to count
    text = _display_titles(titles, [i for h in histories for i in h] + targets, prompt_cfg, tokenizer)
    outputs = [text[t] for t in targets]
    if tokenizer is not None:
        unique = list(dict.fromkeys(outputs))
        size = dict(zip(unique, token_lengths(tokenizer, unique).tolist(), strict=True))
        reserve = np.array([size[o] + 1 for o in outputs], dtype=np.int64)  # + EOS, as encode_pair appends it
        trimmed = _trim(histories, text, reserve, template, prompt_cfg.max_tokens, tokenizer)
        _warn_short(users, positions, histories, trimmed, min_history, prompt_cfg.max_tokens)
        histories = trimmed
    return pd.DataFrame({
        "sample_id": [f"{u}:{p}" for u, p in zip(users, positions, strict=True)],
        "user": users,
        "history": histories,
        "target_item": targets,
        "instruction": template.instruction,
        "input": [template.render_input([text[i] for i in h]) for h in histories],
        "output": outputs,
    }, columns=list(SAMPLE_COLUMNS))


def _warn_short(users: list[str], positions: list[int], before: list[list[str]], after: list[list[str]],
                min_history: int, max_tokens: int) -> None:
    short = [f"{u}:{p}" for u, p, b, a in zip(users, positions, before, after, strict=True)
             if len(a) < min_history <= len(b)]
    if short:
        log.warning("%d sample(s) keep fewer than min_history=%d history items after trimming to "
                    "max_tokens=%d (kept; raise max_tokens or lower max_title_tokens): %s%s", len(short),
                    min_history, max_tokens, ", ".join(short[:5]), ", ..." if len(short) > 5 else "")


def grounding_titles(titles: Mapping[str, str], prompt_cfg: PromptConfig, tokenizer=None) -> dict[str, str]:
    """item -> the title generations are grounded to: the one prompts show and samples answer with.

    With a token budget (``prompt.max_tokens`` and a tokenizer) an over-long title is cut to
    ``max_title_tokens`` in every sample, so a fine-tuned model answers with the cut text; grounding against
    the uncut catalogue would miss the exact-title match and rank by a different last-token embedding."""
    tokenizer = tokenizer if prompt_cfg.max_tokens is not None else None
    return _display_titles(titles, list(titles), prompt_cfg, tokenizer)


def _display_titles(titles: Mapping[str, str], items: list[str], prompt_cfg: PromptConfig,
                    tokenizer) -> dict[str, str]:
    """item -> the title text prompts show (cut to max_title_tokens when there is a tokenizer to count with)."""
    unique = list(dict.fromkeys(items))
    missing = [i for i in unique if i not in titles]
    if missing:
        raise DataFormatError(f"{len(missing)} item(s) of the split have no title: "
                              + ", ".join(repr(i) for i in missing[:5]), field="title")
    text = {i: titles[i] for i in unique}
    if tokenizer is None:
        return text
    cut = truncate_titles(tokenizer, list(text.values()), prompt_cfg.max_title_tokens)
    return {i: cut[t] for i, t in text.items()}


def _trim(histories: list[list[str]], text: dict[str, str], reserve: np.ndarray, template: Template,
          max_tokens: int, tokenizer) -> list[list[str]]:
    """Keep each history's most recent items that fit the budget (see fit_histories)."""
    keep = fit_histories(tokenizer, template, [[text[i] for i in h] for h in histories], reserve, max_tokens)
    return [h[len(h) - k:] for h, k in zip(histories, keep.tolist(), strict=True)]
