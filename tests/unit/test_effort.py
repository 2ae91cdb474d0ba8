"""Effort scores on the tiny model: exactness against brute-force autograd, batching, masking, φ, resume."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from deft.config import EffortConfig, LoraConfig, ModelConfig
from deft.data.encoding import encode_pair
from deft.data.prompts import render_prompt
from deft.errors import ArtifactMismatchError, DataFormatError, ModelLoadError
from deft.models import LoadedModel, attach_lora, detach_lora, load_target_llm
from deft.scores import effort
from deft.scores.effort import compute_effort, effort_batch, effort_modules, encode_samples, time_forward

TITLES = ["Toy Story (1995)", "Heat (1995)", "Fargo (1996)", "Casablanca (1942)", "Alien (1979)",
          "Twelve Monkeys (1995)", "Amélie (2001)"]




@pytest.fixture
def tiny() -> LoadedModel:
    return load_target_llm(ModelConfig(name="tiny-llama", device="cpu", autocast="off"))


@pytest.fixture
def samples() -> pd.DataFrame:
    rows = []
    for i in range(6):  # histories of 1..6 titles: very different lengths, so batches are padded
        history = "; ".join(TITLES[: i + 1])
        rows.append({"sample_id": f"u{i}", "instruction": "Recommend the next movie.",
                     "input": f"The user watched: {history}.", "output": TITLES[(i + 3) % len(TITLES)]})
    return pd.DataFrame(rows)


def _brute_force(peft_model, modules, tokenizer, samples, loss_on) -> list[float]:
    """One sample at a time, through the model's own loss (labels -100 where ignored), one full backward."""
    weights = [m.weight for m in modules.values()]
    for w in weights:
        w.requires_grad_(True)
    norms = []
    for row in samples.itertuples():
        enc = encode_pair(tokenizer, render_prompt(row.instruction, row.input), row.output, loss_on)
        loss = peft_model(input_ids=torch.tensor([enc.input_ids]), labels=torch.tensor([enc.labels])).loss
        grads = torch.autograd.grad(loss, weights)
        norms.append(math.sqrt(sum(float(g.pow(2).sum()) for g in grads)))
    for w in weights:
        w.requires_grad_(False)
    return norms


def _batched(peft_model, modules, loaded, samples, loss_on) -> torch.Tensor:
    encoded = encode_samples(loaded.tokenizer, samples, loss_on)
    batch = effort._make_batch(encoded, list(range(len(samples))), loaded.tokenizer.pad_token_id, loaded.device)
    capture = effort._Capture(modules)
    try:
        return effort_batch(peft_model, capture, batch, loaded.autocast())["effort"]
    finally:
        capture.remove()


@pytest.mark.parametrize("params", ["lora_b", "last_v_proj"])
@pytest.mark.parametrize("loss_on", ["response", "prompt"])
@pytest.mark.parametrize("random_b", [False, True])
def test_batched_norms_equal_brute_force(tiny, samples, params, loss_on, random_b):
    peft_model = attach_lora(tiny, LoraConfig(), seed=0)
    peft_model.requires_grad_(False)
    if random_b:  # non-zero B: gradients also flow through the LoRA branches of higher layers
        gen = torch.Generator().manual_seed(0)
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.data = torch.randn(p.shape, generator=gen) * 0.5
    modules = effort_modules(peft_model, params)
    expected = torch.tensor(_brute_force(peft_model, modules, tiny.tokenizer, samples, loss_on))
    got = _batched(peft_model, modules, tiny, samples, loss_on)
    assert expected.min() > 0
    torch.testing.assert_close(got, expected.float(), rtol=1e-5, atol=0)


def test_batch_invariance_and_no_padding_leak(tiny, samples):
    alone = compute_effort(tiny, samples, LoraConfig(), EffortConfig(batch_size=1), progress=False)
    together = compute_effort(tiny, samples, LoraConfig(), EffortConfig(batch_size=6), progress=False)
    for column in ("effort", "response_loss", "perplexity"):
        torch.testing.assert_close(torch.tensor(together[column].values), torch.tensor(alone[column].values),
                                   rtol=1e-4, atol=0)


