"""Surrogate and influence cost on MovieLens-100K (benchmark.md: influence for the ~97K pool in < 60 s on 2 cores).

    python benchmarks/influence_speed.py --stride 1 --threads 2 --out benchmarks/results/influence-ml100k.md

Trains SASRec with the default SurrogateConfig (leave-one-out split), then scores the sliding-window pool with
each solver and records wall time, peak memory (deft.artifacts.measure) and solver statistics, plus Spearman
correlations between variants (attn_out vs last_block, train vs valid target, solvers, damping). The exact
solver's full-pool cost is extrapolated from a run whose Hessian uses ``--exact-hessian`` samples, because it
is p = 4,096 full-data HVPs (see the report). Writes a Markdown report with the command, date and machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from deft.artifacts import machine_info, measure, package_versions, write_text
from deft.config import DataConfig, InfluenceConfig, PromptConfig, SamplesConfig, SurrogateConfig
from deft.data.loaders import load_interactions
from deft.data.samples import build_samples
from deft.data.splits import split_interactions
from deft.scores.influence import (
    PoolHessian,
    influence_scores,
    sasrec_problem,
    select_parameters,
    validation_pairs,
)
from deft.surrogate import encode_item_pairs, load_surrogate, train_surrogate

log = logging.getLogger("influence_speed")
INFO_KEYS = ("p", "hessian_n", "gradient_norm", "ihvp_norm", "lissa_growth", "hvp_calls", "iterations", "converged", "negative_curvature", "relative_residual",
             "negative_eigenvalues", "min_eigenvalue", "max_eigenvalue", "effective_damping", "hessian_s", "eigh_s", "prefix_s",
             "gradient_s", "solve_s", "scores_s")


def spearman(a, b) -> float:
    return float(pd.Series(a).rank().corr(pd.Series(b).rank()))


def surrogate_for(split, args) -> tuple:
    """Train SASRec (saved to --surrogate when given), or reuse the one saved there by an earlier run."""
    if args.surrogate and (Path(args.surrogate) / "surrogate.json").is_file():
        model, index, meta = load_surrogate(args.surrogate)
        rep = meta["report"]
        log.info("reusing the surrogate in %s", args.surrogate)
        return model, index, {"sasrec": rep["test"], "popularity": rep["popularity"], "train_s": rep["train_s"],
                              "peak_mb": float("nan"), "best_epoch": rep["best_epoch"], "epochs_run": rep["epochs_run"]}
    with measure() as cost:
        model, index, rep = train_surrogate(split, SurrogateConfig(max_epochs=args.max_epochs), out_dir=args.surrogate,
                                            progress=True)
    return model, index, {"sasrec": rep.test, "popularity": rep.popularity, "train_s": cost.wall_s,
                          "peak_mb": cost.peak_mb, "best_epoch": rep.best_epoch, "epochs_run": rep.epochs_run}


def full_hvp_seconds(model, pairs, cfg: InfluenceConfig) -> float:
    """Wall time of one Hessian-vector product over the whole pool (what each cg iteration costs)."""
    problem = sasrec_problem(model, select_parameters(model, cfg.params))
    data = problem.data(model, *pairs, cfg.seed, cfg.batch_size)
    op = PoolHessian(problem.loss_fn, problem.theta, data, cfg.batch_size, cfg.damping)
    start = time.perf_counter()
    op.matvec(torch.ones(problem.theta.numel(), dtype=torch.float64))
    return time.perf_counter() - start


def variants(args) -> dict[str, InfluenceConfig]:
    # Pinned, not taken from the config defaults (which may change): each variant's label states its settings.
    # strict off: the study reports the solves that fail (non-positive curvature) instead of stopping at them.
    base = InfluenceConfig(solver="exact", damping=0.01, hessian_samples=0, strict=False)
    # parity: d 0.01, scale 25, depth 5000, batch 1 -> effective damping 0.01 + 0.01 * 25 = 0.26
    parity = dataclasses.replace(base, solver="lissa", lissa_depth=args.lissa_depth)
    cg = dataclasses.replace(base, solver="cg", cg_tol=1e-4, cg_max_iter=200, hessian_samples=args.cg_hessian)
    return {
        "lissa parity, attn_out": parity,
        "lissa parity, last_block": dataclasses.replace(parity, params="last_block"),
        "lissa parity, attn_out, valid target": dataclasses.replace(parity, target="valid"),
        "lissa d=0.02 (eff. 0.51), last_block": dataclasses.replace(parity, params="last_block", lissa_damping=0.02),
        "cg 0.26, attn_out, full H": dataclasses.replace(cg, damping=0.26, hessian_samples=0),
        "cg 0.26, attn_out, H sample": dataclasses.replace(cg, damping=0.26),
        "cg 0.26, last_block, H sample": dataclasses.replace(cg, damping=0.26, params="last_block"),
        "cg 0.5, attn_out, H sample": dataclasses.replace(cg, damping=0.5),
        "cg 0.5, last_block, H sample": dataclasses.replace(cg, damping=0.5, params="last_block"),
        "cg 0.01, attn_out, H sample": cg,
        "exact 0.01, attn_out, H sample": dataclasses.replace(base, solver="exact", hessian_samples=args.exact_hessian),
    }


COMPARE = [  # (a, b, what the Spearman correlation of their scores tells)
    ("cg 0.5, attn_out, H sample", "cg 0.5, last_block, H sample", "attn_out vs last_block (cg, damping 0.5: both converged)"),
    ("lissa parity, attn_out", "lissa parity, last_block", "attn_out vs last_block (lissa parity: last_block not converged)"),
    ("lissa d=0.02 (eff. 0.51), last_block", "cg 0.5, last_block, H sample", "last_block: lissa (eff. 0.51) vs cg 0.5"),
    ("lissa parity, attn_out", "lissa parity, attn_out, valid target", "train vs valid target (lissa parity, attn_out)"),
    ("lissa parity, attn_out", "cg 0.26, attn_out, full H", "attn_out: lissa parity vs cg at its effective damping 0.26"),
    ("cg 0.26, attn_out, full H", "cg 0.26, attn_out, H sample", "attn_out, cg 0.26: full-pool H vs H on a sample"),
    ("cg 0.26, attn_out, H sample", "cg 0.5, attn_out, H sample", "attn_out, cg: damping 0.26 vs 0.5"),
    ("exact 0.01, attn_out, H sample", "cg 0.26, attn_out, full H", "attn_out: exact 0.01 (256-sample H, clamped) vs cg 0.26"),
]


def run_variants(model, pairs, valid, args) -> tuple[dict, dict]:
    results, rows = {}, {}
    for name, cfg in variants(args).items():
        log.info("running %s", name)
        with measure() as cost:
            result = influence_scores(model, *pairs, cfg, valid if cfg.target == "valid" else None, progress=True)
        results[name] = result.scores
        rows[name] = {"wall_s": cost.wall_s, "peak_mb": cost.peak_mb,
                      **{k: result.info[k] for k in INFO_KEYS if k in result.info}}
        log.info("%s: %s", name, rows[name])
    return results, rows


def correlations(results: dict) -> list[tuple[str, float]]:
    return [(label, spearman(results[a], results[b])) for a, b, label in COMPARE]


def report(args, surrogate: dict, n_pool: int, rows: dict, corr: list, hvp_s: float, load: str) -> str:
    exact_name = "exact 0.01, attn_out, H sample"
    hess_s, eigh_s = rows[exact_name]["hessian_s"], rows[exact_name]["eigh_s"]
    lines = [
        "# Influence on MovieLens-100K: surrogate, solvers, cost", "",
        f"Command: `python benchmarks/influence_speed.py {' '.join(sys.argv[1:])}`  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M')}  ",
        f"Machine: {machine_info()}  ",
        f"torch threads: {torch.get_num_threads()}; load average at start: {load} (the 2 cores are shared)  ",
        f"Packages: {package_versions()}", "",
        "## SASRec surrogate (default SurrogateConfig, leave-one-out, full ranking, history not excluded)", "",
        "| model | R@10 | N@10 | R@20 | N@20 |", "|---|---|---|---|---|",
    ]
    for name in ("sasrec", "popularity"):
        m = surrogate[name]
        lines.append(f"| {name} | {m['recall@10']:.4f} | {m['ndcg@10']:.4f} | {m['recall@20']:.4f} | {m['ndcg@20']:.4f} |")
    lines += ["", f"Training: {surrogate['train_s']:.1f} s wall ({surrogate['peak_mb']:.0f} MB peak), best epoch "
              f"{surrogate['best_epoch']} of {surrogate['epochs_run']}.", "",
              f"## Influence for the pool (stride {args.stride}: {n_pool:,} samples)", "",
              f"Variants: solver, damping, theta, target (train unless said); \"H sample\" = `hessian_samples` "
              f"{args.cg_hessian} for cg, {args.exact_hessian} for exact.", "",
              "| variant | wall s | peak MB | details |", "|---|---|---|---|"]
    for name, row in rows.items():
        details = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                            if k not in ("wall_s", "peak_mb"))
        lines.append(f"| {name} | {row['wall_s']:.1f} | {row['peak_mb']:.0f} | {details} |")
    lines += ["", f"One full-pool Hessian-vector product (attn_out): {hvp_s:.1f} s (the cost of each cg iteration "
              "without `hessian_samples`).",
              f"Exact over the full pool, extrapolated: forming H took {hess_s:.1f} s for {args.exact_hessian} samples "
              f"(p = 4,096 HVPs), so about {hess_s * n_pool / args.exact_hessian / 3600:.1f} h for {n_pool:,}, plus "
              f"{eigh_s:.1f} s for the eigendecomposition.", "",
              "## Spearman correlations of the scores", "", "| pair | Spearman |", "|---|---|"]
    lines += [f"| {label} | {value:.3f} |" for label, value in corr]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stride", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cg-hessian", type=int, default=8192, help="hessian_samples for the cg runs")
    parser.add_argument("--exact-hessian", type=int, default=256, help="hessian_samples for the exact run")
    parser.add_argument("--max-epochs", type=int, default=SurrogateConfig().max_epochs)
    parser.add_argument("--lissa-depth", type=int, default=InfluenceConfig().lissa_depth)
    parser.add_argument("--surrogate", default=None, help="directory: save the trained surrogate, or reuse it")
    parser.add_argument("--out", default="benchmarks/results/influence-ml100k.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())

    data_cfg = DataConfig()
    inter = load_interactions(data_cfg)
    split = split_interactions(inter, data_cfg)
    pool = build_samples(split, inter.titles, SamplesConfig(stride=args.stride), PromptConfig())
    model, index, surrogate = surrogate_for(split, args)
    log.info("surrogate: %s", surrogate)
    pairs = encode_item_pairs(index, pool["history"].tolist(), pool["target_item"].tolist(), model.max_len)
    vh, vt = validation_pairs(split)
    valid = encode_item_pairs(index, vh, vt, model.max_len)
    hvp_s = full_hvp_seconds(model, pairs, InfluenceConfig())
    results, rows = run_variants(model, pairs, valid, args)
    text = report(args, surrogate, len(pool), rows, correlations(results), hvp_s, load)
    write_text(Path(args.out), text)
    log.info("wrote %s\n%s", args.out, text)


if __name__ == "__main__":
    main()
