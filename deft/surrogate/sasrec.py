"""SASRec: a causal self-attention next-item model, the surrogate that influence is computed on (algorithms.md §2).

Layout, chosen so every parameter subset used by influence is addressable by name:

- ``item_emb`` (index 0 = padding, item ``i`` of :class:`ItemIndex` at row ``i + 1``) and ``pos_emb``;
- ``blocks.{b}`` = pre-LN transformer blocks: ``x + attn(ln1(x))`` then ``x + ffn(ln2(x))``, with
  ``attn.{q,k,v,out}_proj`` and ``ffn.{0,2}`` (Linear, GELU, Linear). Pre-LN keeps training stable without
  warm-up; GELU (not ReLU) keeps the loss twice differentiable everywhere, which the Hessian needs;
- ``final_norm``; the score of item j is ``dot(final state, item_emb[j])`` (tied input/output embeddings).

Sequences are left-padded so the most recent item is always in the last column, and positions are aligned to
the right (the last column is position ``max_len - 1`` whatever the width). Padding keys are masked, so a
batch padded to its own longest history gives exactly the same states as one padded to ``max_len``: scoring
short (<= 10 item) histories never pays for 50 positions.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deft.config import SurrogateConfig
from deft.errors import DataFormatError

PAD = 0
ATTN_OUT = "attn.out_proj.weight"  # suffix of the parity parameter subset (bias excluded: 64x64 = 4,096)


@dataclass(frozen=True)
class ItemIndex:
    """Item id <-> model index. Items are sorted by id; index 0 is padding, so item ``items[i]`` is ``i + 1``."""

    items: tuple[str, ...]

    @classmethod
    def from_items(cls, items: Iterable[str]) -> ItemIndex:
        return cls(tuple(sorted({str(i) for i in items})))

    @classmethod
    def from_split(cls, split) -> ItemIndex:
        """Every item that occurs anywhere in a :class:`deft.data.types.Split` (train, valid or test)."""
        parts = (split.train, split.valid, split.test)
        return cls.from_items(item for part in parts for seq in part.values() for item in seq)

    def __len__(self) -> int:
        return len(self.items)

    @cached_property
    def lookup(self) -> dict[str, int]:
        return {item: i + 1 for i, item in enumerate(self.items)}

    def encode(self, items: Iterable[str], *, where: str = "") -> list[int]:
        lookup = self.lookup
        out = []
        for item in items:
            idx = lookup.get(str(item))
            if idx is None:
                raise DataFormatError(f"item {item!r} is not in the surrogate's item index{where}")
            out.append(idx)
        return out

    def decode(self, indices: Iterable[int]) -> list[str]:
        return [self.items[i - 1] for i in indices]


def pad_left(seqs: Sequence[Sequence[int]], max_len: int) -> Tensor:
    """(n, W) long tensor: each sequence's most recent ``max_len`` items, right-aligned, 0-padded on the left.

    W is the longest (truncated) sequence, at least 1, so an empty history is one padding column.
    """
    width = max(1, min(max_len, max((len(s) for s in seqs), default=1)))
    out = np.zeros((len(seqs), width), dtype=np.int64)
    for row, seq in enumerate(seqs):
        tail = list(seq)[-width:]
        if tail:
            out[row, width - len(tail):] = tail
    return torch.from_numpy(out)


def encode_item_pairs(index: ItemIndex, histories: Sequence[Sequence[str]], targets: Sequence[str], max_len: int,
                 ids: Sequence[Any] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(histories (n, W), targets (n,)) as model indices; unknown items raise an error naming the sample."""
    def where(r: int) -> str:
        return f" (sample {ids[r]!r})" if ids is not None else f" (row {r})"

    hist = [index.encode(h, where=where(r)) for r, h in enumerate(histories)]
    tgt = [index.encode([t], where=where(r))[0] for r, t in enumerate(targets)]
    return pad_left(hist, max_len), torch.tensor(tgt, dtype=torch.long)


class CausalSelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(hidden, hidden)
        self.k_proj = nn.Linear(hidden, hidden)
        self.v_proj = nn.Linear(hidden, hidden)
        self.out_proj = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)

    def _split(self, x: Tensor) -> Tensor:
        b, w, h = x.shape
        return x.view(b, w, self.heads, h // self.heads).transpose(1, 2)

    def forward(self, x: Tensor, allowed: Tensor, last_only: bool = False) -> Tensor:
        """``allowed`` (B, Wq, W) says which keys each query may see; ``last_only`` keeps the last query only."""
        q = self._split(self.q_proj(x[:, -1:] if last_only else x))
        k, v = self._split(self.k_proj(x)), self._split(self.v_proj(x))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
        att = att.masked_fill(~allowed.unsqueeze(1), torch.finfo(att.dtype).min)
        att = self.dropout(torch.softmax(att, dim=-1))
        out = (att @ v).transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)
        return self.out_proj(out)


class Block(nn.Module):
    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(hidden)
        self.attn = CausalSelfAttention(hidden, heads, dropout)
        self.ln2 = nn.LayerNorm(hidden)
        self.ffn = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, hidden))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, allowed: Tensor, last_only: bool = False) -> Tensor:
        residual = x[:, -1:] if last_only else x
        x = residual + self.dropout(self.attn(self.ln1(x), allowed, last_only))
        return x + self.dropout(self.ffn(self.ln2(x)))


