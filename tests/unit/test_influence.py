"""Influence scores: agreement with leave-one-out retraining, solver agreement, LiSSA repeats, per-sample
gradients, and the SASRec scoring path (finite, deterministic, errors a user can act on)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from deft.config import InfluenceConfig
from deft.errors import ConfigError
from deft.scores.influence import (
    INFLUENCE_DESCRIPTION,
    influence_from_loss,
    influence_scores,
    per_sample_grads,
    pool_losses,
    sasrec_problem,
    score_pool,
    select_parameters,
    solve_failure,
    validation_pairs,
)
from deft.surrogate.sasrec import ItemIndex, SASRec, pad_left, sample_loss

DIM, CLASSES, MU = 3, 3, 0.2  # softmax regression: p = 3*3 + 3 = 12 parameters, L2 weight MU




def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(pd.Series(a).rank().corr(pd.Series(b).rank()))


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# ----------------------------------------------------------------------------------------------- softmax regression


def softmax_loss(theta: torch.Tensor, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    x, y = batch
    w, b = theta[: DIM * CLASSES].view(DIM, CLASSES), theta[DIM * CLASSES :]
    return F.cross_entropy(x @ w + b, y, reduction="none")


def make_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, DIM, generator=gen, dtype=torch.float64)
    w = torch.randn(DIM, CLASSES, generator=gen, dtype=torch.float64)
    y = torch.multinomial(torch.softmax(2 * x @ w, dim=1), 1, generator=gen).squeeze(1)
    return x, y


def fit(data: tuple[torch.Tensor, torch.Tensor], weights: torch.Tensor, init: torch.Tensor) -> torch.Tensor:
    """argmin (1/n) sum_j w_j l_j(theta) + MU/2 |theta|^2 to machine precision: Newton on a strongly convex
    objective, with plain autograd (independent of the code under test)."""

    def objective(theta: torch.Tensor) -> torch.Tensor:
        return (weights * softmax_loss(theta, data)).mean() + MU / 2 * theta.pow(2).sum()

    theta = init.clone()
    for _ in range(30):
        grad = torch.autograd.functional.jacobian(objective, theta)
        step = torch.linalg.solve(torch.autograd.functional.hessian(objective, theta), grad)
        theta = theta - step
        if step.abs().max() < 1e-13:
            break
    return theta


@pytest.fixture(scope="module")
def regression() -> dict:
    train, valid = make_data(60, seed=1), make_data(40, seed=2)
    ones = torch.ones(60, dtype=torch.float64)
    theta = fit(train, ones, torch.zeros(DIM * CLASSES + CLASSES, dtype=torch.float64))
    return {"train": train, "valid": valid, "theta": theta, "ones": ones}


def risk(theta: torch.Tensor, data: tuple[torch.Tensor, torch.Tensor]) -> float:
    return float(softmax_loss(theta, data).mean())


@pytest.mark.parametrize("target", ["train", "valid"])
def test_exact_influence_matches_leave_one_out_retraining(regression: dict, target: str) -> None:
    """The training objective's L2 term is the damping, so H_lambda is exactly the objective's Hessian and the
    influence function predicts R(theta_-s) - R(theta) to first order: the ranking must agree."""
    train, theta = regression["train"], regression["theta"]
    measured_on = train if target == "train" else regression["valid"]
    cfg = InfluenceConfig(solver="exact", damping=MU, target=target, batch_size=16)
    result = influence_from_loss(softmax_loss, theta, train, cfg, valid=regression["valid"], progress=False)
    truth = []
    for s in range(len(train[0])):
        weights = regression["ones"].clone()
        weights[s] = 0.0  # remove s, keeping the 1/n normalisation (upweighting by -1/n)
        truth.append(risk(fit(train, weights, theta), measured_on) - risk(theta, measured_on))
    truth = np.array(truth)
    assert result.scores.dtype == np.float64
    assert _spearman(result.scores, truth) >= 0.9
    # Magnitude too (catches a wrong Hessian, damping or 1/n that would keep the ranking): slope through 0.
    assert 0.8 <= float(result.scores @ truth / (truth @ truth)) <= 1.25
    assert result.info["negative_eigenvalues"] == 0 and result.info["p"] == 12


def test_cg_and_lissa_agree_with_exact(regression: dict) -> None:
    train, theta = regression["train"], regression["theta"]
    base = InfluenceConfig(damping=MU, batch_size=16)
    exact = influence_from_loss(softmax_loss, theta, train, dataclasses.replace(base, solver="exact"), progress=False)
    cg = influence_from_loss(softmax_loss, theta, train, dataclasses.replace(base, solver="cg", cg_tol=1e-10),
                             progress=False)
    # scale above the largest damped eigenvalue; d = 0 so LiSSA solves the same H_lambda as exact.
    scale = 2 * (exact.info["max_eigenvalue"] + MU)
    lissa_cfg = dataclasses.replace(base, solver="lissa", lissa_scale=scale, lissa_damping=0.0, lissa_depth=300,
                                    lissa_batch=len(train[0]))
    lissa = influence_from_loss(softmax_loss, theta, train, lissa_cfg, progress=False)
    assert cg.info["converged"] and not cg.info["negative_curvature"]
    for other in (cg, lissa):
        assert _cosine(other.scores, exact.scores) >= 0.99
        # same size too (cosine is blind to LiSSA's division by the scale)
        assert np.linalg.norm(other.scores - exact.scores) <= 0.05 * np.linalg.norm(exact.scores)
    assert lissa.info["effective_damping"] == pytest.approx(MU) and lissa.info["lissa_growth"] < 1.01


def test_lissa_reports_slow_divergence_on_an_indefinite_hessian(caplog: pytest.LogCaptureFixture) -> None:
    """l = -theta^2 / 2 per sample: H = -1, and damping 0.5 leaves H_lambda = -0.5 < 0. Each step multiplies h by
    1 + 0.5 / scale: growth too slow for the divergence error, so it must show as not settled."""

    def loss(theta: torch.Tensor, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return -theta[0] ** 2 / 2 + 0 * batch[0]

    data = (torch.zeros(4, dtype=torch.float64),)
    cfg = InfluenceConfig(solver="lissa", damping=0.5, lissa_scale=50.0, lissa_damping=0.0, lissa_depth=200,
                          lissa_batch=4)
    theta = torch.tensor([1.0], dtype=torch.float64)
    with pytest.raises(ConfigError, match="has not converged.*strict"):
        influence_from_loss(loss, theta, data, cfg, progress=False)
    with caplog.at_level("WARNING"):
        result = influence_from_loss(loss, theta, data, dataclasses.replace(cfg, strict=False), progress=False)
    assert result.info["lissa_growth"] > 2 and "has not converged" in caplog.text
    assert result.info["solved"] is False and solve_failure(result.info)


def test_lissa_repeats_average_the_single_repeat_estimates(regression: dict) -> None:
    train, theta = regression["train"], regression["theta"]
    cfg = InfluenceConfig(solver="lissa", damping=MU, lissa_scale=10.0, lissa_damping=0.01, lissa_depth=40,
                          lissa_batch=7, seed=3)
    both = influence_from_loss(softmax_loss, theta, train, dataclasses.replace(cfg, lissa_repeats=2), progress=False)
    first = influence_from_loss(softmax_loss, theta, train, cfg, progress=False)
    second = influence_from_loss(softmax_loss, theta, train, dataclasses.replace(cfg, seed=4), progress=False)
    assert not np.allclose(first.scores, second.scores)  # the seeds really draw different minibatches
    np.testing.assert_allclose(both.scores, (first.scores + second.scores) / 2, rtol=1e-10, atol=1e-15)


def test_hessian_samples_take_h_from_a_seeded_subset(regression: dict) -> None:
    """With k samples, H is exactly the Hessian of the subset's mean loss; gradient and scores keep all n."""
    train, theta = regression["train"], regression["theta"]
    cfg = InfluenceConfig(damping=MU, hessian_samples=20, seed=1)
    sub = influence_from_loss(softmax_loss, theta, train, cfg, progress=False)
    chosen = torch.randperm(60, generator=torch.Generator().manual_seed(1))[:20].sort().values
    hess = torch.autograd.functional.hessian(lambda t: softmax_loss(t, (train[0][chosen], train[1][chosen])).mean(),
                                             theta)
    grads = torch.func.vmap(torch.func.grad(lambda t, x, y: softmax_loss(t, (x[None], y[None]))[0]),
                            in_dims=(None, 0, 0))(theta, *train)
    v = torch.linalg.solve(hess + MU * torch.eye(12, dtype=torch.float64), grads.mean(0))
    np.testing.assert_allclose(sub.scores, (grads @ v / 60).numpy(), rtol=1e-8, atol=1e-14)
    assert sub.info["hessian_n"] == 20 and sub.info["n"] == 60


