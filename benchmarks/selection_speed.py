"""Time DEALRec selection over a large pool of random scores (target: 1M scores in under 1 s).

Run from the repository root:
    python benchmarks/selection_speed.py            # 1M scores, budget 1,024, median of 5
    python benchmarks/selection_speed.py --n 97000 --budget 1024

Prints the timings and writes benchmarks/results/selection-speed.md with the command, date and machine.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from deft.artifacts import machine_info, package_versions, write_text
from deft.report import markdown_table
from deft.selection import coverage_select, select, selection_score

RESULT = Path(__file__).resolve().parent / "results" / "selection-speed.md"


def median_seconds(fn: Callable[[], object], repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="pool size (number of scores)")
    ap.add_argument("--budget", type=int, default=1024)
    ap.add_argument("--strata", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=RESULT)
    args = ap.parse_args(argv)

    rng = np.random.default_rng(0)
    scores = {"influence": rng.normal(size=args.n), "effort": rng.gamma(2.0, size=args.n)}
    combined = selection_score("dealrec", scores)
    select("dealrec", scores, args.budget, strata=args.strata)  # warm-up: first-call allocations, imports

    cases = {
        "select('dealrec'): combine (minmax + lambda * minmax) + coverage selection":
            lambda: select("dealrec", scores, args.budget, strata=args.strata, lambda_=0.5),
        "coverage_select on a precomputed score":
            lambda: coverage_select(combined, args.budget, strata=args.strata),
        "select('random') (reference)": lambda: select("random", scores, args.budget),
    }
    rows = []
    for name, fn in cases.items():
        med, times = median_seconds(fn, args.repeats)
        rows.append((name, f"{med:.3f}", ", ".join(f"{t:.3f}" for t in times)))
        print(f"{name}: median {med:.3f} s over {args.repeats} runs")

    machine = machine_info()
    command = "python benchmarks/selection_speed.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    text = "\n\n".join([
        "# Selection speed",
        f"Command: `{command.strip()}`  \nDate: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}  \n"
        f"Machine: {machine['cpu']}, {machine['cores']} cores visible, {machine['platform']}, "
        f"Python {machine['python']}, numpy {package_versions().get('numpy', np.__version__)}",
        f"Pool: {args.n:,} random scores (influence ~ N(0, 1), effort ~ Gamma(2)); budget {args.budget:,}; "
        f"{args.strata} strata; hard prune 0.1; median of {args.repeats} runs after one warm-up.",
        markdown_table(["what", "median s", "runs (s)"], rows),
        "Target (benchmark.md): selection over 1M scores in under 1 s.",
    ]) + "\n"
    write_text(args.out, text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