def test_output_columns_order_and_extras(tiny, samples):
    shuffled = samples.sample(frac=1.0, random_state=3).reset_index(drop=True)
    scores = compute_effort(tiny, shuffled, LoraConfig(), EffortConfig(batch_size=4, ifd=True), progress=False)
    assert list(scores.columns) == ["sample_id", "effort", "response_loss", "perplexity", "ifd"]
    assert scores["sample_id"].tolist() == shuffled["sample_id"].tolist()
    assert (scores["perplexity"] - scores["response_loss"].map(math.exp)).abs().max() < 1e-9
    row = shuffled.iloc[0]
    with torch.no_grad():
        losses = [tiny.model(input_ids=torch.tensor([e.input_ids]), labels=torch.tensor([e.labels])).loss.item()
                  for e in (encode_pair(tiny.tokenizer, render_prompt(row.instruction, text), row.output)
                            for text in (row.input, ""))]
    assert scores["response_loss"].iloc[0] == pytest.approx(losses[0], rel=1e-5)
    assert scores["ifd"].iloc[0] == pytest.approx(losses[0] / losses[1], rel=1e-5)


def test_prompt_labels_change_effort_not_response_loss(tiny, samples):
    response = compute_effort(tiny, samples, LoraConfig(), EffortConfig(loss_on="response"), progress=False)
    prompt = compute_effort(tiny, samples, LoraConfig(), EffortConfig(loss_on="prompt"), progress=False)
    assert (response["effort"] - prompt["effort"]).abs().min() > 1e-4
    torch.testing.assert_close(torch.tensor(prompt["response_loss"].values),
                               torch.tensor(response["response_loss"].values), rtol=1e-6, atol=0)


def test_last_v_proj_is_the_last_layer_only_and_stops_backprop(tiny, samples):
    peft_model = attach_lora(tiny, LoraConfig(), seed=0)
    peft_model.requires_grad_(False)
    chosen = effort_modules(peft_model, "last_v_proj")
    assert list(chosen) == ["base_model.model.model.layers.1.self_attn.v_proj.lora_B.default"]
    needs_grad = {}
    layers = peft_model.get_base_model().model.layers
    for index, layer in enumerate(layers):
        layer.register_forward_hook(lambda m, a, out, i=index: needs_grad.__setitem__(i, out[0].requires_grad))
    _batched(peft_model, chosen, tiny, samples, "response")
    assert needs_grad == {0: False, 1: True}  # no autograd graph below the lowest φ layer
    _batched(peft_model, effort_modules(peft_model, "lora_b"), tiny, samples, "response")
    assert needs_grad == {0: True, 1: True}
    assert all(not m._forward_hooks for name, m in peft_model.named_modules() if "lora_B" in name)