def test_lissa_divergence_is_an_error(regression: dict) -> None:
    cfg = InfluenceConfig(solver="lissa", damping=MU, lissa_scale=1e-3, lissa_depth=200, lissa_batch=60)
    with pytest.raises(ConfigError, match="lissa_scale"):
        influence_from_loss(softmax_loss, regression["theta"], regression["train"], cfg, progress=False)


def test_valid_target_needs_validation_pairs(regression: dict) -> None:
    with pytest.raises(ConfigError, match="validation"):
        influence_from_loss(softmax_loss, regression["theta"], regression["train"], InfluenceConfig(target="valid"),
                            progress=False)


def test_exact_refuses_too_many_parameters(regression: dict) -> None:
    cfg = InfluenceConfig(solver="exact", exact_max_params=5)
    with pytest.raises(ConfigError, match="exact_max_params"):
        influence_from_loss(softmax_loss, regression["theta"], regression["train"], cfg, progress=False)


def test_exact_clamps_negative_curvature_and_reports_it() -> None:
    """A concave direction: l(theta) = -theta_0^2 / 2 + (theta_1 - x)^2 / 2 has Hessian diag(-1, 1)."""

    def loss(theta: torch.Tensor, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        (x,) = batch
        return -theta[0] ** 2 / 2 + (theta[1] - x) ** 2 / 2

    data = (torch.tensor([0.0, 1.0, 3.0], dtype=torch.float64),)
    theta = torch.tensor([0.5, 0.0], dtype=torch.float64)
    result = influence_from_loss(loss, theta, data, InfluenceConfig(solver="exact", damping=0.5), progress=False)
    assert result.info["negative_eigenvalues"] == 1 and result.info["min_eigenvalue"] == pytest.approx(-1.0)
    # grad R = (-0.5, -4/3); clamped H_lambda = diag(0 + 0.5, 1 + 0.5) -> v = (-1, -8/9)
    grads = np.array([[-0.5, 0.0], [-0.5, -1.0], [-0.5, -3.0]])
    np.testing.assert_allclose(result.scores, grads @ np.array([-1.0, -8 / 9]) / 3)


# ----------------------------------------------------------------------------------------------- SASRec path


@pytest.fixture(scope="module")
def sasrec() -> SASRec:
    torch.manual_seed(0)
    model = SASRec(12, hidden=8, heads=2, blocks=2, max_len=6, dropout=0.3)
    return model.eval()


def _pairs(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 7, (n,), generator=gen).tolist()
    lengths[:3] = [1, 1, 6]  # 1-item histories must work
    hist = [torch.randint(1, 13, (k,), generator=gen).tolist() for k in lengths]
    return pad_left(hist, 6), torch.randint(1, 13, (n,), generator=gen)


@pytest.mark.parametrize("spec", ["attn_out", "last_block", "all"])
def test_batched_per_sample_grads_equal_one_at_a_time_autograd(sasrec: SASRec, spec: str) -> None:
    histories, targets = _pairs(9)
    names = select_parameters(sasrec, spec)
    problem = sasrec_problem(sasrec, names)
    data = problem.data(sasrec, histories, targets, seed=0, batch_size=4)  # cached prefix for attn_out/last_block
    batched = per_sample_grads(problem.loss_fn, problem.theta, data)
    params = dict(sasrec.named_parameters())
    for i in range(len(targets)):
        sasrec.zero_grad()
        logits = sasrec.logits(sasrec(histories[i : i + 1], last_only=True))
        sample_loss(logits, targets[i : i + 1]).sum().backward()
        expected = torch.cat([params[k].grad.reshape(-1) for k in names])
        torch.testing.assert_close(batched[i], expected, atol=1e-5, rtol=1e-5)


def test_attn_out_is_the_last_blocks_output_projection_weight() -> None:
    model = SASRec(5, hidden=64, heads=2, blocks=2)
    names = select_parameters(model, "attn_out")
    assert names == ["blocks.1.attn.out_proj.weight"]
    assert sasrec_problem(model, names).theta.numel() == 4096
    assert all(n.startswith("blocks.1.") for n in select_parameters(model, "last_block"))
    assert select_parameters(model, r"final_norm") == ["final_norm.weight", "final_norm.bias"]
    with pytest.raises(ConfigError, match="matches no surrogate parameter"):
        select_parameters(model, "no_such_layer")


@pytest.mark.parametrize("solver", ["exact", "cg", "lissa"])
def test_sasrec_scores_are_finite_and_seed_deterministic(sasrec: SASRec, solver: str) -> None:
    histories, targets = _pairs(40)
    cfg = InfluenceConfig(solver=solver, damping=1.0, batch_size=16, lissa_depth=30, lissa_batch=4, seed=5)
    first = influence_scores(sasrec, histories, targets, cfg, progress=False)
    second = influence_scores(sasrec, histories, targets, cfg, progress=False)
    assert first.scores.shape == (40,) and np.isfinite(first.scores).all()
    np.testing.assert_array_equal(first.scores, second.scores)
    assert first.info["p"] == 64 and first.info["start_block"] == 1


def test_sasrec_bce_surrogate_scores_with_fixed_negatives() -> None:
    torch.manual_seed(1)
    model = SASRec(12, hidden=8, heads=2, blocks=1, max_len=6, loss="bce").eval()
    histories, targets = _pairs(20)
    cfg = InfluenceConfig(damping=1.0, seed=2)
    a = influence_scores(model, histories, targets, cfg, progress=False)
    b = influence_scores(model, histories, targets, cfg, progress=False)
    assert np.isfinite(a.scores).all() and a.info["loss"] == "bce"
    np.testing.assert_array_equal(a.scores, b.scores)


def test_score_pool_encodes_the_frame_and_supports_the_valid_target(sasrec: SASRec) -> None:
    from deft.data.types import Split

    index = ItemIndex.from_items(f"m{i:02d}" for i in range(12))
    frame = pd.DataFrame({"sample_id": ["a", "b", "c"], "history": [["m01"], ["m01", "m02"], ["m03", "m04", "m05"]],
                          "target_item": ["m02", "m03", "m06"]})
    split = Split(train={"u": ["m01", "m02", "m03"]}, valid={"u": ["m04"]}, test={"u": ["m05"]}, kind="leave_one_out")
    assert validation_pairs(split) == ([["m01", "m02", "m03"]], ["m04"])
    result = score_pool(sasrec, index, frame, InfluenceConfig(target="valid", damping=1.0),
                        valid=validation_pairs(split), progress=False)
    out = result.to_frame()
    assert out["sample_id"].tolist() == ["a", "b", "c"] and np.isfinite(out["influence"]).all()
    assert result.info["description"] == INFLUENCE_DESCRIPTION and result.info["target"] == "valid"
    losses = pool_losses(sasrec, index, frame)
    assert losses.shape == (3,) and np.isfinite(losses).all()
    bad = frame.assign(target_item=["m02", "zz", "m06"])
    with pytest.raises(Exception, match="'zz'.*sample 'b'"):
        score_pool(sasrec, index, bad, InfluenceConfig(), progress=False)


def _concave(theta: torch.Tensor, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """H = diag(-1, 1): damping 0.5 leaves H_lambda indefinite along theta_0."""
    (x,) = batch
    return -theta[0] ** 2 / 2 + (theta[1] - x) ** 2 / 2


CONCAVE_DATA = (torch.tensor([0.0, 1.0, 3.0], dtype=torch.float64),)
CONCAVE_THETA = torch.tensor([0.5, 0.0], dtype=torch.float64)


def test_cg_on_an_indefinite_hessian_is_an_error_unless_not_strict(caplog: pytest.LogCaptureFixture) -> None:
    cfg = InfluenceConfig(solver="cg", damping=0.5)
    with pytest.raises(ConfigError, match=r"non-positive curvature.*influence\.damping"):
        influence_from_loss(_concave, CONCAVE_THETA, CONCAVE_DATA, cfg, progress=False)
    with caplog.at_level("WARNING"):
        result = influence_from_loss(_concave, CONCAVE_THETA, CONCAVE_DATA, dataclasses.replace(cfg, strict=False),
                                     progress=False)
    assert result.info["negative_curvature"] and not result.info["converged"] and result.info["solved"] is False
    assert "non-positive curvature" in caplog.text and np.isfinite(result.scores).all()


def test_cg_that_runs_out_of_iterations_is_an_error(regression: dict) -> None:
    cfg = InfluenceConfig(solver="cg", damping=MU, cg_tol=1e-12, cg_max_iter=1)
    with pytest.raises(ConfigError, match="not converged after `influence.cg_max_iter` = 1"):
        influence_from_loss(softmax_loss, regression["theta"], regression["train"], cfg, progress=False)


def test_a_zero_mean_gradient_is_an_error_not_all_zero_scores() -> None:
    """At the exact minimum of R every score is 0, and a combined score would silently lose its influence term."""
    data = (torch.tensor([1.0, 3.0], dtype=torch.float64),)
    theta = torch.tensor([2.0], dtype=torch.float64)  # the mean of the data: grad R = 0

    def loss(t: torch.Tensor, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return (t[0] - batch[0]) ** 2 / 2

    for solver in ("exact", "cg", "lissa"):
        with pytest.raises(ConfigError, match="exactly zero"):
            influence_from_loss(loss, theta, data, InfluenceConfig(solver=solver), progress=False)
