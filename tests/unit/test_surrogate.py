"""SASRec surrogate: model invariants, metrics on hand-made rankings, deterministic training, early stopping
that keeps the best epoch, save/load, per-sample losses."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from deft.config import SurrogateConfig
from deft.data.types import Split
from deft.errors import DataFormatError
from deft.scores.influence import sample_losses
from deft.surrogate import (
    ItemIndex,
    SASRec,
    encode_histories,
    load_surrogate,
    pad_left,
    ranking_metrics,
    train_surrogate,
)
from deft.surrogate.sasrec import draw_negatives, encode_item_pairs
from deft.surrogate.trainer import EncodedSplit, popularity_metrics, train_model, training_tensors

TINY = SurrogateConfig(blocks=1, hidden=16, heads=2, max_len=8, dropout=0.2, batch_size=8, max_epochs=12,
                       patience=3, lr=5e-3)




def tiny_split(n_users: int = 24, n_items: int = 15, seed: int = 0) -> Split:
    """Users walk a cycle of items with a per-user step (learnable), leave-one-out split."""
    rng = np.random.default_rng(seed)
    items = [f"m{i:02d}" for i in range(n_items)]
    train, valid, test = {}, {}, {}
    for u in range(n_users):
        start, step, length = rng.integers(n_items), 1 + u % 2, rng.integers(3, 12)
        seq = [items[(start + step * k) % n_items] for k in range(length + 2)]
        user = f"u{u:02d}"
        train[user], valid[user], test[user] = seq[:-2], [seq[-2]], [seq[-1]]
    return Split(train, valid, test, "leave_one_out")


# ----------------------------------------------------------------------------------------------- model


def test_item_index_is_sorted_with_padding_at_zero_and_names_unknown_items() -> None:
    index = ItemIndex.from_items(["b", "a", "c", "a"])
    assert index.items == ("a", "b", "c") and index.encode(["c", "a"]) == [3, 1] and index.decode([2]) == ["b"]
    with pytest.raises(DataFormatError, match="'zz'.*sample 's9'"):
        encode_item_pairs(index, [["a"], ["zz"]], ["b", "c"], 5, ids=["s1", "s9"])


def test_pad_left_keeps_the_most_recent_items() -> None:
    out = pad_left([[1, 2, 3, 4], [5], []], max_len=3)
    assert out.tolist() == [[2, 3, 4], [0, 0, 5], [0, 0, 0]]


def test_states_do_not_depend_on_padding_width_and_last_only_matches() -> None:
    torch.manual_seed(0)
    model = SASRec(9, hidden=8, heads=2, blocks=2, max_len=6).eval()
    short = pad_left([[3, 4], [1, 2, 5, 6]], 6)  # width 4
    wide = torch.nn.functional.pad(short, (2, 0))  # width max_len: two more padding columns
    full = model(wide)[:, -1]
    torch.testing.assert_close(model(short)[:, -1], full)
    torch.testing.assert_close(model(short, last_only=True), full)
    cached = model.prefix_states(short, 1)
    torch.testing.assert_close(model(short, states=cached, start_block=1, last_only=True), full)


def test_encode_histories_gives_the_final_state() -> None:
    torch.manual_seed(0)
    model = SASRec(3, hidden=8, heads=2, blocks=1, max_len=4)
    index = ItemIndex.from_items(["a", "b", "c"])
    out = encode_histories(model, index, [["a", "b"], ["c"]])
    assert out.shape == (2, 8) and out.dtype == np.float32
    expected = model.eval()(pad_left([[3]], 4), last_only=True)[0].detach().numpy()
    np.testing.assert_allclose(out[1], expected, rtol=1e-5, atol=1e-6)  # batch padded to width 2, this to 1


def test_negatives_are_drawn_once_and_never_the_target() -> None:
    targets = torch.tensor([[0, 1, 2, 3], [4, 4, 4, 4]])
    a = draw_negatives(targets, 4, torch.Generator().manual_seed(1))
    b = draw_negatives(targets, 4, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a[0, 0] == 0
    assert ((a != targets) | (targets == 0)).all() and ((a >= 1) | (targets == 0)).all() and (a <= 4).all()


# ----------------------------------------------------------------------------------------------- metrics


def test_ranking_metrics_on_hand_made_rankings() -> None:
    ranked = np.array([[5, 1, 2], [1, 2, 3], [3, 4, 9]])
    targets = [[1], [7], [9, 3]]
    m = ranking_metrics(ranked, targets, ks=(1, 3))
    # user 0: hit at rank 2; user 1: none; user 2: hits at ranks 1 and 3, IDCG over 2 positions
    idcg2 = 1 + 1 / np.log2(3)
    assert m["recall@1"] == pytest.approx((0 + 0 + 0.5) / 3)
    assert m["ndcg@1"] == pytest.approx((0 + 0 + 1.0) / 3)
    assert m["recall@3"] == pytest.approx((1 + 0 + 1) / 3)
    assert m["ndcg@3"] == pytest.approx((1 / np.log2(3) + 0 + (1 + 1 / np.log2(4)) / idcg2) / 3)
    assert m["users"] == 3


def test_a_repeated_target_counts_once_as_in_the_llm_evaluation() -> None:
    ranked = np.array([[3, 4, 9]])
    assert ranking_metrics(ranked, [[3, 3]], ks=(3,)) == ranking_metrics(ranked, [[3]], ks=(3,))
    assert ranking_metrics(ranked, [[3, 3]], ks=(3,))["recall@3"] == 1.0


def test_ranking_metrics_with_fewer_items_than_k() -> None:
    m = ranking_metrics(np.array([[2, 1]]), [[1]], ks=(10,))
    assert m["recall@10"] == 1.0 and m["ndcg@10"] == pytest.approx(1 / np.log2(3))


def test_popularity_reference_and_history_exclusion() -> None:
    train = [[1, 2, 2], [2, 3]]  # counts: item 2 x3, then 1 and 3 once (tie: lower index first)
    m = popularity_metrics(train, histories=[[2], [2]], targets=[[2], [1]], n_items=3, ks=(1,))
    assert m["recall@1"] == 0.5  # everyone gets item 2 first
    m = popularity_metrics(train, histories=[[2], [2]], targets=[[2], [1]], n_items=3, ks=(1,), exclude_history=True)
    assert m["recall@1"] == 0.5  # item 2 hidden: user 0 misses, user 1 gets item 1 first


# ----------------------------------------------------------------------------------------------- training


def test_training_tensors_shift_by_one_and_cover_every_position() -> None:
    inputs, targets = training_tensors([[1, 2, 3, 4, 5], [7], [8, 9]], max_len=3)
    assert inputs.tolist() == [[0, 0, 1], [2, 3, 4], [0, 0, 8]]
    assert targets.tolist() == [[0, 0, 2], [3, 4, 5], [0, 0, 9]]


@pytest.mark.parametrize("length", [2, 3, 50, 51, 52, 101, 102, 250])
def test_every_position_after_the_first_is_a_target_once(length: int) -> None:
    seq = list(range(1, length + 1))
    _, targets = training_tensors([seq], max_len=50)
    trained = sorted(t for t in targets.flatten().tolist() if t)
    assert trained == seq[1:]


def test_training_is_deterministic_and_learns() -> None:
    split = tiny_split()
    m1, _, r1 = train_surrogate(split, TINY, progress=False)
    m2, _, r2 = train_surrogate(split, TINY, progress=False)
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert r1.valid_ndcg10 == r2.valid_ndcg10 and r1.test == r2.test
    assert r1.test["ndcg@10"] > r1.popularity["ndcg@10"]  # the sequences are learnable, popularity is not
    assert set(r1.test) == {"recall@10", "ndcg@10", "recall@20", "ndcg@20", "users"}


def test_early_stopping_keeps_the_best_epoch_not_the_last() -> None:
    split = tiny_split(n_users=16, seed=3)
    cfg = dataclasses.replace(TINY, lr=0.05, dropout=0.0, max_epochs=30, patience=4)
    data = EncodedSplit.build(split, ItemIndex.from_split(split))
    model, (best_epoch, epochs_run, curve) = train_model(data, 15, cfg, progress=False)
    assert curve[-1] < max(curve)  # precondition: the last epoch is worse, so keeping it would be visible
    assert best_epoch == int(np.argmax(curve)) + 1 and epochs_run == best_epoch + cfg.patience
    from deft.surrogate import evaluate

    assert evaluate(model, *data.eval_pairs("valid"))["ndcg@10"] == pytest.approx(max(curve))


def test_bce_parity_training_runs_and_is_deterministic() -> None:
    split = tiny_split(n_users=10)
    cfg = dataclasses.replace(TINY, loss="bce", max_epochs=3)
    a, _, _ = train_surrogate(split, cfg, progress=False)
    b, _, _ = train_surrogate(split, cfg, progress=False)
    assert a.loss == "bce" and all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))


def test_save_and_load_round_trip(tmp_path) -> None:
    split = tiny_split(n_users=10)
    cfg = dataclasses.replace(TINY, max_epochs=2)
    model, index, report = train_surrogate(split, cfg, out_dir=tmp_path / "surrogate", progress=False)
    loaded, loaded_index, meta = load_surrogate(tmp_path / "surrogate")
    hist = pad_left([[1, 2], [3]], cfg.max_len)
    torch.testing.assert_close(loaded(hist, last_only=True), model(hist, last_only=True), rtol=0, atol=0)
    assert loaded_index == index and meta["fingerprint"] == report.fingerprint
    assert meta["report"]["test"] == report.test and meta["config"]["hidden"] == 16
    with pytest.raises(DataFormatError, match="missing"):
        load_surrogate(tmp_path / "nothing")


def test_every_sample_gets_a_finite_deterministic_loss_even_with_one_item() -> None:
    torch.manual_seed(0)
    model = SASRec(6, hidden=8, heads=2, blocks=1, max_len=4, dropout=0.5)
    model.train()  # sample_losses must switch dropout off itself
    hist, targets = pad_left([[1], [2, 3], [], [1, 2, 3, 4, 5]], 4), torch.tensor([2, 4, 1, 6])
    a = sample_losses(model, hist, targets)
    b = sample_losses(model, hist, targets)
    assert np.isfinite(a).all() and (a > 0).all()
    np.testing.assert_array_equal(a, b)
