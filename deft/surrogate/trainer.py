"""Training, evaluation, save/load of the SASRec surrogate, and the most-popular reference (algorithms.md §2).

Training is next-item prediction at every position of every user's training sequence (cut into windows of
``max_len + 1`` items, see :func:`training_windows`), with full-softmax cross-entropy (``ce``) or the parity ``bce`` with one negative per
position drawn once before training. Adam; early stopping on validation NDCG@10 keeps the **best** weights.

Evaluation ranks all items (full ranking). Validation: history = training sequence, target = validation items.
Test: history = training + validation items, targets = all test items of the user (several under a temporal
split). Recall@K = hits / |targets|; NDCG@K = DCG / IDCG with IDCG over min(|targets|, K) positions, log2
discount. History items are **not** excluded from the ranking by default (``SurrogateConfig.exclude_history``),
to match the LLM grounding evaluation; the report says which was used.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from deft.artifacts import fingerprint, read_json, save_safetensors, write_json
from deft.config import SurrogateConfig, to_dict
from deft.errors import DataFormatError
from deft.surrogate.sasrec import ItemIndex, SASRec, draw_negatives, pad_left, sample_loss

log = logging.getLogger(__name__)

KS = (10, 20)
# What train_model fits, beyond the config: part of every fingerprint of a trained surrogate, so a cache made
# by an earlier fit (which trained on each user's most recent window only) is never reused for this one.
FIT = "every-position windows"
EVAL_BATCH = 512  # users scored per forward pass during evaluation
WEIGHTS_FILE, META_FILE = "model.safetensors", "surrogate.json"


@dataclass
class SurrogateReport:
    """What training produced: the chosen epoch, the validation curve, test metrics of SASRec and popularity."""

    best_epoch: int
    epochs_run: int
    valid_ndcg10: list[float]
    test: dict[str, float]
    popularity: dict[str, float]
    train_s: float
    n_params: int
    n_items: int
    exclude_history: bool
    fingerprint: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------- metrics


def ranking_metrics(ranked: np.ndarray, targets: Sequence[Sequence[int]], ks: Sequence[int] = KS) -> dict[str, float]:
    """Mean Recall@K and NDCG@K over users. ``ranked`` (U, >= max K): item indices, best first.

    Users with no targets must be left out by the caller (they would divide by zero).
    """
    kmax = max(ks)
    discounts = 1.0 / np.log2(np.arange(kmax) + 2.0)
    hits = np.zeros((len(targets), kmax))  # stays 0 beyond the ranked columns (catalogues smaller than K)
    width = min(kmax, ranked.shape[1])
    for u, t in enumerate(targets):
        hits[u, :width] = np.isin(ranked[u, :width], list(t))
    # distinct targets, as deft.evaluation counts them: an item repeated in a user's test period is one hit
    n_targets = np.array([len(set(t)) for t in targets], dtype=np.float64)
    out: dict[str, float] = {}
    for k in ks:
        dcg = hits[:, :k] @ discounts[:k]
        idcg = np.array([discounts[: min(int(m), k)].sum() for m in n_targets])
        out[f"recall@{k}"] = float(np.mean(hits[:, :k].sum(1) / n_targets))
        out[f"ndcg@{k}"] = float(np.mean(dcg / idcg))
    out["users"] = len(targets)
    return out


def _top_items(scores: torch.Tensor, histories: Sequence[Sequence[int]] | None, k: int) -> np.ndarray:
    """Top-k item indices (1-based) per row of (B, N) scores, optionally hiding each row's history items.

    Ties go to the lower index (a stable descending sort), so rankings are reproducible."""
    if histories is not None:
        scores = scores.clone()
        rows = [r for r, h in enumerate(histories) for _ in h]
        cols = [i - 1 for h in histories for i in h]
        scores[rows, cols] = float("-inf")
    return (torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k] + 1).numpy()


@torch.no_grad()
def evaluate(model: SASRec, histories: Sequence[Sequence[int]], targets: Sequence[Sequence[int]],
             *, exclude_history: bool = False, ks: Sequence[int] = KS) -> dict[str, float]:
    """Full-ranking Recall/NDCG of the model's next-item scores for each (history, targets) user."""
    was_training = model.training
    model.eval()
    ranked = []
    for start in range(0, len(histories), EVAL_BATCH):
        hist = histories[start : start + EVAL_BATCH]
        scores = model.logits(model(pad_left(hist, model.max_len), last_only=True))
        ranked.append(_top_items(scores, hist if exclude_history else None, max(ks)))
    model.train(was_training)
    return ranking_metrics(np.concatenate(ranked), targets, ks)


