"""Effort score (algorithms.md §4): how hard the target LLM must work to fit a sample.

    effort(s) = ‖∇φ ℓ(s)‖₂

ℓ(s) is the mean token cross-entropy over the sample's response tokens (``loss_on="response"``, default) or over
all its tokens (``"prompt"``, the reference's choice); φ are LoRA B matrices of a freshly attached LoRA (all of
them, only the last layer's v_proj, or those whose parameter name matches a regex). The model is in eval mode,
so LoRA dropout is off.

Per-sample norms come from one batched forward and backward, without per-sample gradients of the whole model:
for a LoRA B matrix (out × r) the gradient of sample s is Σ_t g_t a_tᵀ, where a_t is the B module's input
(the LoRA A output) and g_t the gradient of the loss w.r.t. the B module's output at token t (the LoRA scaling
sits after B, so it is inside g_t). Each sample's r × out gradient is ``einsum(a_s, g_s)``, squared and summed
in fp32, then discarded. Backpropagating the *sum* of per-sample mean losses gives each sample exactly its own
gradient. No parameter requires grad: the outputs of the φ modules are made the only leaves, so autograd
builds no graph below the lowest φ layer. The LM head runs only at positions whose label is a target.

Extras from the same pass: ``response_loss`` (mean CE over response tokens, whatever ``loss_on`` is),
``perplexity = exp(response_loss)`` and, with ``ifd``, the instruction-following difficulty

    ifd(s) = response_loss(response | instruction and input) / response_loss(response | instruction only),

where "instruction only" is the same template rendered with an empty input (one more no-grad forward). Below 1:
the input (the user's history) makes the response easier to predict.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from collections import defaultdict
from contextlib import AbstractContextManager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from deft.artifacts import fingerprint, frame_fingerprint, read_json, read_parquet, write_json, write_parquet
from deft.config import EffortConfig, LoraConfig
from deft.data.encoding import (
    IGNORE_INDEX,
    Encoded,
    check_context,
    context_limit,
    encode_pairs,
    length_sorted_batches,
    pad_batch,
)
from deft.data.prompts import render_prompt
from deft.errors import ArtifactMismatchError, DataFormatError, ModelLoadError
from deft.models import LoadedModel, attach_lora, detach_lora

log = logging.getLogger(__name__)

SAMPLE_FIELDS = ("sample_id", "instruction", "input", "output")
EFFORT_COLUMNS = ("sample_id", "effort", "response_loss", "perplexity")
SHARD_DIR = "effort_shards"
ALGORITHM_VERSION = 1  # bump when a change alters the numbers, so old shards are not resumed

Pairs = tuple[list[Encoded], list[Encoded]]  # (labels that define ℓ, response-only labels) per sample

_LORA_B = re.compile(r"\.lora_B\.[^.]+$")
_LAYER_INDEX = re.compile(r"\.(\d+)\.")

# ----------------------------------------------------------------------------------------------- φ


def effort_modules(peft_model: nn.Module, params: str = "lora_b") -> dict[str, nn.Module]:
    """The LoRA B modules that make up φ, by name: ``lora_b`` (all), ``last_v_proj`` (the v_proj of the
    highest-numbered layer, found from module names), or a regex searched in the B parameters' names."""
    lora_b = {name: m for name, m in peft_model.named_modules() if _LORA_B.search(name)}
    if not lora_b:
        raise ModelLoadError("the model has no LoRA B modules; attach LoRA first")
    if params == "lora_b":
        return lora_b
    if params == "last_v_proj":
        v_proj = {name: m for name, m in lora_b.items() if ".v_proj.lora_B." in name}
        indexed = {name: int(_LAYER_INDEX.findall(name)[-1]) for name in v_proj if _LAYER_INDEX.search(name)}
        if not indexed:
            raise ModelLoadError("effort.params 'last_v_proj' needs 'v_proj' among lora.target_modules in "
                                 "numbered layers", field="effort.params")
        last = max(indexed.values())
        return {name: v_proj[name] for name, index in indexed.items() if index == last}
    chosen = {name: m for name, m in lora_b.items() if re.search(params, f"{name}.weight")}
    if not chosen:
        examples = [f"{name}.weight" for name in list(lora_b)[:3]]
        raise ModelLoadError(f"effort.params regex {params!r} matches no LoRA B parameter, e.g. {examples}",
                             field="effort.params")
    return chosen


