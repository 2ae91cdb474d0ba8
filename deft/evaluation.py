"""BIGRec grounding evaluation (algorithms.md §9): generate, embed, ground to items, Recall/NDCG, bootstrap.

How items that share a title are treated (so the metrics are well defined):

* Grounding ranks **titles**, not item ids. A title's rank is the best rank of any of its items in the exact L2
  search; :func:`ground` returns every item of a title together, in item-id order, at that title's position.
* The metrics collapse items to titles through ``groups`` (item -> title): rank r means "the r-th distinct
  title of the list", K counts distinct titles, and a user's relevant set is the set of distinct titles of
  their targets. A target is hit at rank r when its title is the r-th distinct title, whichever of the items
  with that title was retrieved. Two targets with one title count once, so Recall and NDCG stay within [0, 1].
* A generated text equal to a title ranks that title first (its L2 distance is 0 in exact arithmetic; the
  rule keeps it so in low precision).
* ``exclude`` removes items (e.g. the user's history) before ranking; a title whose items are all excluded
  disappears, one with some items left keeps only those.

Without ``groups`` every item is its own title and the metrics are the textbook ones.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Collection, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from deft.artifacts import (
    file_sha256,
    fingerprint,
    frame_fingerprint,
    read_json,
    read_npy,
    read_parquet,
    read_user_parquet,
    with_code,
    write_json,
    write_npy,
    write_parquet,
)
from deft.config import EvaluationConfig
from deft.data.encoding import Encoded, length_sorted_batches, pad_batch
from deft.data.prompts import render_prompt
from deft.errors import ArtifactMismatchError, DataFormatError, OutputExistsError

if TYPE_CHECKING:
    from deft.models import LoadedModel

log = logging.getLogger(__name__)

EXTRA_NEW_TOKENS = 4  # generation budget above the longest title: room for EOS and tokenizer merges

# ----------------------------------------------------------------------------------------------- metrics


def _title_ranks(ranked: Sequence[Hashable], groups: Mapping[Hashable, Hashable] | None) -> dict[Hashable, int]:
    """1-based rank of each distinct group (title) in a ranked item list; the first occurrence wins."""
    ranks: dict[Hashable, int] = {}
    for item in ranked:
        key = groups.get(item, item) if groups is not None else item
        if key not in ranks:
            ranks[key] = len(ranks) + 1
    return ranks


def _target_keys(targets: Collection[Hashable], groups: Mapping[Hashable, Hashable] | None) -> set[Hashable]:
    return {groups.get(t, t) for t in targets} if groups is not None else set(targets)


def hit_ranks(ranked: Sequence[Sequence[Hashable]], targets: Sequence[Collection[Hashable]],
              groups: Mapping[Hashable, Hashable] | None = None) -> list[list[int]]:
    """Per user, the sorted 1-based ranks (in distinct titles) at which a target title appears in the list."""
    out = []
    for row, tgt in zip(ranked, targets, strict=True):
        ranks = _title_ranks(row, groups)
        out.append(sorted(ranks[k] for k in _target_keys(tgt, groups) if k in ranks))
    return out


def recall_at_k(ranked: Sequence[Sequence[Hashable]], targets: Sequence[Collection[Hashable]], k: int,
                groups: Mapping[Hashable, Hashable] | None = None) -> np.ndarray:
    """Per-user Recall@K: target titles within the top K distinct titles / number of target titles.

    A list shorter than K is simply all it has; a user without targets scores 0.
    """
    out = np.zeros(len(ranked), dtype=np.float64)
    for u, (row, tgt) in enumerate(zip(ranked, targets, strict=True)):
        keys = _target_keys(tgt, groups)
        if keys:
            ranks = _title_ranks(row, groups)
            out[u] = sum(1 for key in keys if ranks.get(key, k + 1) <= k) / len(keys)
    return out


def ndcg_at_k(ranked: Sequence[Sequence[Hashable]], targets: Sequence[Collection[Hashable]], k: int,
              groups: Mapping[Hashable, Hashable] | None = None) -> np.ndarray:
    """Per-user NDCG@K, binary relevance, log2(rank + 1) discount, IDCG over min(|target titles|, K) positions."""
    out = np.zeros(len(ranked), dtype=np.float64)
    for u, (row, tgt) in enumerate(zip(ranked, targets, strict=True)):
        keys = _target_keys(tgt, groups)
        if not keys:
            continue
        ranks = _title_ranks(row, groups)
        # summed in rank order: ``keys`` is a set of titles, whose order (and so the float sum's last bit) would
        # follow the process's string hash seed
        dcg = sum(1.0 / np.log2(r + 1) for r in sorted(ranks[key] for key in keys if ranks.get(key, k + 1) <= k))
        idcg = sum(1.0 / np.log2(i + 1) for i in range(1, min(len(keys), k) + 1))
        out[u] = dcg / idcg
    return out


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n: int = 1000, seed: int = 0,
                     level: float = 0.95) -> dict[str, float]:
    """Paired bootstrap over users of mean(a - b) (e.g. per-user NDCG of two arms on the same users).

    Returns the observed ``mean_diff``, the percentile interval ``lo``..``hi`` at ``level``, ``share_le_zero``
    (the share of resampled means <= 0: small when a is reliably better) and a two-sided ``p_value``
    (2 x the smaller tail share, capped at 1).
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired_bootstrap needs two non-empty 1-D arrays of one length, got {a.shape}, {b.shape}")
    diff = a - b
    rng = np.random.default_rng(seed)
    means = np.empty(n, dtype=np.float64)
    chunk = max(1, 2_000_000 // diff.size)  # bound the index matrix to ~16 MB
    for start in range(0, n, chunk):
        rows = min(chunk, n - start)
        means[start : start + rows] = diff[rng.integers(0, diff.size, size=(rows, diff.size))].mean(axis=1)
    tail = (1.0 - level) / 2 * 100
    le, ge = float(np.mean(means <= 0)), float(np.mean(means >= 0))
    return {"mean_diff": float(diff.mean()), "lo": float(np.percentile(means, tail)),
            "hi": float(np.percentile(means, 100 - tail)), "share_le_zero": le,
            "p_value": min(1.0, 2 * min(le, ge)), "n": int(n)}


def per_user_results(path: str | Path) -> tuple[Path, pd.DataFrame]:
    """The per-user results of one evaluation: its ``per_user.parquet``, the directory holding it (a
    ``deft evaluate --out`` directory) or an experiment arm directory (``arms/<key>``, results in ``eval/``)."""
    path = Path(path)
    candidates = [path] if path.suffix == ".parquet" else [path / "per_user.parquet", path / "eval" / "per_user.parquet"]
    for candidate in candidates:
        if candidate.is_file():
            frame = read_user_parquet(candidate)
            if "user" not in frame.columns:
                raise DataFormatError("per-user results lack the 'user' column", file=candidate, field="user")
            if frame.empty:  # a bootstrap over no users has nothing to resample
                raise DataFormatError("per-user results hold no users", file=candidate)
            dup = frame["user"][frame["user"].duplicated()]
            if len(dup):
                raise DataFormatError(f"user {dup.iloc[0]!r} appears more than once", file=candidate, field="user")
            for metric in (c for c in frame.columns if c.startswith(("recall@", "ndcg@"))):
                bad = ~np.isfinite(pd.to_numeric(frame[metric], errors="coerce").to_numpy(np.float64))
                if bad.any():  # a mean over it would be NaN, and the comparison read as "no clear difference"
                    row = int(np.flatnonzero(bad)[0])
                    raise DataFormatError(f"row {row + 1} (user {frame['user'].iloc[row]!r}): {metric} is "
                                          f"{frame[metric].tolist()[row]!r}, not a number", file=candidate, field=metric)
            return candidate, frame
    raise DataFormatError(f"no per-user results (looked for {' and '.join(str(c) for c in candidates)})", file=path)


def compare_evaluations(a: str | Path, b: str | Path, metrics: Sequence[str] | None = None, n: int = 1000,
                        seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """Paired bootstrap of ``a`` minus ``b`` for each per-user metric of two evaluations on the same users.

    ``a`` and ``b`` are anything :func:`per_user_results` reads. ``metrics`` defaults to every Recall/NDCG
    column the two share. Different test users are an error: a paired interval over mismatched users would
    mean nothing. One row per metric: the two means, their difference, the interval and the two-sided p.
    """
    (file_a, ua), (file_b, ub) = per_user_results(a), per_user_results(b)
    users_a, users_b = set(ua["user"]), set(ub["user"])
    only_a, only_b = users_a - users_b, users_b - users_a
    if only_a or only_b:
        example = sorted(only_a or only_b, key=str)[:3]
        raise DataFormatError(f"the two evaluations cover different users ({len(only_a)} only here, {len(only_b)} "
                              f"only in {file_b}; e.g. {example}); compare runs on the same test users",
                              file=file_a, field="user")
    shared = [c for c in ua.columns if c.startswith(("recall@", "ndcg@")) and c in ub.columns]
    wanted = list(metrics) if metrics else shared
    for file, frame in ((file_a, ua), (file_b, ub)):
        missing = [m for m in wanted if m not in frame.columns]
        if missing or not wanted:
            raise DataFormatError(f"no per-user metric {missing or 'shared with the other file'} (it has "
                                  f"{[c for c in frame.columns if '@' in c]})", file=file, field="metric")
    paired = ua.merge(ub, on="user", suffixes=("_a", "_b"), validate="one_to_one")
    rows = []
    for metric in wanted:
        x, y = paired[f"{metric}_a"].to_numpy(), paired[f"{metric}_b"].to_numpy()
        boot = paired_bootstrap(x, y, n=n, seed=seed, level=level)
        rows.append({"metric": metric, "a": float(x.mean()), "b": float(y.mean()), "mean_diff": boot["mean_diff"],
                     "lo": boot["lo"], "hi": boot["hi"], "p_value": boot["p_value"], "users": len(paired)})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------- grounding


def ground(gen_emb: np.ndarray, item_emb: np.ndarray, item_ids: Sequence[Hashable],
           titles: Mapping[Hashable, str], k_max: int,
           exclude: Sequence[Collection[Hashable]] | None = None,
           generated: Sequence[str] | None = None) -> list[list[Hashable]]:
    """Rank items by exact L2 distance (faiss ``IndexFlatL2``) to each generated text's embedding.

    Each row holds the top ``k_max`` distinct titles (fewer if the catalogue has fewer), every title expanded
    to all of its non-excluded items in ``item_ids`` order; see the module docstring for the metric contract.
    With ``generated`` (the texts behind ``gen_emb``), a text equal to a title ranks that title first.
    """
    import faiss

    items = np.ascontiguousarray(item_emb, dtype=np.float32)
    queries = np.ascontiguousarray(gen_emb, dtype=np.float32)
    if items.ndim != 2 or items.shape[0] != len(item_ids) or queries.ndim != 2 or queries.shape[1] != items.shape[1]:
        raise ValueError(f"embedding shapes do not match: items {items.shape} for {len(item_ids)} ids, "
                         f"queries {queries.shape}")
    if exclude is not None and len(exclude) != len(queries):
        raise ValueError(f"exclude has {len(exclude)} rows for {len(queries)} queries")
    if generated is not None and len(generated) != len(queries):
        raise ValueError(f"generated has {len(generated)} texts for {len(queries)} queries")
    members: dict[str, list[Hashable]] = {}
    for item in item_ids:
        members.setdefault(titles[item], []).append(item)
    # Deep enough that k_max distinct, non-excluded titles always appear: every retrieved item is a new title,
    # a further item of a seen title (at most n_items - n_titles of those), or the first of an excluded title.
    extra_items = len(item_ids) - len(members)
    most_excluded = max((len(e) for e in exclude), default=0) if exclude is not None else 0
    depth = min(len(item_ids), k_max + extra_items + most_excluded)
    index = faiss.IndexFlatL2(items.shape[1])
    index.add(items)
    _, nearest = index.search(queries, depth)
    out = []
    for row, hits in enumerate(nearest):
        banned = exclude[row] if exclude is not None else ()
        seen: set[str] = set()
        ranked: list[Hashable] = []
        kept = 0  # distinct titles placed so far
        # A text equal to a title is at distance 0 from it in exact arithmetic; placing it first keeps that
        # true in bf16, where padding and batch shape can move two embeddings of one text apart.
        exact = [generated[row]] if generated is not None and generated[row] in members else []
        for title in [*exact, *(titles[item_ids[j]] for j in hits if j >= 0)]:
            if kept >= k_max:
                break
            if title in seen:
                continue
            seen.add(title)
            group = [m for m in members[title] if m not in banned]
            if group:
                ranked.extend(group)
                kept += 1
        out.append(ranked)
    return out


# ----------------------------------------------------------------------------------------------- the LLM side


@contextlib.contextmanager
def _adapted(loaded: LoadedModel, adapter_dir: str | Path | None) -> Iterator[torch.nn.Module]:
    """The model with a saved LoRA adapter attached for the block, removed afterwards (base left untouched)."""
    if adapter_dir is None:
        yield loaded.model
        return
    from peft import PeftModel

    from deft.models import detach_lora, peft_notices_silenced

    with peft_notices_silenced():
        model = PeftModel.from_pretrained(loaded.model, str(adapter_dir), is_trainable=False)
    model.eval()
    try:
        yield model
    finally:
        detach_lora(model)  # puts the original modules back into loaded.model


def _encode_texts(tokenizer, texts: Sequence[str]) -> list[Encoded]:
    """Token ids without special tokens, exactly as training's ``encode_pair`` tokenises a prompt."""
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [Encoded(list(x), list(x)) for x in ids]


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _clean(tokenizer, new_ids: list[int]) -> str:
    """Generated text up to the first EOS, then its first non-blank line, stripped (a response that opens with
    a newline, as a base model's often does, keeps its title instead of becoming empty)."""
    if tokenizer.eos_token_id in new_ids:
        new_ids = new_ids[: new_ids.index(tokenizer.eos_token_id)]
    text = tokenizer.decode(new_ids, skip_special_tokens=True)
    return text.strip().split("\n", 1)[0].strip()


def generate(loaded: LoadedModel, adapter_dir: str | Path | None, prompts: Sequence[str],
             eval_cfg: EvaluationConfig, max_new_tokens: int, progress: bool = False,
             partial: str | Path | None = None, save_every_s: float = 60.0) -> list[str]:
    """Responses to ``prompts`` in input order: greedy (``num_beams`` 1) or beam search, batched.

    Prompts are grouped by length so batches carry little padding, left-padded so every row continues from its
    last position, and run under the model's bf16 autocast where supported. Each response is cut at EOS and at
    the first newline.

    With ``partial`` (a Parquet path that the caller names after everything the responses depend on), finished
    responses are saved there every ``save_every_s`` seconds and a rerun skips the batches they cover. The
    batches are a pure function of the prompts and the batch size, so a resumed run generates exactly what an
    uninterrupted one would.
    """
    from tqdm.auto import tqdm
    from transformers import GenerationConfig

    tok = loaded.tokenizer
    encoded = _encode_texts(tok, prompts)
    gen_cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=eval_cfg.num_beams,
                               num_return_sequences=1, pad_token_id=_pad_id(tok), eos_token_id=tok.eos_token_id,
                               use_cache=True,  # the loaded model's config turns the cache off for scoring
                               # transformers fills every field left unset from the checkpoint's own
                               # generation_config.json, and a chat model's may ask for a repetition penalty;
                               # set them so that greedy and beam search mean the same on every model
                               repetition_penalty=1.0, no_repeat_ngram_size=0, length_penalty=1.0,
                               min_new_tokens=0, bad_words_ids=None, suppress_tokens=None,
                               begin_suppress_tokens=None, forced_bos_token_id=None, forced_eos_token_id=None)
    out: list[str | None] = [None] * len(prompts)
    saved, earlier_s = load_partial(partial)
    if saved and max(saved) >= len(prompts):
        raise ArtifactMismatchError(f"saved responses index {max(saved)} but there are {len(prompts)} prompts",
                                    file=partial)
    for i, text in saved.items():
        out[i] = text
    batches = length_sorted_batches([len(e.input_ids) for e in encoded], eval_cfg.batch_size)
    todo = [b for b in batches if any(out[i] is None for i in b)]
    if saved:
        log.info("resuming generation: %d of %d prompts were saved in %s", len(saved), len(prompts), partial)
    start = last_save = time.monotonic()
    with _adapted(loaded, adapter_dir) as model, torch.inference_mode(), loaded.autocast():
        model.eval()
        bar = tqdm(total=len(batches), initial=len(batches) - len(todo), desc="generate", disable=not progress)
        for batch in todo:
            padded = pad_batch([encoded[i] for i in batch], _pad_id(tok), side="left")
            ids = padded["input_ids"].to(loaded.device)
            seqs = model.generate(input_ids=ids, attention_mask=padded["attention_mask"].to(loaded.device),
                                  generation_config=gen_cfg)
            for row, i in enumerate(batch):
                out[i] = _clean(tok, seqs[row, ids.shape[1]:].tolist())
            bar.update(1)
            if partial is not None and time.monotonic() - last_save >= save_every_s:
                _save_partial(partial, out, earlier_s + time.monotonic() - start)
                last_save = time.monotonic()
        bar.close()
    if partial is not None and todo:  # the caller deletes it once the responses are saved elsewhere
        _save_partial(partial, out, earlier_s + time.monotonic() - start)
    return [text or "" for text in out]


def load_partial(path: str | Path | None) -> tuple[dict[int, str], float]:
    """Responses an interrupted generation saved at ``path``, by prompt index, and the seconds spent on them."""
    if path is None or not Path(path).is_file():
        return {}, 0.0
    frame = read_parquet(path)
    earlier = float(frame["elapsed_s"].iloc[0]) if len(frame) else 0.0
    return dict(zip(frame["index"].tolist(), frame["text"].tolist(), strict=True)), earlier


def _save_partial(path: str | Path, out: Sequence[str | None], elapsed_s: float) -> None:
    done = [i for i, text in enumerate(out) if text is not None]
    write_parquet(path, pd.DataFrame({"index": np.asarray(done, dtype=np.int64), "text": [out[i] for i in done],
                                      "elapsed_s": np.full(len(done), round(elapsed_s, 3))}))


@contextlib.contextmanager
def _adapters_off(model: torch.nn.Module) -> Iterator[None]:
    """Switch off every LoRA layer injected into ``model`` (e.g. by ``attach_lora``) for the block.

    Uses peft's public ``enable_adapters`` on each tuner layer and restores the layers' requires_grad flags,
    which re-enabling would otherwise change.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer) and not m.disable_adapters]
    grads = {p: p.requires_grad for m in layers for p in m.parameters()}
    for m in layers:
        m.enable_adapters(False)
    try:
        yield
    finally:
        for m in layers:
            m.enable_adapters(True)
        for p, g in grads.items():
            p.requires_grad_(g)


def _decoder(model: torch.nn.Module) -> torch.nn.Module:
    """The transformer stack without the LM head, for hidden states at no vocabulary cost."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder()


def embed_texts(loaded: LoadedModel, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """Last-layer hidden state of each text's last token under the **base** model, returned as float32.

    Batches are right-padded and the state is gathered at the last real token: causal attention makes it
    independent of the padding. An empty text is embedded as the EOS token alone. Any LoRA adapter injected
    into the model is disabled for the call. No autocast: the pass runs in the weights' dtype (float32 on CPU,
    bf16 on a bf16 GPU), which :func:`item_embeddings` puts in its cache key.
    """
    tok = loaded.tokenizer
    encoded = [e if e.input_ids else Encoded([tok.eos_token_id], [tok.eos_token_id])
               for e in _encode_texts(tok, texts)]
    out = np.zeros((len(texts), 0), dtype=np.float32)
    with _adapters_off(loaded.model), torch.inference_mode():
        decoder = _decoder(loaded.model).eval()
        for batch in length_sorted_batches([len(e.input_ids) for e in encoded], batch_size):
            padded = pad_batch([encoded[i] for i in batch], _pad_id(tok), side="right")
            mask = padded["attention_mask"].to(loaded.device)
            hidden = decoder(input_ids=padded["input_ids"].to(loaded.device), attention_mask=mask).last_hidden_state
            last = hidden[torch.arange(len(batch), device=hidden.device), mask.sum(1) - 1].float().cpu().numpy()
            if out.shape[1] == 0:
                out = np.zeros((len(texts), last.shape[1]), dtype=np.float32)
            out[batch] = last
    return out


def item_embeddings(loaded: LoadedModel, titles: Mapping[Hashable, str], cache_dir: str | Path | None,
                    batch_size: int = 64) -> tuple[list[Hashable], np.ndarray]:
    """Embeddings of every item's title (items in the order of their ids as strings), cached as
    ``item_emb-<fp>.npy`` in ``cache_dir``.

    The cache key is the fingerprint of the model's fingerprint, its weights' dtype, the batch size, the (item,
    title) pairs and the evaluation code's version. Each distinct title is embedded once, so items sharing a
    title share one vector.
    """
    item_ids = sorted(titles, key=str)
    # bf16 and fp32 passes differ in the low bits, and in bf16 so do batches of other shapes
    key = fingerprint(with_code({"model": loaded.fingerprint, "batch_size": batch_size,
                                 "weights_dtype": str(loaded.weights_dtype),
                                 "items": [[str(i), titles[i]] for i in item_ids]}, "evaluation"))
    path = None if cache_dir is None else Path(cache_dir) / f"item_emb-{key}.npy"
    if path is not None and path.is_file():
        return item_ids, read_npy(path)
    distinct = sorted({titles[i] for i in item_ids})
    vectors = embed_texts(loaded, distinct, batch_size)
    row = {t: r for r, t in enumerate(distinct)}
    emb = vectors[[row[titles[i]] for i in item_ids]]
    if path is not None:
        write_npy(path, emb)
    return item_ids, emb


# ----------------------------------------------------------------------------------------------- evaluate


@dataclass
class EvalResult:
    metrics: dict[str, float]
    per_user: pd.DataFrame
    wall_s: float
    s_per_user: float  # wall_s less the one-off title embedding, per user
    out_dir: Path
    title_embedding_s: float = 0.0  # 0 when the shared cache already held the titles


USER_COLUMNS = ("user", "history", "targets", "instruction", "input")


def default_max_new_tokens(tokenizer, titles: Mapping[Hashable, str]) -> int:
    """Just above the longest title in tokens, so a full title plus EOS always fits."""
    lengths = tokenizer(sorted(set(titles.values())), add_special_tokens=False)["input_ids"]
    return max((len(x) for x in lengths), default=0) + EXTRA_NEW_TOKENS


def _adapter_fingerprint(adapter_dir: str | Path | None) -> str | None:
    if adapter_dir is None:
        return None
    files = sorted(p for p in Path(adapter_dir).iterdir() if p.is_file())
    return fingerprint([[p.name, file_sha256(p)] for p in files])


def _check_users(users: pd.DataFrame, titles: Mapping[Hashable, str]) -> None:
    missing = [c for c in USER_COLUMNS if c not in users.columns]
    if missing:
        raise DataFormatError(f"evaluation users lack columns {missing} (need {list(USER_COLUMNS)})")
    for row in users.itertuples(index=False):
        if len(row.targets) == 0:
            raise DataFormatError(f"user {row.user!r} has no test targets", field="targets")
        unknown = [t for t in row.targets if t not in titles]
        if unknown:
            raise DataFormatError(f"user {row.user!r}: target items {unknown[:3]} have no title", field="targets")


def check_adapter(adapter_dir: str | Path | None) -> None:
    """A LoRA adapter directory as saved by ``deft train`` (or peft): fail before data and model are loaded."""
    if adapter_dir is None:
        return
    path = Path(adapter_dir)
    if not path.is_dir():
        raise DataFormatError("adapter directory does not exist", file=path)
    if not (path / "adapter_config.json").is_file():
        raise DataFormatError("not a LoRA adapter directory (no adapter_config.json; `deft train` writes one "
                              "in OUT/adapter)", file=path, field="adapter_config.json")


def evaluation_fingerprint(loaded: LoadedModel, adapter_dir: str | Path | None, users: pd.DataFrame,
                           titles: Mapping[Hashable, str], eval_cfg: EvaluationConfig, max_new: int) -> str:
    """What an evaluation's result depends on: model, adapter files, the (already capped) users' prompts and
    targets, titles, result settings, generation length, precision and the evaluation code's version."""
    parts = {"model": loaded.fingerprint, "adapter": _adapter_fingerprint(adapter_dir),
             "users": frame_fingerprint(users[list(USER_COLUMNS)]),
             "titles": fingerprint(sorted([str(k), v] for k, v in titles.items())),
             "eval": eval_cfg.result_settings(), "max_new_tokens": max_new,
             # generation and grounding differ in the low bits between fp32 and bf16 runs
             "precision": [str(loaded.weights_dtype), str(loaded.autocast_dtype)]}
    excluded = _excluded_fingerprint(users, eval_cfg)
    if excluded is not None:  # only then: evaluations that exclude nothing keep their earlier fingerprint
        parts["excluded"] = excluded
    return fingerprint(with_code(parts, "evaluation"))


def _cached(out_dir: Path, fp: str, overwrite: bool) -> EvalResult | None:
    """The saved evaluation for this fingerprint; another fingerprint's is an error unless ``overwrite``."""
    metrics_path, per_user_path = out_dir / "metrics.json", out_dir / "per_user.parquet"
    if not (metrics_path.is_file() and per_user_path.is_file()):
        return None
    saved = read_json(metrics_path)
    if saved.get("fingerprint") != fp:
        if not overwrite:
            raise ArtifactMismatchError(f"{out_dir} holds an evaluation with fingerprint {saved.get('fingerprint')}"
                                        f" (adapter {saved.get('adapter')}), these inputs and settings give {fp}; "
                                        "use --overwrite or another output directory")
        return None
    log.info("evaluation in %s is up to date (fingerprint %s)", out_dir, fp)
    return EvalResult(saved["metrics"], read_parquet(per_user_path), saved["wall_s"], saved["s_per_user"], out_dir,
                      saved.get("title_embedding_s", 0.0))


def _claim(out_dir: Path, partial: Path, overwrite: bool) -> None:
    """Refuse, unless overwriting, per-user results without DEFT's metrics.json, and the saved responses of
    another unfinished evaluation (other inputs or settings): those are hours of work."""
    theirs = out_dir / "per_user.parquet"
    if theirs.exists() and not overwrite and not (out_dir / "metrics.json").exists() \
            and not any(out_dir.glob("partial-generations-*.parquet")):
        raise OutputExistsError(f"{theirs} exists without the metrics.json a finished DEFT evaluation writes "
                                "beside it (not DEFT's, or its metrics.json was removed); use --overwrite to "
                                "replace it or choose another --out", file=theirs)
    for stale in out_dir.glob("partial-generations-*.parquet"):
        if stale == partial:
            continue
        if not overwrite:
            raise ArtifactMismatchError(f"{stale.name} holds the responses of an unfinished evaluation with other "
                                        f"inputs or settings; rerun that one, or use --overwrite to discard them",
                                        file=out_dir)
        stale.unlink()


def evaluate(loaded: LoadedModel, adapter_dir: str | Path | None, users: pd.DataFrame,
             titles: Mapping[Hashable, str], eval_cfg: EvaluationConfig, out_dir: str | Path,
             cache_dir: str | Path | None = None, progress: bool = True, overwrite: bool = False) -> EvalResult:
    """Generate for each test user, ground to items, score Recall/NDCG at every K of ``eval_cfg.ks``.

    Writes ``per_user.parquet`` and ``metrics.json`` (with the fingerprint of model, adapter, users, titles and
    settings) atomically into ``out_dir``; a matching ``metrics.json`` is returned without recomputing, another
    one is an :class:`ArtifactMismatchError` unless ``overwrite``. Item
    embeddings are cached in ``cache_dir`` (default ``out_dir``; share one across arms to embed titles once).
    """
    out_dir = Path(out_dir)
    check_adapter(adapter_dir)
    _check_users(users, titles)
    if eval_cfg.max_users is not None:
        users = users.iloc[: eval_cfg.max_users]
    max_new = eval_cfg.max_new_tokens or default_max_new_tokens(loaded.tokenizer, titles)
    fp = evaluation_fingerprint(loaded, adapter_dir, users, titles, eval_cfg, max_new)
    cached = _cached(out_dir, fp, overwrite)
    if cached is not None:
        return cached
    start = time.perf_counter()
    prompts = [render_prompt(i, x) for i, x in zip(users["instruction"], users["input"], strict=True)]
    # Responses saved as they come, under this evaluation's fingerprint: a killed evaluation resumes, and one
    # with other inputs or settings never reads them.
    partial = out_dir / f"partial-generations-{fp}.parquet"
    _claim(out_dir, partial, overwrite)
    earlier_s = load_partial(partial)[1]  # charged to this evaluation's wall time, as a resumed stage's are
    generated = generate(loaded, adapter_dir, prompts, eval_cfg, max_new, progress=progress, partial=partial)
    embed_start = time.perf_counter()
    item_ids, item_emb = item_embeddings(loaded, titles, out_dir if cache_dir is None else cache_dir,
                                         eval_cfg.batch_size)
    # Zero when the cache had them: the first evaluation sharing a cache pays for every title once.
    titles_s = time.perf_counter() - embed_start
    gen_emb = embed_texts(loaded, generated, eval_cfg.batch_size)
    exclude = _excluded(users) if eval_cfg.exclude_history else None
    k_max = max(eval_cfg.ks)
    ranked = ground(gen_emb, item_emb, item_ids, titles, k_max, exclude, generated)
    targets = [list(t) for t in users["targets"]]
    per_user = pd.DataFrame({"user": users["user"].to_numpy(), "generated": generated,
                             f"top{k_max}": ranked, "hit_ranks": hit_ranks(ranked, targets, titles)})
    metrics: dict[str, float] = {}
    for k in sorted(eval_cfg.ks):
        per_user[f"recall@{k}"] = recall_at_k(ranked, targets, k, titles)
        per_user[f"ndcg@{k}"] = ndcg_at_k(ranked, targets, k, titles)
        metrics[f"recall@{k}"] = float(per_user[f"recall@{k}"].mean())
        metrics[f"ndcg@{k}"] = float(per_user[f"ndcg@{k}"].mean())
    wall = time.perf_counter() - start + earlier_s
    s_per_user = (wall - titles_s) / max(1, len(users))  # what each further user costs, the one-off titles aside
    write_parquet(out_dir / "per_user.parquet", per_user)
    record = _metrics_record(fp, metrics, (wall, titles_s, s_per_user), len(users), max_new, eval_cfg, adapter_dir,
                             _excluded_phrase(users, exclude))
    write_json(out_dir / "metrics.json", record)
    partial.unlink(missing_ok=True)  # per_user.parquet holds every response now
    log.info("evaluated %d users in %.1f s: %s", len(users), wall, metrics)
    return EvalResult(metrics, per_user, wall, s_per_user, out_dir, titles_s)


def _excluded_fingerprint(users: pd.DataFrame, eval_cfg: EvaluationConfig) -> str | None:
    if not eval_cfg.exclude_history or "seen" not in users.columns:
        return None  # nothing is excluded, or the prompt's history is, which "users" already covers
    return frame_fingerprint(users[["user", "seen"]])


def _excluded(users: pd.DataFrame) -> list[set]:
    """Items kept out of each user's ranking: everything seen before the target when the frame says (``seen``,
    from :func:`deft.data.build_eval_users`), else the prompt's history."""
    return [set(h) for h in users["seen" if "seen" in users.columns else "history"]]


def _excluded_phrase(users: pd.DataFrame, exclude: list[set] | None) -> str:
    if exclude is None:
        return "nothing: seen items stay in the ranking"
    what = "every item seen before the target" if "seen" in users.columns else "the prompt's history items"
    return f"{what} ({np.mean([len(e) for e in exclude]):.1f} per user on average)"


def _metrics_record(fp: str, metrics: dict[str, float], times: tuple[float, float, float], n_users: int,
                    max_new: int, eval_cfg: EvaluationConfig, adapter_dir: str | Path | None,
                    excluded: str) -> dict[str, Any]:
    wall, titles_s, s_per_user = times
    return {"fingerprint": fp, "metrics": metrics, "n_users": n_users, "wall_s": round(wall, 3),
            "title_embedding_s": round(titles_s, 3), "s_per_user": s_per_user, "max_new_tokens": max_new,
            "num_beams": eval_cfg.num_beams, "exclude_history": eval_cfg.exclude_history, "excluded": excluded,
            "adapter": None if adapter_dir is None else str(adapter_dir),
            "grounding": "faiss IndexFlatL2 over base-model last-token states; ranks count distinct titles"}
