"""Tokenising (prompt, response) pairs for the LLM, shared by effort scoring and fine-tuning.

The response is followed by the tokenizer's EOS so the model learns to stop. With ``loss_on="response"`` the
prompt tokens get label -100 (ignored by cross-entropy); with ``"prompt"`` (the reference's choice) every
token is a target.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from deft.errors import DataFormatError

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]


def encode_pair(tokenizer, prompt: str, response: str, loss_on: str = "response") -> Encoded:
    """Token ids of prompt + response + EOS, and labels masking the prompt when ``loss_on == "response"``."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = list(prompt_ids) + list(response_ids)
    if loss_on == "response":
        labels = [IGNORE_INDEX] * len(prompt_ids) + list(response_ids)
    else:
        labels = list(ids)
    return Encoded(ids, labels)


def encode_pairs(tokenizer, prompts: list[str], responses: list[str], loss_on: str = "response") -> list[Encoded]:
    return [encode_pair(tokenizer, p, r, loss_on) for p, r in zip(prompts, responses, strict=True)]


def context_limit(model: Any) -> int | None:
    """The longest sequence the model's positions cover (``max_position_embeddings``; None if its config
    does not say)."""
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return limit if isinstance(limit, int) and limit > 0 else None


def check_context(encoded: list[Encoded], sample_ids: Sequence[Any], limit: int | None,
                  what: str = "samples") -> None:
    """Refuse samples longer than the model's context before any work on them. Past it, learned positions
    fail with an index error and rotary ones degrade silently; and one such sample in a batch of ordinary
    ones costs memory with the square of its length (a 24,000-token row asked for 38 GB)."""
    if limit is None:
        return
    over = [i for i, e in enumerate(encoded) if len(e.input_ids) > limit]
    if over:
        first = over[0]
        raise DataFormatError(
            f"{len(over)} of {len(encoded)} {what} are longer than the model's context of {limit} tokens "
            f"(max_position_embeddings): sample_id {sample_ids[first]!r} has {len(encoded[first].input_ids)} "
            "tokens with its prompt template and EOS; shorten or drop such samples")


def pad_batch(items: list[Encoded], pad_id: int, side: str = "right") -> dict[str, torch.Tensor]:
    """Dynamic padding to the longest item of the batch: input_ids, attention_mask, labels (-100 on padding)."""
    width = max(len(e.input_ids) for e in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, e in enumerate(items):
        n = len(e.input_ids)
        cols = slice(width - n, width) if side == "left" else slice(0, n)
        ids[row, cols] = torch.tensor(e.input_ids)
        labels[row, cols] = torch.tensor(e.labels)
        mask[row, cols] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def length_sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first), so padding is minimal."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
