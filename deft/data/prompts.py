"""Alpaca-style prompt templates; one template serves training, scoring and inference, byte for byte."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from deft.config import PromptConfig

log = logging.getLogger(__name__)

PROMPT_FORMAT = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"


@dataclass(frozen=True)
class Template:
    instruction: str
    input_format: str  # contains "{history}"
    separator: str = "; "

    def render_input(self, titles: list[str]) -> str:
        return self.input_format.format(history=self.separator.join(titles))


TEMPLATES: dict[str, Template] = {
    "movies": Template(
        "Given the movies the user watched before, recommend the next movie the user will watch.",
        "The user watched: {history}.",
    ),
    "games": Template(
        "Given the games the user played before, recommend the next game the user will play.",
        "The user played: {history}.",
    ),
    "books": Template(
        "Given the books the user read before, recommend the next book the user will read.",
        "The user read: {history}.",
    ),
    "generic": Template(
        "Given the items the user interacted with before, recommend the next item the user will interact with.",
        "The user interacted with: {history}.",
    ),
}


def render_prompt(instruction: str, input_text: str) -> str:
    """The prompt the LLM sees, ending with the response header; the response follows it directly."""
    return PROMPT_FORMAT.format(instruction=instruction, input=input_text)


# ----------------------------------------------------------------------------------------------- token budget
# The tokenizer is duck-typed (a Hugging Face tokenizer: ``tok(list_of_texts, add_special_tokens=False)``
# returns ``input_ids``, ``tok.decode(ids)``), so this module never imports transformers.


def template_for(cfg: PromptConfig) -> Template:
    """The domain's built-in template with the config's instruction, input format and separator applied."""
    base = TEMPLATES[cfg.domain]
    return Template(cfg.instruction or base.instruction, cfg.input_format or base.input_format, cfg.separator)


def token_lengths(tokenizer, texts: list[str]) -> np.ndarray:
    """Token count of each text, without special tokens (as :func:`deft.data.encoding.encode_pair` counts)."""
    if not texts:
        return np.zeros(0, dtype=np.int64)
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(texts))


def truncate_titles(tokenizer, titles: list[str], max_title_tokens: int) -> dict[str, str]:
    """title -> itself, or its first ``max_title_tokens`` tokens decoded back to text when it is longer.

    One over-long title must not make a sample impossible to fit, so it is cut rather than rejected.
    """
    unique = list(dict.fromkeys(titles))
    out = dict(zip(unique, unique, strict=True))
    if not unique:
        return out
    ids = tokenizer(unique, add_special_tokens=False)["input_ids"]
    for title, toks in zip(unique, ids, strict=True):
        if len(toks) > max_title_tokens:
            out[title] = _cut_title(tokenizer, title, toks, max_title_tokens)
    return out


def _cut_title(tokenizer, title: str, toks: list[int], limit: int) -> str:
    """The text of the longest token prefix (at most ``limit`` tokens) that decodes cleanly and re-encodes
    within ``limit``.

    Byte-level tokens can split a multi-byte character, which decodes to U+FFFD; that text is not the title's
    and re-encodes to more tokens than it came from (U+FFFD is three bytes), so a shorter prefix is tried.
    Re-encoding a prefix can also merge differently; usually the first prefix passes. A title with no such
    prefix becomes empty.
    """
    replaced = title.count("\ufffd")
    for keep in range(limit, 0, -1):
        text = tokenizer.decode(toks[:keep], skip_special_tokens=True).strip()
        if text.count("\ufffd") <= replaced and token_lengths(tokenizer, [text])[0] <= limit:
            return text
    return ""


def fit_histories(tokenizer, template: Template, histories: list[list[str]], reserve: np.ndarray,
                  max_tokens: int) -> np.ndarray:
    """How many of each history's most recent titles fit: tokens(prompt) + reserve <= max_tokens.

    ``reserve`` is the per-sample token count that follows the prompt (the response and EOS when training).
    Dropping from the oldest end, the kept count is the largest k whose real token count fits. Every prompt is
    tokenized once in full; for those over budget a search brackets k, tokenizing all undecided samples
    together in each round. Its first probe is an estimate from per-title token counts (usually exact, so two
    rounds settle most samples), then it bisects. If even an empty history does not fit, the sample keeps none
    and a warning counts it.
    """
    def lengths(rows: np.ndarray, keep: np.ndarray) -> np.ndarray:
        prompts = [render_prompt(template.instruction, template.render_input(histories[r][len(histories[r]) - k:]))
                   for r, k in zip(rows.tolist(), keep.tolist(), strict=True)]
        return token_lengths(tokenizer, prompts) + reserve[rows]

    size = np.array([len(h) for h in histories], dtype=np.int64)
    full = lengths(np.arange(len(histories)), size)
    rows = np.flatnonzero(full > max_tokens)
    kept = size.copy()
    lo, hi = np.zeros(len(rows), dtype=np.int64), size[rows]  # invariant: hi does not fit; lo fits or is 0
    probe = _estimate_fit(tokenizer, template, [histories[r] for r in rows], full[rows] - max_tokens)
    first = True
    while (hi - lo > 1).any():
        active = hi - lo > 1
        guess = np.clip(probe[active], lo[active] + 1, hi[active] - 1)
        fits = lengths(rows[active], guess) <= max_tokens
        lo[active] = np.where(fits, guess, lo[active])
        hi[active] = np.where(fits, hi[active], guess)
        # After the estimate, probe just past it (it is usually off by at most one title), then bisect.
        probe[active] = np.where(fits, guess + 1, guess - 1) if first else (lo[active] + hi[active]) // 2
        first = False
    kept[rows] = lo
    empty = rows[lo == 0]
    if len(empty):
        too_long = int((lengths(empty, np.zeros(len(empty), dtype=np.int64)) > max_tokens).sum())
        if too_long:
            log.warning("%d prompt(s) exceed max_tokens=%d even with no history", too_long, max_tokens)
    return kept


def _estimate_fit(tokenizer, template: Template, histories: list[list[str]], excess: np.ndarray) -> np.ndarray:
    """Per history, the kept count after dropping the oldest titles whose separate token counts cover excess."""
    unique = list(dict.fromkeys(t for h in histories for t in h))
    cost = dict(zip(unique, token_lengths(tokenizer, [template.separator + t for t in unique]).tolist(), strict=True))
    out = np.zeros(len(histories), dtype=np.int64)
    for row, (titles, over) in enumerate(zip(histories, excess.tolist(), strict=True)):
        dropped = np.cumsum([cost[t] for t in titles])  # oldest first
        out[row] = len(titles) - min(int(np.searchsorted(dropped, over)) + 1, len(titles))
    return out