class _Capture:
    """Forward hooks on the φ modules: keep each call's input a and make its output a target for autograd."""

    def __init__(self, modules: dict[str, nn.Module]) -> None:
        self.mask: torch.Tensor | None = None
        self.calls: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = defaultdict(list)
        self._handles = [m.register_forward_hook(self._hook(name)) for name, m in modules.items()]

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            if not torch.is_grad_enabled():  # no-grad passes (ifd, timing) need nothing from us
                return
            a = args[0].detach()
            if self.mask is not None and a.shape[:2] == self.mask.shape:
                a = a * self.mask.unsqueeze(-1).to(a.dtype)  # padding carries no gradient; make that explicit
            if not output.requires_grad:  # nothing below needs a gradient: this output is where autograd stops
                output.requires_grad_(True)
            self.calls[name].append((a, output))

        return hook

    def reset(self, mask: torch.Tensor) -> None:
        self.calls.clear()
        self.mask = mask

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


# ----------------------------------------------------------------------------------------------- one batch


def _lm_logits(causal_lm: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    logits = causal_lm.get_output_embeddings()(hidden)
    cap = getattr(causal_lm.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def _row_mean(values: torch.Tensor, rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    sums = torch.zeros(n_rows, dtype=values.dtype, device=values.device).index_add_(0, rows, values)
    counts = torch.zeros(n_rows, dtype=values.dtype, device=values.device).index_add_(0, rows, torch.ones_like(values))
    return sums / counts.clamp_min(1)


def batch_losses(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample mean CE over ``labels`` and over ``response_labels`` (a subset), from one forward.

    The decoder runs on the whole batch; the LM head only on hidden states whose next-token label is a target,
    which saves the full-vocabulary projection of every prompt and padding position.
    """
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = causal_lm.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                     use_cache=False).last_hidden_state
    targets = batch["labels"][:, 1:]  # position t predicts token t + 1
    selected = targets != IGNORE_INDEX
    rows = selected.nonzero(as_tuple=True)[0]
    logits = _lm_logits(causal_lm, hidden[:, :-1][selected]).float()
    token_loss = F.cross_entropy(logits, targets[selected], reduction="none")
    in_response = (batch["response_labels"][:, 1:] != IGNORE_INDEX)[selected]
    n = targets.shape[0]
    return _row_mean(token_loss, rows, n), _row_mean(token_loss[in_response], rows[in_response], n)


def effort_batch(model: nn.Module, capture: _Capture, batch: dict[str, torch.Tensor],
                 amp: AbstractContextManager) -> dict[str, torch.Tensor]:
    """Effort (per-sample gradient norm over φ) and response loss for one padded batch, as fp32 CPU tensors."""
    capture.reset(batch["attention_mask"])
    with amp:
        loss, response_loss = batch_losses(model, batch)
    names = list(capture.calls)
    outputs = [out for name in names for _, out in capture.calls[name]]
    grads = iter(torch.autograd.grad(loss.sum(), outputs, allow_unused=True))
    squared = torch.zeros(loss.shape[0], dtype=torch.float32, device=loss.device)
    for name in names:
        per_sample = None  # (b, r, out): this module's gradient for each sample, transposed
        for a, _ in capture.calls[name]:
            g = next(grads)
            if g is None:
                continue
            # A module called more than once per forward gets the sum over its calls, as autograd would.
            part = torch.einsum("btr,bto->bro", a.float(), g.float())
            per_sample = part if per_sample is None else per_sample + part
        if per_sample is not None:
            squared += per_sample.pow(2).sum((1, 2))
    capture.calls.clear()
    return {"effort": squared.sqrt().cpu(), "response_loss": response_loss.detach().float().cpu()}


# ----------------------------------------------------------------------------------------------- encoding


def _check_samples(samples: pd.DataFrame) -> None:
    missing = [c for c in SAMPLE_FIELDS if c not in samples.columns]
    if missing:
        raise DataFormatError(f"samples lack columns {missing}; effort needs {list(SAMPLE_FIELDS)}")
    repeated = samples["sample_id"][samples["sample_id"].duplicated()]
    if len(repeated):
        raise DataFormatError(f"sample_id {repeated.iloc[0]!r} occurs more than once", field="sample_id")


def encode_samples(tokenizer: Any, samples: pd.DataFrame, loss_on: str = "response",
                   with_input: bool = True, limit: int | None = None) -> Pairs:
    """(encodings whose labels define ℓ, encodings with response-only labels) for each sample, in order.

    ``with_input=False`` renders the prompt with an empty input, for the ifd denominator. A sample longer
    than ``limit`` tokens (the model's context) is an error.
    """
    inputs = samples["input"].fillna("").astype(str) if with_input else [""] * len(samples)
    prompts = [render_prompt(str(i), x) for i, x in zip(samples["instruction"], inputs, strict=True)]
    response = encode_pairs(tokenizer, prompts, [str(o) for o in samples["output"]], "response")
    check_context(response, samples["sample_id"].tolist(), limit)
    if loss_on == "response":
        return response, response
    return [Encoded(e.input_ids, list(e.input_ids)) for e in response], response


def _make_batch(encoded: Pairs, rows: list[int], pad_id: int,
                device: torch.device) -> dict[str, torch.Tensor]:
    loss_enc, response_enc = encoded
    batch = pad_batch([loss_enc[i] for i in rows], pad_id)  # right padding: causal positions stay exact
    batch["response_labels"] = pad_batch([response_enc[i] for i in rows], pad_id)["labels"]
    return {key: value.to(device) for key, value in batch.items()}


# ----------------------------------------------------------------------------------------------- shards


def effort_fingerprint(loaded: LoadedModel, samples: pd.DataFrame, lora_cfg: LoraConfig,
                       effort_cfg: EffortConfig, seed: int = 0) -> str:
    """Identity of an effort run: model, numerics, sample texts and ids, LoRA and effort settings, seed.

    ``batch_size`` is left out: scores do not depend on it (batch invariance), so a resumed run may change it.
    """
    effort = {k: v for k, v in asdict(effort_cfg).items() if k != "batch_size"}
    return fingerprint({"version": ALGORITHM_VERSION, "model": loaded.fingerprint,
                        "weights_dtype": str(loaded.weights_dtype),
                        "autocast": str(loaded.autocast_dtype), "samples": frame_fingerprint(samples[list(SAMPLE_FIELDS)]),
                        "lora": asdict(lora_cfg), "effort": effort, "seed": seed})


class _ShardStore:
    """``effort_shards/``: one Parquet file per finished shard plus ``meta.json`` with the run's fingerprint."""

    def __init__(self, root: Path, fp: str, meta: dict[str, Any], overwrite: bool) -> None:
        self.root = root
        meta_path = root / "meta.json"
        old = read_json(meta_path).get("fingerprint") if meta_path.is_file() else None
        stale = old != fp and (old is not None or any(root.glob("shard-*.parquet")))
        if stale and not overwrite:
            raise ArtifactMismatchError(f"{root} holds effort shards with fingerprint {old}, this run has {fp}; "
                                        "use --overwrite to replace them or choose another --out", file=root)
        if stale:
            shutil.rmtree(root)
        write_json(meta_path, {"fingerprint": fp, **meta})

    def _path(self, index: int) -> Path:
        return self.root / f"shard-{index:05d}.parquet"

    def load(self, index: int, sample_ids: list[Any]) -> pd.DataFrame | None:
        path = self._path(index)
        if not path.is_file():
            return None
        frame = read_parquet(path)
        if frame["sample_id"].tolist() != sample_ids:
            raise ArtifactMismatchError("shard does not hold the samples this run expects; use --overwrite",
                                        file=path)
        return frame

    def save(self, index: int, frame: pd.DataFrame, wall_s: float) -> None:
        write_parquet(self._path(index), frame)
        write_json(self._path(index).with_suffix(".json"), {"wall_s": round(wall_s, 3), "samples": len(frame)})

    def wall_s(self, index: int) -> float | None:
        """Seconds the shard took when it was computed (None for shards saved without a timing)."""
        path = self._path(index).with_suffix(".json")
        return float(read_json(path)["wall_s"]) if path.is_file() else None


def _earlier_seconds(timed_s: float, timed_n: int, untimed_n: int, computed_s: float, computed_n: int) -> float:
    """Compute seconds spent on resumed shards in earlier runs, so the cost ledger charges the whole stage.
    Shards saved without a timing are charged at the mean rate of every timed shard."""
    rate = (timed_s + computed_s) / max(1, timed_n + computed_n)
    return timed_s + untimed_n * rate


# ----------------------------------------------------------------------------------------------- runs


def _score_shard(model: nn.Module, capture: _Capture, loaded: LoadedModel, samples: pd.DataFrame,
                 shard: list[int], encoded: Pairs, ifd_encoded: Pairs | None, batch_size: int,
                 bar: tqdm) -> pd.DataFrame:
    pad_id = loaded.tokenizer.pad_token_id
    parts: dict[str, list[torch.Tensor]] = defaultdict(list)
    # The shard is already sorted by length, so its batches need little padding.
    for local in length_sorted_batches([len(encoded[0][i].input_ids) for i in shard], batch_size):
        rows = [shard[j] for j in local]
        result = effort_batch(model, capture, _make_batch(encoded, rows, pad_id, loaded.device), loaded.autocast())
        if ifd_encoded is not None:
            with torch.no_grad(), loaded.autocast():
                _, alone = batch_losses(model, _make_batch(ifd_encoded, rows, pad_id, loaded.device))
            result["ifd"] = result["response_loss"] / alone.float().cpu()
        for key, value in result.items():
            parts[key].append(value)
        bar.update(len(rows))
    frame = pd.DataFrame({"sample_id": samples["sample_id"].iloc[shard].tolist()})
    for key, values in parts.items():
        frame[key] = torch.cat(values).double().numpy()
    frame.insert(3, "perplexity", np.exp(frame["response_loss"]))
    return frame


def compute_effort(loaded: LoadedModel, samples: pd.DataFrame, lora_cfg: LoraConfig, effort_cfg: EffortConfig,
                   out_dir: Path | None = None, seed: int = 0, progress: bool = True, *,
                   overwrite: bool = False) -> pd.DataFrame:
    """Effort of every sample (columns sample_id, effort, response_loss, perplexity, and ifd if asked), in the
    order of ``samples`` (columns sample_id, instruction, input, output).

    A fresh LoRA (``lora_cfg``, initialised with ``seed``) is attached for the run and removed afterwards.
    With ``out_dir``, finished shards of ``effort_cfg.shard_size`` samples (in length-sorted order) are written to
    ``out_dir/effort_shards/`` with their compute time, and a rerun resumes from them; shards from other
    inputs or settings are an :class:`ArtifactMismatchError` unless ``overwrite``. ``result.attrs["resumed"]``
    says how many shards were resumed and the seconds they took in earlier runs (``earlier_wall_s``).
    """
    _check_samples(samples)
    encoded = encode_samples(loaded.tokenizer, samples, effort_cfg.loss_on, limit=context_limit(loaded.model))
    ifd_encoded = encode_samples(loaded.tokenizer, samples, with_input=False) if effort_cfg.ifd else None
    shards = length_sorted_batches([len(e.input_ids) for e in encoded[0]], effort_cfg.shard_size)
    store = None
    if out_dir is not None:
        fp = effort_fingerprint(loaded, samples, lora_cfg, effort_cfg, seed)
        meta = {"model": loaded.name, "n_samples": len(samples), "n_shards": len(shards),
                "lora": asdict(lora_cfg), "effort": asdict(effort_cfg), "seed": seed}
        store = _ShardStore(Path(out_dir) / SHARD_DIR, fp, meta, overwrite)
    peft_model = attach_lora(loaded, lora_cfg, seed)
    capture = None
    frames = []
    resumed: list[tuple[float | None, int]] = []  # (seconds it took earlier, samples) per shard read back
    computed: list[tuple[float, int]] = []  # (seconds, samples) per shard computed now
    try:
        peft_model.requires_grad_(False)  # gradients reach only the φ outputs (see _Capture)
        capture = _Capture(effort_modules(peft_model, effort_cfg.params))
        with tqdm(total=len(samples), desc="effort", unit="sample", disable=not progress) as bar:
            for index, shard in enumerate(shards):
                ids = samples["sample_id"].iloc[shard].tolist()
                frame = store.load(index, ids) if store is not None else None
                if frame is None:
                    start = time.perf_counter()
                    frame = _score_shard(peft_model, capture, loaded, samples, shard, encoded, ifd_encoded,
                                         effort_cfg.batch_size, bar)
                    computed.append((time.perf_counter() - start, len(shard)))
                    if store is not None:
                        store.save(index, frame, computed[-1][0])
                else:
                    bar.update(len(shard))
                    resumed.append((store.wall_s(index) if store is not None else None, len(shard)))
                frames.append(frame)
    finally:
        if capture is not None:
            capture.remove()
        detach_lora(peft_model)
    result = _in_input_order(frames, shards)
    result.attrs["resumed"] = _resumed_info(resumed, computed)
    return result


def _resumed_info(resumed: list[tuple[float | None, int]], computed: list[tuple[float, int]]) -> dict[str, Any]:
    """How much of the stage ran before this call, for the cost ledger: shards read back, the samples in those
    saved without a timing, and the seconds the resumed shards took (see :func:`_earlier_seconds`)."""
    timed = [(s, n) for s, n in resumed if s is not None]
    untimed_n = sum(n for s, n in resumed if s is None)
    earlier = _earlier_seconds(sum(s for s, _ in timed), sum(n for _, n in timed), untimed_n,
                               sum(s for s, _ in computed), sum(n for _, n in computed))
    return {"shards": len(resumed), "untimed_shards_samples": untimed_n, "earlier_wall_s": round(earlier, 3)}


def _in_input_order(frames: list[pd.DataFrame], shards: list[list[int]]) -> pd.DataFrame:
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=float) for c in EFFORT_COLUMNS})
    result = pd.concat(frames, ignore_index=True)
    result.index = np.concatenate([np.asarray(s, dtype=np.int64) for s in shards])
    return result.sort_index().reset_index(drop=True)


def time_forward(loaded: LoadedModel, samples: pd.DataFrame, effort_cfg: EffortConfig, *,
                 full_logits: bool = False) -> float:
    """Wall seconds of a plain no-grad forward over ``samples`` with the batching and autocast of
    :func:`compute_effort`: the reference cost an effort pass is compared with.

    By default the LM head runs at the loss positions only (as in the effort pass); ``full_logits`` times
    the ordinary ``model(input_ids, attention_mask)`` call that projects every position onto the vocabulary.
    """
    _check_samples(samples)
    start = time.perf_counter()
    encoded = encode_samples(loaded.tokenizer, samples, effort_cfg.loss_on, limit=context_limit(loaded.model))
    pad_id = loaded.tokenizer.pad_token_id
    with torch.no_grad(), loaded.autocast():
        for rows in length_sorted_batches([len(e.input_ids) for e in encoded[0]], effort_cfg.batch_size):
            batch = _make_batch(encoded, rows, pad_id, loaded.device)
            if full_logits:
                loaded.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            else:
                batch_losses(loaded.model, batch)
    if loaded.device.type == "cuda":
        torch.cuda.synchronize(loaded.device)
    return time.perf_counter() - start
