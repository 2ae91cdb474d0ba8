"""GraNd, EL2N and loss baselines from early-training surrogates, averaged over seeds."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from deft.config import BaselinesConfig, SurrogateConfig
from deft.data.types import Split
from deft.errors import ConfigError
from deft.scores.baselines import baseline_scores, el2n_scores, grand_scores
from deft.surrogate.sasrec import ItemIndex, SASRec, encode_item_pairs, pad_left, sample_loss
from deft.surrogate.trainer import EncodedSplit, train_model

TINY = SurrogateConfig(blocks=1, hidden=8, heads=2, max_len=6, dropout=0.2, batch_size=8, lr=5e-3)




@pytest.fixture(scope="module")
def model() -> SASRec:
    torch.manual_seed(0)
    return SASRec(7, hidden=8, heads=2, blocks=2, max_len=5).eval()


def _pairs() -> tuple[torch.Tensor, torch.Tensor]:
    return pad_left([[1], [2, 3], [4, 5, 6, 7], [7]], 5), torch.tensor([2, 4, 1, 7])


def test_el2n_is_the_distance_between_softmax_and_one_hot(model: SASRec) -> None:
    hist, targets = _pairs()
    with torch.no_grad():
        probs = torch.softmax(model.logits(model(hist, last_only=True)).double(), dim=-1)
    onehot = torch.nn.functional.one_hot(targets - 1, 7).double()
    np.testing.assert_allclose(el2n_scores(model, hist, targets), (probs - onehot).norm(dim=1).numpy(), rtol=1e-10)


def test_grand_is_the_gradient_norm_over_all_parameters(model: SASRec) -> None:
    hist, targets = _pairs()
    scores = grand_scores(model, hist, targets, "all", batch_size=3)
    for i in range(len(targets)):
        model.zero_grad()
        sample_loss(model.logits(model(hist[i : i + 1], last_only=True)), targets[i : i + 1]).sum().backward()
        norm = torch.cat([p.grad.reshape(-1) for p in model.parameters()]).norm()
        assert scores[i] == pytest.approx(float(norm), rel=1e-5)


def test_grand_batches_shrink_to_a_memory_bound_with_the_same_scores(model: SASRec, monkeypatch) -> None:
    import deft.scores.baselines as baselines

    hist, targets = _pairs()
    wide = grand_scores(model, hist, targets, "all", batch_size=4)
    n_params = sum(p.numel() for p in model.parameters())
    seen = []
    real = baselines.per_sample_grads
    monkeypatch.setattr(baselines, "per_sample_grads", lambda f, th, b: seen.append(len(b[0])) or real(f, th, b))
    monkeypatch.setattr(baselines, "GRAND_BATCH_BYTES", 2 * n_params * 4)  # two samples' float32 gradients
    narrow = grand_scores(model, hist, targets, "all", batch_size=4)
    assert seen == [2, 2]
    np.testing.assert_allclose(narrow, wide, rtol=1e-5)
    assert baselines.grand_batch_size(4, torch.zeros(10)) == 4  # within the bound: as configured
    monkeypatch.setattr(baselines, "GRAND_BATCH_BYTES", 1)
    assert baselines.grand_batch_size(4, torch.zeros(10)) == 1  # never below one sample


def test_a_grand_parameter_pattern_matching_nothing_names_its_own_setting(model: SASRec) -> None:
    hist, targets = _pairs()
    with pytest.raises(ConfigError, match=r"`baselines\.grand_params` 'no_such_param' matches no surrogate parameter"):
        grand_scores(model, hist, targets, "no_such_param")


def _split_and_pool() -> tuple[Split, pd.DataFrame]:
    items = [f"m{i}" for i in range(9)]
    train = {f"u{u}": [items[(u + k) % 9] for k in range(5)] for u in range(8)}
    split = Split(train, {u: [items[(i + 5) % 9]] for i, u in enumerate(train)},
                  {u: [items[(i + 6) % 9]] for i, u in enumerate(train)}, "leave_one_out")
    rows = [(f"{u}:{k}", u, seq[:k], seq[k]) for u, seq in train.items() for k in range(1, 5)]
    return split, pd.DataFrame(rows, columns=["sample_id", "user", "history", "target_item"])


def test_baseline_scores_average_fresh_early_surrogates_over_seeds() -> None:
    split, pool = _split_and_pool()
    cfg = BaselinesConfig(early_epochs=2, seeds=[0, 1], grand_params="attn_out", batch_size=5)
    frame = baseline_scores(split, pool, TINY, cfg, which=("grand", "el2n", "loss"), progress=False)
    assert list(frame.columns) == ["sample_id", "grand", "el2n", "loss"]
    assert frame["sample_id"].tolist() == pool["sample_id"].tolist()
    assert np.isfinite(frame[["grand", "el2n", "loss"]].to_numpy()).all()
    # the same numbers by hand: one early surrogate per seed, then the mean
    index = ItemIndex.from_split(split)
    hist, targets = encode_item_pairs(index, pool["history"].tolist(), pool["target_item"].tolist(), TINY.max_len)
    per_seed = []
    for seed in cfg.seeds:
        m, _ = train_model(EncodedSplit.build(split, index), len(index), dataclasses.replace(TINY, seed=seed),
                           epochs=2, early_stopping=False, progress=False)
        per_seed.append(el2n_scores(m, hist, targets))
    np.testing.assert_allclose(frame["el2n"], np.mean(per_seed, axis=0), rtol=1e-12)
    again = baseline_scores(split, pool, TINY, cfg, which=("grand", "el2n", "loss"), progress=False)
    pd.testing.assert_frame_equal(frame, again)


def test_unknown_baseline_is_a_config_error() -> None:
    split, pool = _split_and_pool()
    with pytest.raises(ConfigError, match="el2n"):
        baseline_scores(split, pool, TINY, BaselinesConfig(seeds=[0]), which=("forgetting",), progress=False)