class SASRec(nn.Module):
    """Self-attentive sequential recommender. ``loss`` records the training objective (ce | bce), which is
    also the per-sample loss used for scoring."""

    def __init__(self, n_items: int, *, hidden: int = 64, heads: int = 2, blocks: int = 2, max_len: int = 50,
                 dropout: float = 0.2, loss: str = "ce") -> None:
        super().__init__()
        self.n_items, self.max_len, self.loss = n_items, max_len, loss
        self.item_emb = nn.Embedding(n_items + 1, hidden, padding_idx=PAD)
        self.pos_emb = nn.Embedding(max_len, hidden)
        self.emb_dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(hidden, heads, dropout) for _ in range(blocks))
        self.final_norm = nn.LayerNorm(hidden)
        # Small embeddings (GPT-style): tied output scores start near uniform instead of saturated.
        nn.init.normal_(self.item_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[PAD].zero_()

    @classmethod
    def from_config(cls, n_items: int, cfg: SurrogateConfig) -> SASRec:
        return cls(n_items, hidden=cfg.hidden, heads=cfg.heads, blocks=cfg.blocks, max_len=cfg.max_len,
                   dropout=cfg.dropout, loss=cfg.loss)

    def embed(self, seqs: Tensor) -> Tensor:
        width = seqs.shape[-1]
        positions = torch.arange(self.max_len - width, self.max_len, device=seqs.device)
        return self.emb_dropout(self.item_emb(seqs) + self.pos_emb(positions))

    @staticmethod
    def attention_mask(seqs: Tensor, last_only: bool = False) -> Tensor:
        """(B, Wq, W): causal, padding keys hidden; a query always sees itself so no row is empty (no NaN)."""
        width = seqs.shape[-1]
        idx = torch.arange(width, device=seqs.device)
        causal = idx.view(-1, 1) >= idx.view(1, -1)
        own = idx.view(-1, 1) == idx.view(1, -1)
        allowed = causal & ((seqs != PAD).unsqueeze(-2) | own)
        return allowed[:, -1:] if last_only else allowed

    def forward(self, seqs: Tensor, *, states: Tensor | None = None, start_block: int = 0,
                last_only: bool = False) -> Tensor:
        """Final hidden states (B, W, H), or (B, H) at the last position with ``last_only``.

        ``states``, if given, are this batch's outputs of ``blocks[:start_block]`` (a cached prefix that does
        not depend on the parameters being differentiated); ``seqs`` is still needed for the padding mask.
        """
        x = self.embed(seqs) if states is None else states
        n_blocks = len(self.blocks)
        for b in range(start_block, n_blocks):
            last = last_only and b == n_blocks - 1
            x = self.blocks[b](x, self.attention_mask(seqs, last), last)
        if last_only and start_block >= n_blocks:
            x = x[:, -1:]
        x = self.final_norm(x)
        return x[:, -1] if last_only else x

    @torch.no_grad()
    def prefix_states(self, seqs: Tensor, upto: int) -> Tensor:
        """Outputs of ``embed`` and ``blocks[:upto]`` (no grad), for caching across influence passes."""
        x = self.embed(seqs)
        for b in range(upto):
            x = self.blocks[b](x, self.attention_mask(seqs))
        return x

    def logits(self, states: Tensor) -> Tensor:
        return item_logits(states, self.item_emb.weight)


def item_logits(states: Tensor, item_weight: Tensor) -> Tensor:
    """Scores of every real item (padding row excluded): column j is item index j + 1."""
    return states @ item_weight[1:].T


def sample_loss(logits: Tensor, targets: Tensor, loss: str = "ce", negatives: Tensor | None = None) -> Tensor:
    """Per-sample loss of predicting ``targets`` (item indices, 1-based) from (B, N) last-position logits.

    ``ce``: cross-entropy over all items. ``bce`` (parity): -log s(pos) - log(1 - s(neg)) with one negative
    item per sample, fixed in advance by the caller (drawn once from a seeded generator).
    """
    if loss == "ce":
        return F.cross_entropy(logits, targets - 1, reduction="none")
    if negatives is None:
        raise ValueError("loss 'bce' needs one negative item per sample")
    pos = logits.gather(-1, (targets - 1).unsqueeze(-1)).squeeze(-1)
    neg = logits.gather(-1, (negatives - 1).unsqueeze(-1)).squeeze(-1)
    return F.softplus(-pos) + F.softplus(neg)


def draw_negatives(targets: Tensor, n_items: int, generator: torch.Generator) -> Tensor:
    """One uniformly drawn item != target per entry (same shape as ``targets``; padding entries stay 0).

    Drawn once, before training or scoring, so every gradient sees the same loss (the reference redrew them).
    """
    r = torch.randint(1, max(n_items, 2), targets.shape, generator=generator)
    neg = r + (r >= targets).long()  # skip the target: uniform over the other n_items - 1 items
    return torch.where(targets > 0, neg.clamp(max=n_items), torch.zeros_like(targets))


@torch.no_grad()
def encode_histories(model: SASRec, index: ItemIndex, histories: Sequence[Sequence[str]],
                     batch_size: int = 2048) -> np.ndarray:
    """(n, hidden) float32: the model's final state after each history (eval mode), e.g. for k-center coverage."""
    model.eval()
    seqs = [index.encode(h, where=f" (history {row})") for row, h in enumerate(histories)]
    out = [model(pad_left(seqs[i : i + batch_size], model.max_len), last_only=True).numpy()
           for i in range(0, len(seqs), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, model.item_emb.embedding_dim), dtype=np.float32)
