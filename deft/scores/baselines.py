"""Difficulty baselines from early-training surrogates (algorithms.md §7): GraNd, EL2N, per-sample loss.

For each seed of ``BaselinesConfig.seeds`` a fresh SASRec is trained for exactly ``early_epochs`` epochs (no
early stopping: "early in training" is the point), every pool sample is scored, and scores are averaged over
seeds. The pair scored is the sample's own (history -> target), as for influence.

- ``grand`` (Paul et al. 2021): the L2 norm of the per-sample loss gradient over ``BaselinesConfig.grand_params``
  (default ``all`` surrogate parameters, as in the paper; ``attn_out``/``last_block``/regex as for influence).
- ``el2n``: ``|| softmax(logits) - onehot(target) ||_2`` over all items (also for a ``bce`` surrogate).
- ``loss``: the per-sample surrogate loss (the training loss; ``bce`` uses one fixed negative per sample).

Larger = harder for all three.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from deft.config import BaselinesConfig, SurrogateConfig
from deft.errors import ConfigError
from deft.scores.influence import (
    batch_slices,
    per_sample_grads,
    sample_losses,
    sasrec_problem,
    select_parameters,
    take_rows,
)
from deft.surrogate.sasrec import ItemIndex, SASRec, encode_item_pairs
from deft.surrogate.trainer import EncodedSplit, train_model

log = logging.getLogger(__name__)

BASELINES = ("grand", "el2n", "loss")
# GraNd holds a (batch, parameters) gradient matrix. With ``all`` parameters its width grows with the catalogue
# (the item embeddings): 256 samples x 100K items x 64 dims would be 6.5 GB. The batch shrinks to keep that
# matrix near this size; on ML-100K (~160K parameters) the configured batch fits and nothing changes.
GRAND_BATCH_BYTES = 1 << 30


def grand_scores(model: SASRec, histories: torch.Tensor, targets: torch.Tensor, params: str = "all", *,
                 batch_size: int = 256, seed: int = 0) -> np.ndarray:
    """Per-sample gradient norms ||grad_theta l(s)||_2 (vmap(grad) in batches; dropout off)."""
    model.eval()
    problem = sasrec_problem(model, select_parameters(model, params, "baselines.grand_params"))
    batch_size = grand_batch_size(batch_size, problem.theta)
    data = problem.data(model, histories, targets, seed, batch_size)
    out = [per_sample_grads(problem.loss_fn, problem.theta, take_rows(data, sl)).norm(dim=1).double().numpy()
           for sl in batch_slices(len(histories), batch_size)]
    return np.concatenate(out) if out else np.zeros(0)


def grand_batch_size(batch_size: int, theta: torch.Tensor) -> int:
    """``batch_size``, or fewer samples where their (batch, parameters) gradients would pass GRAND_BATCH_BYTES."""
    fits = max(1, GRAND_BATCH_BYTES // (theta.numel() * theta.element_size()))
    if fits < batch_size:
        log.info("GraNd over %d parameters: batches of %d samples, not %d, to keep each batch's gradients near "
                 "%.1f GiB", theta.numel(), fits, batch_size, GRAND_BATCH_BYTES / 2**30)
    return min(batch_size, fits)


@torch.no_grad()
def el2n_scores(model: SASRec, histories: torch.Tensor, targets: torch.Tensor, *, batch_size: int = 2048) -> np.ndarray:
    """||softmax(f(h)) - onehot(t)||_2 = sqrt(sum_j p_j^2 - 2 p_t + 1), computed without the one-hot matrix."""
    model.eval()
    out = []
    for sl in batch_slices(len(histories), batch_size):
        probs = torch.softmax(model.logits(model(histories[sl], last_only=True)).double(), dim=-1)
        p_t = probs.gather(1, (targets[sl] - 1).unsqueeze(1)).squeeze(1)
        out.append(((probs**2).sum(1) - 2 * p_t + 1).clamp(min=0).sqrt().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def _scorers(cfg: BaselinesConfig) -> dict[str, Callable[[SASRec, torch.Tensor, torch.Tensor, int], np.ndarray]]:
    return {
        "grand": lambda m, h, t, s: grand_scores(m, h, t, cfg.grand_params, batch_size=cfg.batch_size, seed=s),
        "el2n": lambda m, h, t, s: el2n_scores(m, h, t),
        "loss": lambda m, h, t, s: sample_losses(m, h, t, seed=s),
    }


def baseline_scores(split, samples_df: pd.DataFrame, surrogate_cfg: SurrogateConfig, baselines_cfg: BaselinesConfig,
                    which: Sequence[str] = ("grand", "el2n"), progress: bool = True) -> pd.DataFrame:
    """Frame (sample_id, one column per baseline in ``which``), rows in ``samples_df`` order, seed-averaged."""
    unknown = [w for w in which if w not in BASELINES]
    if unknown or not which:
        raise ConfigError([f"baselines must be a non-empty subset of {list(BASELINES)}, got {list(which)!r}"])
    index = ItemIndex.from_split(split)
    data = EncodedSplit.build(split, index)
    ids = samples_df["sample_id"].tolist()
    histories, targets = encode_item_pairs(index, samples_df["history"].tolist(), samples_df["target_item"].tolist(),
                                      surrogate_cfg.max_len, ids)
    scorers = _scorers(baselines_cfg)
    totals = {w: np.zeros(len(ids)) for w in which}
    for seed in tqdm(baselines_cfg.seeds, desc="baselines", unit="seed", disable=not progress):
        cfg = dataclasses.replace(surrogate_cfg, seed=seed)
        model, _ = train_model(data, len(index), cfg, epochs=baselines_cfg.early_epochs, early_stopping=False,
                               progress=False)
        for w in which:
            totals[w] += scorers[w](model, histories, targets, seed)
    n_seeds = len(baselines_cfg.seeds)
    return pd.DataFrame({"sample_id": ids, **{w: totals[w] / n_seeds for w in which}})