def popularity_metrics(train: Sequence[Sequence[int]], histories: Sequence[Sequence[int]],
                       targets: Sequence[Sequence[int]], n_items: int, *, exclude_history: bool = False,
                       ks: Sequence[int] = KS) -> dict[str, float]:
    """The most-popular reference: every user gets items ranked by training-interaction count."""
    counts = np.bincount([i for seq in train for i in seq], minlength=n_items + 1)[1:]
    popularity = torch.tensor(counts, dtype=torch.float64)
    ranked = [_top_items(popularity.expand(len(h_batch), -1), h_batch if exclude_history else None, max(ks))
              for h_batch in (histories[s : s + EVAL_BATCH] for s in range(0, len(histories), EVAL_BATCH))]
    return ranking_metrics(np.concatenate(ranked), targets, ks)


# ----------------------------------------------------------------------------------------------- data


@dataclass
class EncodedSplit:
    """A split as model indices, users sorted by id. ``train`` keeps full sequences (popularity uses them)."""

    users: list[str]
    train: list[list[int]]
    valid: list[list[int]]
    test: list[list[int]]

    @classmethod
    def build(cls, split, index: ItemIndex) -> EncodedSplit:
        users = sorted(set(split.train) | set(split.valid) | set(split.test))

        def enc(part: dict[str, list[str]], user: str) -> list[int]:
            return index.encode(part.get(user, []), where=f" (user {user!r})")

        return cls(users, [enc(split.train, u) for u in users], [enc(split.valid, u) for u in users],
                   [enc(split.test, u) for u in users])

    def eval_pairs(self, stage: str) -> tuple[list[list[int]], list[list[int]]]:
        """(histories, targets) of users with targets: valid uses train history, test uses train + valid."""
        if stage == "valid":
            pairs = [(t, v) for t, v in zip(self.train, self.valid, strict=True) if v]
        else:
            pairs = [(t + v, s) for t, v, s in zip(self.train, self.valid, self.test, strict=True) if s]
        return [p[0] for p in pairs], [p[1] for p in pairs]


def training_windows(seq: Sequence[int], max_len: int) -> list[Sequence[int]]:
    """Windows of at most ``max_len + 1`` items, cut from the end, in which every position of ``seq`` after the
    first is a target exactly once (algorithms.md §2: next-item prediction at every position), oldest first.
    Keeping only the most recent window, as SASRec implementations usually do, would leave most of a long
    sequence, and so most of the pool the influence is computed over, out of the risk θ minimises."""
    ends = range(len(seq), 1, -max_len)
    return [seq[max(0, end - max_len - 1):end] for end in reversed(ends)]


def training_tensors(train: Sequence[Sequence[int]], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets), both (windows, max_len): every user's training windows shifted by one."""
    seqs = [w for s in train for w in training_windows(s, max_len)]
    inputs = pad_left([s[:-1] for s in seqs], max_len)
    targets = pad_left([s[1:] for s in seqs], max_len)
    if inputs.shape[1] < max_len:  # pad_left sizes to the longest sequence; training wants the full window
        pad = max_len - inputs.shape[1]
        inputs, targets = F.pad(inputs, (pad, 0)), F.pad(targets, (pad, 0))
    return inputs, targets


# ----------------------------------------------------------------------------------------------- training


def _epoch(model: SASRec, inputs: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor | None,
           opt: torch.optim.Optimizer, batch_size: int, generator: torch.Generator) -> float:
    model.train()
    order = torch.randperm(len(inputs), generator=generator)
    total, count = 0.0, 0
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        x, y = inputs[rows], targets[rows]
        mask = y > 0
        states = model(x)[mask]
        negs = None if negatives is None else negatives[rows][mask]
        loss = sample_loss(model.logits(states), y[mask], model.loss, negs).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total, count = total + loss.item() * len(rows), count + len(rows)
    return total / max(count, 1)


def fit(model: SASRec, data: EncodedSplit, cfg: SurrogateConfig, *, epochs: int, early_stopping: bool = True,
        progress: bool = True) -> tuple[int, int, list[float]]:
    """Train in place for up to ``epochs``; with early stopping, restore the best-validation-NDCG@10 weights.

    Returns (best_epoch, epochs_run, validation NDCG@10 per epoch). Uses the global torch RNG for dropout, so
    call it inside ``torch.random.fork_rng`` after seeding (as :func:`train_model` does).
    """
    inputs, targets = training_tensors(data.train, cfg.max_len)
    generator = torch.Generator().manual_seed(cfg.seed)
    negatives = draw_negatives(targets, model.n_items, generator) if cfg.loss == "bce" else None
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    valid_hist, valid_targets = data.eval_pairs("valid")
    curve: list[float] = []
    best, best_epoch, best_state = -1.0, 0, None
    bar = tqdm(range(1, epochs + 1), desc="surrogate", unit="epoch", disable=not progress)
    for epoch in bar:
        train_loss = _epoch(model, inputs, targets, negatives, opt, cfg.batch_size, generator)
        if not early_stopping or not valid_hist:
            best_epoch = epoch
            bar.set_postfix(loss=f"{train_loss:.4f}")
            continue
        ndcg = evaluate(model, valid_hist, valid_targets, exclude_history=cfg.exclude_history)["ndcg@10"]
        curve.append(ndcg)
        if ndcg > best:
            best, best_epoch, best_state = ndcg, epoch, copy.deepcopy(model.state_dict())
        bar.set_postfix(loss=f"{train_loss:.4f}", ndcg10=f"{ndcg:.4f}", best=best_epoch)
        if epoch - best_epoch >= cfg.patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return best_epoch, epoch, curve


