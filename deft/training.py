"""LoRA fine-tuning of the target LLM (algorithms.md §8): a plain, resumable training loop.

Layout of ``out_dir``::

    adapter/            the best adapter so far (peft ``save_pretrained``: adapter weights and config only)
    checkpoint/         the last resume point (each evaluation, and every ``checkpoint_every_s`` seconds inside an
                        epoch): adapter.safetensors, optimizer.safetensors (moments, steps and RNG states),
                        state.json (step, position, scheduler, early-stopping state, log)
    train_log.json      one entry per optimizer step: loss, lr, wall time, samples/s, validation loss if any
    loss_curve.png      training and validation loss against steps
    train_result.json   written last: the fingerprint and the :class:`TrainResult` of a finished training

A second call with the same fingerprint returns the finished result, or resumes from ``checkpoint/``; a
different fingerprint is an :class:`ArtifactMismatchError` unless ``overwrite``. Nothing is pickled.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from deft.artifacts import (
    atomic_dir,
    atomic_path,
    existing_dir,
    fingerprint,
    frame_fingerprint,
    machine_label,
    read_json,
    save_safetensors,
    with_code,
    write_json,
)
from deft.config import LoraConfig, TrainingConfig, to_dict
from deft.data.encoding import (
    IGNORE_INDEX,
    Encoded,
    check_context,
    context_limit,
    encode_pair,
    length_sorted_batches,
    pad_batch,
)
from deft.data.prompts import render_prompt
from deft.errors import ArtifactMismatchError, DataFormatError, OutputExistsError, TrainingDivergedError

if TYPE_CHECKING:
    from deft.models import LoadedModel

log = logging.getLogger(__name__)

FRAME_COLUMNS = ("instruction", "input", "output")
MEGABATCH = 50  # batches per length-sorted group: enough mixing for SGD, still little padding


@dataclass
class TrainResult:
    adapter_dir: Path
    best_valid_loss: float | None  # None when trained without validation data
    epochs_run: int
    steps: int
    wall_s: float
    samples_per_s: float  # training samples (with repeats over epochs) per second of wall time
    log_path: Path
    # epochs trained when the kept adapter was saved (fractional when validating inside an epoch): what the
    # early stopping found the data needed, while epochs_run includes the patience that confirmed it
    best_epoch: float | None = None
    # where each session of a training resumed over several ran: {"step", "wall_s", "machine"} at its start.
    # A training carried between machines mixes their speeds in wall_s; this says how. None: not recorded.
    sessions: list[dict[str, Any]] | None = None


# ----------------------------------------------------------------------------------------------- data


def encode_frame(tokenizer, frame: pd.DataFrame, loss_on: str = "response",
                 limit: int | None = None, what: str = "samples") -> list[Encoded]:
    """Prompt + response + EOS token ids of every row, labels masked per ``loss_on``; a row longer than
    ``limit`` tokens (the model's context) is an error naming its sample_id (its position without one)."""
    missing = [c for c in FRAME_COLUMNS if c not in frame.columns]
    if missing:
        raise DataFormatError(f"training samples lack columns {missing} (need {list(FRAME_COLUMNS)})")
    encoded = [encode_pair(tokenizer, render_prompt(i, x), str(o), loss_on)
               for i, x, o in zip(frame["instruction"], frame["input"], frame["output"], strict=True)]
    ids = frame["sample_id"].tolist() if "sample_id" in frame.columns else list(range(len(frame)))
    check_context(encoded, ids, limit, what)
    return encoded


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Length-grouped batches in a seeded random order, a pure function of (seed, epoch).

    Shuffle, cut into megabatches of ``MEGABATCH`` batches, sort each by length, cut into batches, shuffle
    the batches: little padding, yet every epoch sees new neighbours. Being a pure function of the epoch is
    what makes resuming exact: no generator state needs saving.
    """
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(len(lengths), generator=gen).tolist()
    span = batch_size * MEGABATCH
    batches = []
    for start in range(0, len(order), span):
        chunk = order[start : start + span]
        for b in length_sorted_batches([lengths[i] for i in chunk], batch_size):
            batches.append([chunk[j] for j in b])
    return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]


def _target_count(e: Encoded) -> int:
    """Tokens that carry a loss: labels after the one-token shift of next-token prediction."""
    return sum(1 for label in e.labels[1:] if label != IGNORE_INDEX)


# ----------------------------------------------------------------------------------------------- loss


def label_token_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over positions whose label is not -100, and their number.

    Runs the decoder, gathers the hidden states at those positions and applies the LM head only there: with
    response-only loss that is a few dozen rows instead of batch x length x vocabulary logits. Equals the
    model's own loss (times the token count) for models whose head is a plain projection (Llama, Qwen,
    SmolLM, GPT-2...); models that post-process logits (soft-capping, scaling) are not covered.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = base.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])[0]
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE_INDEX
    logits = base.get_output_embeddings()(hidden[:, :-1][keep])
    return F.cross_entropy(logits.float(), labels[keep], reduction="sum"), int(keep.sum())


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def mean_loss(loaded: LoadedModel, model: torch.nn.Module, encoded: list[Encoded], batch_size: int) -> float:
    """Token-weighted mean loss of ``encoded`` in eval mode (no dropout), e.g. the validation loss."""
    from deft.models import autocast

    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    pad = loaded.tokenizer.pad_token_id
    for b in length_sorted_batches([len(e.input_ids) for e in encoded], batch_size):
        with autocast(loaded):
            loss, n = label_token_loss(model, _to(pad_batch([encoded[i] for i in b], pad), loaded.device))
        total, tokens = total + float(loss), tokens + n
    model.train(was_training)
    return total / max(tokens, 1)


# ----------------------------------------------------------------------------------------------- schedule


def lr_factor(step: int, warmup: int, total: int, schedule: str) -> float:
    """Multiplier of the base lr at ``step``: linear warm-up to 1, then linear or cosine decay to 0."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress


# ----------------------------------------------------------------------------------------------- saving


def save_adapter(model: Any, dest: Path) -> None:
    """peft ``save_pretrained`` (adapter weights and config only) into ``dest``, atomically."""
    with atomic_dir(dest) as tmp:
        model.save_pretrained(str(tmp))


def _rng_tensors() -> dict[str, torch.Tensor]:
    out = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        out.update({f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return out


def _save_checkpoint(dest: Path, model: Any, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Adapter, optimizer moments and RNG states as safetensors, everything else as JSON, atomically."""
    from peft import get_peft_model_state_dict

    opt = optimizer.state_dict()
    tensors = {f"state.{idx}.{name}": value for idx, entry in opt["state"].items() for name, value in entry.items()}
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in opt["param_groups"]]
    with atomic_dir(dest) as tmp:
        save_safetensors(tmp / "adapter.safetensors", get_peft_model_state_dict(model))
        save_safetensors(tmp / "optimizer.safetensors", {**tensors, **_rng_tensors()})
        write_json(tmp / "state.json", {**state, "param_groups": groups})


def _load_checkpoint(src: Path, model: Any, optimizer: torch.optim.Optimizer,
                     device: torch.device) -> dict[str, Any]:
    """Restore adapter weights, optimizer and RNG states saved by :func:`_save_checkpoint`; return the state."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(src / "adapter.safetensors"), device=str(device)))
    tensors = load_file(str(src / "optimizer.safetensors"))
    state = read_json(src / "state.json")
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("state."):
            _, idx, name = key.split(".", 2)
            opt_state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": opt_state, "param_groups": state.pop("param_groups")})
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    return state


def plot_losses(entries: list[dict[str, Any]], path: Path) -> None:
    """Training loss per step and validation loss per evaluation, as a PNG (matplotlib's Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([e["step"] for e in entries], [e["loss"] for e in entries], lw=1, label="train")
    valid = [e for e in entries if e.get("valid_loss") is not None]
    if valid:
        ax.plot([e["step"] for e in valid], [e["valid_loss"] for e in valid], "o-", label="validation")
    ax.set(xlabel="optimizer step", ylabel="loss (mean token cross-entropy)")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------- the loop


def training_fingerprint(loaded: LoadedModel, train: pd.DataFrame, valid: pd.DataFrame | None,
                         lora_cfg: LoraConfig, train_cfg: TrainingConfig) -> str:
    return fingerprint(with_code({"model": loaded.fingerprint, "train": frame_fingerprint(train[list(FRAME_COLUMNS)]),
                                  "valid": None if valid is None else frame_fingerprint(valid[list(FRAME_COLUMNS)]),
                                  "lora": to_dict(lora_cfg), "training": train_cfg.result_settings(),
                                  **loaded.numerics_key()}, "training"))


def _result_from_json(out_dir: Path, saved: dict[str, Any]) -> TrainResult:
    best = saved["best_epoch"] if "best_epoch" in saved else best_epoch_from_log(
        out_dir / "train_log.json", saved["steps"] / max(1, saved["epochs_run"]))
    return TrainResult(out_dir / "adapter", saved["best_valid_loss"], saved["epochs_run"], saved["steps"],
                       saved["wall_s"], saved["samples_per_s"], out_dir / "train_log.json", best,
                       saved.get("sessions"))


def best_epoch_from_log(log_path: Path, steps_per_epoch: float) -> float | None:
    """The kept adapter's epoch read back from the training log: the step of the first lowest validation loss.
    For results saved before ``best_epoch`` was recorded; None where the log or its validation entries are
    missing."""
    if not log_path.is_file():
        return None
    best_step, best_loss = None, float("inf")
    for entry in read_json(log_path):
        if entry.get("valid_loss") is not None and entry["valid_loss"] < best_loss:
            best_step, best_loss = entry["step"], entry["valid_loss"]
    return None if best_step is None else round(best_step / steps_per_epoch, 2)


def finished_best_epoch(out_dir: str | Path) -> float | None:
    """``best_epoch`` of the finished training run in ``out_dir`` (recorded, or read back from its log)."""
    out_dir = Path(out_dir)
    return _result_from_json(out_dir, read_json(out_dir / "train_result.json")).best_epoch


def checkpoint_wall_s(out_dir: str | Path) -> float | None:
    """Training seconds the resumable checkpoint in ``out_dir`` holds; None without one."""
    ckpt = existing_dir(Path(out_dir) / "checkpoint")
    return None if ckpt is None else float(read_json(ckpt / "state.json").get("wall_s", 0.0))


STARTED = "train_started.json"  # claims the directory for a fingerprint before anything else is written
OUTPUTS = ("adapter", "adapter.old", "train_log.json", "loss_curve.png")


def _previous_run(out_dir: Path, fp: str, overwrite: bool) -> tuple[TrainResult | None, Path | None]:
    """(finished result, checkpoint to resume) for this fingerprint; a different one is an error, and so are
    outputs of ours (an adapter, a log) that no run of ours claims, unless ``overwrite``."""
    done, ckpt, started = out_dir / "train_result.json", existing_dir(out_dir / "checkpoint"), out_dir / STARTED
    found = read_json(done)["fingerprint"] if done.is_file() else None
    if found is None and ckpt is not None:
        found = read_json(ckpt / "state.json")["fingerprint"]
    if found is None and started.is_file():  # killed before its first checkpoint
        found = read_json(started)["fingerprint"]
    if found is None:
        foreign = [n for n in OUTPUTS if (out_dir / n).exists()]
        if foreign and not overwrite:
            raise OutputExistsError(f"{out_dir} holds {', '.join(foreign)} from no training of DEFT's; use "
                                    "--overwrite to replace them or choose another --out", file=out_dir)
        _remove(out_dir, foreign)
        return None, None
    if found != fp:
        if not overwrite:
            raise ArtifactMismatchError(f"{out_dir} holds a training with fingerprint {found}, these inputs and "
                                        f"settings give {fp}; use --overwrite or another output directory")
        _remove(out_dir, ("train_result.json", "checkpoint", "checkpoint.old", STARTED, *OUTPUTS))
        return None, None
    if done.is_file() and (out_dir / "adapter").is_dir():
        return _result_from_json(out_dir, read_json(done)), None
    return None, ckpt


def _remove(out_dir: Path, names: Sequence[str]) -> None:
    for name in names:
        p = out_dir / name
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)


def _check_finite(which: str, loss: float, st: dict[str, Any], cfg: TrainingConfig) -> None:
    """Stop at the first non-finite loss with what to change, instead of training on (a NaN step makes every
    weight NaN) or keeping a NaN adapter as the best (no later loss compares lower than NaN)."""
    if not math.isfinite(loss):
        raise TrainingDivergedError(f"the {which} loss is {loss} at optimizer step {st['step']}: "
                                    f"fine-tuning diverged; lower training.lr (now {cfg.lr}) or raise "
                                    f"training.warmup_ratio (now {cfg.warmup_ratio})")


def _best_epoch(st: dict[str, Any], steps_per_epoch: int) -> float | None:
    """Epochs behind the kept adapter: the best validation step's, or every step's without validation. None for
    a run resumed from a checkpoint written before this was recorded."""
    step = st["step"] if st["best_valid_loss"] is None else st.get("best_step")
    return None if step is None else round(step / steps_per_epoch, 2)


def train_lora(loaded: LoadedModel, train: pd.DataFrame, valid: pd.DataFrame | None, lora_cfg: LoraConfig,
               train_cfg: TrainingConfig, out_dir: str | Path, progress: bool = True,
               overwrite: bool = False) -> TrainResult:
    """Fine-tune fresh LoRA adapters on ``train`` (columns instruction, input, output); keep the best adapter.

    Validation loss (token-weighted, on at most ``valid_samples`` rows of ``valid``, chosen with the seed) is
    measured every ``eval_every`` optimizer steps (0: each epoch) and once more at the end; training stops
    after ``patience`` evaluations without improvement. Without ``valid`` the last adapter is kept. The base
    weights are frozen, and the adapters are removed from ``loaded.model`` before returning.
    """
    from tqdm.auto import tqdm

    from deft.models import attach_lora, autocast, detach_lora

    out_dir = Path(out_dir)
    cfg = train_cfg
    fp = training_fingerprint(loaded, train, valid, lora_cfg, cfg)
    finished, resume_from = _previous_run(out_dir, fp, overwrite)
    if finished is not None:
        log.info("training in %s is up to date (fingerprint %s)", out_dir, fp)
        return finished
    if len(train) == 0:
        raise DataFormatError("no training samples")

    # encoded (and their lengths checked) before the directory is claimed: a refused sample leaves nothing
    # that would make the corrected run a mismatch
    tok, limit = loaded.tokenizer, context_limit(loaded.model)
    encoded = encode_frame(tok, train, cfg.loss_on, limit, what="training samples")
    lengths = [len(e.input_ids) for e in encoded]
    targets = [_target_count(e) for e in encoded]
    valid_encoded = None
    if valid is not None and len(valid):
        rows = np.arange(len(valid))
        if len(valid) > cfg.valid_samples:
            rows = np.sort(np.random.default_rng(cfg.seed).choice(len(valid), cfg.valid_samples, replace=False))
        valid_encoded = encode_frame(tok, valid.iloc[rows], cfg.loss_on, limit, what="validation samples")
    if resume_from is None:
        write_json(out_dir / STARTED, {"fingerprint": fp})

    n_batches = math.ceil(len(encoded) / cfg.batch_size)
    steps_per_epoch = math.ceil(n_batches / cfg.grad_accum)
    total_steps = steps_per_epoch * cfg.epochs
    warmup = math.ceil(cfg.warmup_ratio * total_steps)
    eval_every = cfg.eval_every or steps_per_epoch

    torch.manual_seed(cfg.seed)  # LoRA dropout draws from the global generator
    model = attach_lora(loaded, lora_cfg, cfg.seed)
    try:
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_factor(s, warmup, total_steps, cfg.schedule))
        # Everything the loop needs to continue exactly where a checkpoint left it.
        st: dict[str, Any] = {"fingerprint": fp, "step": 0, "epoch": 0, "next_batch": 0, "best_valid_loss": None,
                              "bad_evals": 0, "stopped": False, "wall_s": 0.0, "samples": 0, "log": []}
        if resume_from is not None:
            st = _load_checkpoint(resume_from, model, optimizer, loaded.device)
            scheduler.load_state_dict(st.pop("scheduler"))
            log.info("resuming %s from step %d", out_dir, st["step"])
        st.setdefault("sessions", []).append({"step": st["step"], "wall_s": round(st["wall_s"], 3),
                                              "machine": machine_label()})
        model.train()
        bar = tqdm(total=total_steps, initial=st["step"], desc="train", disable=not progress)
        t0 = time.perf_counter() - st["wall_s"]  # wall time accumulates over resumed sessions
        last_t, last_samples = time.perf_counter(), st["samples"]

        def checkpoint() -> None:
            nonlocal last_checkpoint
            st["wall_s"] = time.perf_counter() - t0
            _save_checkpoint(out_dir / "checkpoint", model, optimizer,
                             {**st, "scheduler": scheduler.state_dict()})
            write_json(out_dir / "train_log.json", st["log"])
            last_checkpoint = time.perf_counter()

        def evaluate_and_checkpoint() -> None:
            """Validation loss, best adapter, early-stopping bookkeeping, then a resumable checkpoint."""
            entry = st["log"][-1] if st["log"] else None
            if valid_encoded is not None:
                loss = mean_loss(loaded, model, valid_encoded, cfg.batch_size * 2)
                _check_finite("validation", loss, st, cfg)  # a NaN would never compare better, nor worse
                if entry is not None:
                    entry["valid_loss"] = loss
                if st["best_valid_loss"] is None or loss < st["best_valid_loss"]:
                    st["best_valid_loss"], st["bad_evals"], st["best_step"] = loss, 0, st["step"]
                    save_adapter(model, out_dir / "adapter")
                else:
                    st["bad_evals"] += 1
                    st["stopped"] = st["bad_evals"] >= cfg.patience
                log.info("step %d: validation loss %.4f (best %.4f)", st["step"], loss, st["best_valid_loss"])
            else:
                save_adapter(model, out_dir / "adapter")
            checkpoint()

        last_checkpoint = time.perf_counter()
        while st["epoch"] < cfg.epochs and not st["stopped"]:
            batches = epoch_batches(lengths, cfg.batch_size, cfg.seed, st["epoch"])
            for first in range(st["next_batch"], len(batches), cfg.grad_accum):
                group = batches[first : first + cfg.grad_accum]
                # Normalise by the group's token count so accumulation equals one big batch exactly.
                tokens = max(1, sum(targets[i] for b in group for i in b))
                step_loss = 0.0
                for b in group:
                    batch = _to(pad_batch([encoded[i] for i in b], tok.pad_token_id), loaded.device)
                    with autocast(loaded):
                        loss_sum, _ = label_token_loss(model, batch)
                    (loss_sum / tokens).backward()
                    step_loss += loss_sum.item() / tokens
                _check_finite("training", step_loss, st, cfg)  # before the step spreads it into the weights
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                lr = scheduler.get_last_lr()[0]
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                st["step"] += 1
                st["next_batch"] = first + cfg.grad_accum
                st["samples"] += sum(len(b) for b in group)
                now = time.perf_counter()
                st["log"].append({"step": st["step"], "epoch": st["epoch"], "loss": step_loss, "lr": lr,
                                  "wall_s": round(now - t0, 3),
                                  "samples_per_s": (st["samples"] - last_samples) / max(now - last_t, 1e-9)})
                last_t, last_samples = now, st["samples"]
                bar.update(1)
                bar.set_postfix(loss=f"{step_loss:.3f}")
                end_of_epoch = st["next_batch"] >= len(batches)
                if end_of_epoch:
                    st["epoch"], st["next_batch"] = st["epoch"] + 1, 0
                if st["step"] % eval_every == 0 or (end_of_epoch and st["epoch"] == cfg.epochs):
                    evaluate_and_checkpoint()
                elif cfg.checkpoint_every_s and time.perf_counter() - last_checkpoint >= cfg.checkpoint_every_s:
                    checkpoint()  # a resume point inside a long epoch: an interruption loses minutes, not the epoch
                if st["stopped"] or end_of_epoch:
                    break
        bar.close()
        wall = time.perf_counter() - t0
        result = TrainResult(out_dir / "adapter", st["best_valid_loss"], st["epoch"] + (st["next_batch"] > 0),
                             st["step"], round(wall, 3), st["samples"] / max(wall, 1e-9),
                             out_dir / "train_log.json", _best_epoch(st, steps_per_epoch), st["sessions"])
    finally:
        detach_lora(model)
    write_json(out_dir / "train_log.json", st["log"])
    plot_losses(st["log"], out_dir / "loss_curve.png")
    write_json(out_dir / "train_result.json", {"fingerprint": fp, "done": True, **asdict(result)})
    shutil.rmtree(out_dir / "checkpoint", ignore_errors=True)  # a finished run needs no resume point
    (out_dir / STARTED).unlink(missing_ok=True)  # train_result.json claims the directory now
    log.info("trained %d steps in %.1f s; best validation loss %s", result.steps, wall, result.best_valid_loss)
    return result