def test_regex_params(tiny):
    peft_model = attach_lora(tiny, LoraConfig(), seed=0)
    assert list(effort_modules(peft_model, r"layers\.0\..*q_proj")) == [
        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.default"]
    with pytest.raises(ModelLoadError, match="matches no LoRA B parameter"):
        effort_modules(peft_model, "k_proj")
    detach_lora(peft_model)
    with pytest.raises(ModelLoadError, match="last_v_proj"):
        effort_modules(attach_lora(tiny, LoraConfig(target_modules=["q_proj"])), "last_v_proj")


def test_model_is_left_as_it_was(tiny, samples):
    before = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    compute_effort(tiny, samples, LoraConfig(), EffortConfig(), progress=False)
    after = tiny.model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert not any(p.requires_grad for p in tiny.model.parameters())


def test_interrupted_run_resumes_to_identical_results(tiny, samples, tmp_path, monkeypatch):
    cfg = EffortConfig(batch_size=2, shard_size=2)
    reference = compute_effort(tiny, samples, LoraConfig(), cfg, tmp_path / "whole", progress=False)

    real_write = effort.write_parquet
    writes = []

    def crash_on_second_shard(path, frame):
        writes.append(path)
        if len(writes) == 2:
            raise KeyboardInterrupt
        real_write(path, frame)

    monkeypatch.setattr(effort, "write_parquet", crash_on_second_shard)
    with pytest.raises(KeyboardInterrupt):
        compute_effort(tiny, samples, LoraConfig(), cfg, tmp_path / "cut", progress=False)
    assert sorted(p.name for p in (tmp_path / "cut" / "effort_shards").glob("*.parquet")) == ["shard-00000.parquet"]
    monkeypatch.setattr(effort, "write_parquet", real_write)

    scored = []
    real_batch = effort.effort_batch

    def counting(model, capture, batch, amp):
        scored.append(batch["input_ids"].shape[0])
        return real_batch(model, capture, batch, amp)

    monkeypatch.setattr(effort, "effort_batch", counting)
    resumed = compute_effort(tiny, samples, LoraConfig(), cfg, tmp_path / "cut", progress=False)
    assert sum(scored) == 4  # the finished shard of 2 samples was read, not recomputed
    pd.testing.assert_frame_equal(resumed, reference)
    # The ledger charges the resumed shard with the seconds it took when it was computed.
    first = json.loads((tmp_path / "cut" / "effort_shards" / "shard-00000.json").read_text())
    assert first["samples"] == 2 and first["wall_s"] > 0
    assert resumed.attrs["resumed"] == {"shards": 1, "untimed_shards_samples": 0, "earlier_wall_s": first["wall_s"]}
    assert reference.attrs["resumed"]["shards"] == 0 and reference.attrs["resumed"]["earlier_wall_s"] == 0


def test_shards_saved_without_timing_are_charged_at_the_mean_rate():
    # 2 timed samples took 4 s and 2 computed now took 2 s: 1.5 s per sample for the 3 untimed ones.
    assert effort._earlier_seconds(4.0, 2, 3, 2.0, 2) == 4.0 + 3 * 1.5


def test_shards_from_other_settings_are_refused(tiny, samples, tmp_path):
    compute_effort(tiny, samples, LoraConfig(), EffortConfig(shard_size=3), tmp_path, progress=False)
    with pytest.raises(ArtifactMismatchError, match="fingerprint"):
        compute_effort(tiny, samples, LoraConfig(r=4), EffortConfig(shard_size=3), tmp_path, progress=False)
    # the batch size does not change scores, so it may change on resume
    compute_effort(tiny, samples, LoraConfig(), EffortConfig(shard_size=3, batch_size=1), tmp_path, progress=False)
    redone = compute_effort(tiny, samples, LoraConfig(r=4), EffortConfig(shard_size=3), tmp_path,
                            progress=False, overwrite=True)
    assert len(redone) == len(samples)


@pytest.mark.parametrize(("change", "message"), [
    (lambda df: df.drop(columns=["output"]), "lack columns"),
    (lambda df: df.assign(sample_id="same"), "more than once"),
])
def test_bad_samples_are_data_errors(tiny, samples, change, message):
    with pytest.raises(DataFormatError, match=message):
        compute_effort(tiny, change(samples), LoraConfig(), EffortConfig(), progress=False)


def test_time_forward(tiny, samples):
    assert time_forward(tiny, samples, EffortConfig()) > 0
    assert time_forward(tiny, samples, EffortConfig(), full_logits=True) > 0


def test_a_sample_beyond_the_model_context_is_refused_before_any_work(tiny, samples, tmp_path, monkeypatch):
    # Past max_position_embeddings a model fails or degrades, and one very long row in a batch costs memory
    # with the square of its length: name the row instead of attempting it.
    monkeypatch.setattr(tiny.model.config, "max_position_embeddings", 400)
    long_ones = samples.assign(output=[o if i != 3 else "x" * 500 for i, o in enumerate(samples["output"])])
    with pytest.raises(DataFormatError, match=r"1 of 6 samples are longer than the model's context of 400 tokens.*"
                                              r"sample_id 'u3'"):
        compute_effort(tiny, long_ones, LoraConfig(r=2), EffortConfig(), out_dir=tmp_path)
    assert not (tmp_path / effort.SHARD_DIR).exists()