def train_model(data: EncodedSplit, n_items: int, cfg: SurrogateConfig, *, epochs: int | None = None,
                early_stopping: bool = True, progress: bool = True) -> tuple[SASRec, tuple[int, int, list[float]]]:
    """A freshly initialised SASRec trained with ``cfg`` (seeded; the caller's global RNG is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = SASRec.from_config(n_items, cfg)
        history = fit(model, data, cfg, epochs=epochs or cfg.max_epochs, early_stopping=early_stopping,
                      progress=progress)
    return model, history


def surrogate_fingerprint(split, cfg: SurrogateConfig) -> str:
    """Hash of the split's contents and the surrogate config: a saved surrogate is reusable iff it matches."""
    return fingerprint({"split": [split.kind, split.train, split.valid, split.test], "config": to_dict(cfg),
                        "fit": FIT})


def train_surrogate(split, cfg: SurrogateConfig, out_dir: str | Path | None = None,
                    progress: bool = True) -> tuple[SASRec, ItemIndex, SurrogateReport]:
    """Train SASRec on ``split`` (a :class:`deft.data.types.Split`), report it and the popularity reference.

    With ``out_dir``, weights (safetensors) and ``surrogate.json`` (config, item index, report) are written
    there atomically; deciding whether to reuse an existing one is the caller's job (see ``RunDir``).
    """
    index = ItemIndex.from_split(split)
    data = EncodedSplit.build(split, index)
    start = time.perf_counter()
    model, (best_epoch, epochs_run, curve) = train_model(data, len(index), cfg, progress=progress)
    train_s = time.perf_counter() - start
    test_hist, test_targets = data.eval_pairs("test")
    report = SurrogateReport(
        best_epoch=best_epoch, epochs_run=epochs_run, valid_ndcg10=curve,
        test=evaluate(model, test_hist, test_targets, exclude_history=cfg.exclude_history) if test_hist else {},
        popularity=popularity_metrics(data.train, test_hist, test_targets, len(index),
                                      exclude_history=cfg.exclude_history) if test_hist else {},
        train_s=round(train_s, 3), n_params=sum(p.numel() for p in model.parameters()), n_items=len(index),
        exclude_history=cfg.exclude_history, fingerprint=surrogate_fingerprint(split, cfg))
    log.info("surrogate: best epoch %d of %d, test %s, popularity %s", best_epoch, epochs_run, report.test,
             report.popularity)
    if out_dir is not None:
        save_surrogate(out_dir, model, index, cfg, report)
    return model, index, report


# ----------------------------------------------------------------------------------------------- save / load


def save_surrogate(out_dir: str | Path, model: SASRec, index: ItemIndex, cfg: SurrogateConfig,
                   report: SurrogateReport) -> None:
    out = Path(out_dir)
    save_safetensors(out / WEIGHTS_FILE, dict(model.state_dict()), {"format": "deft-sasrec"})
    write_json(out / META_FILE, {"config": to_dict(cfg), "items": list(index.items), "report": report.to_dict(),
                                 "fingerprint": report.fingerprint})


def load_surrogate(path: str | Path) -> tuple[SASRec, ItemIndex, dict[str, Any]]:
    """(model in eval mode, item index, meta dict) from a directory written by :func:`save_surrogate`."""
    from safetensors.torch import load_file

    path = Path(path)
    for name in (WEIGHTS_FILE, META_FILE):
        if not (path / name).is_file():
            raise DataFormatError(f"not a saved surrogate: {name} is missing", file=path)
    meta = read_json(path / META_FILE)
    known = {f.name for f in dataclasses.fields(SurrogateConfig)}
    cfg = SurrogateConfig(**{k: v for k, v in meta["config"].items() if k in known})
    index = ItemIndex(tuple(meta["items"]))
    model = SASRec.from_config(len(index), cfg)
    model.load_state_dict(load_file(str(path / WEIGHTS_FILE)))
    model.eval()
    return model, index, meta
