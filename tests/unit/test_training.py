"""LoRA training on the tiny model: loss parity, only adapters change, resume, caching, early stopping."""

from __future__ import annotations

import json
from dataclasses import replace

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from deft import training
from deft.artifacts import read_json
from deft.config import LoraConfig, ModelConfig, TrainingConfig
from deft.data.encoding import pad_batch
from deft.errors import ArtifactMismatchError, DataFormatError, OutputExistsError, TrainingDivergedError
from deft.models import load_target_llm, peft_notices_silenced
from deft.training import encode_frame, epoch_batches, label_token_loss, lr_factor, mean_loss, train_lora


@pytest.fixture(scope="module")
def tiny():
    """Where the suite runs: CUDA and bf16 on a GPU machine, so training is checked there too."""
    return load_target_llm("tiny-llama")


@pytest.fixture(scope="module")
def tiny_cpu32():
    """fp32 on the CPU, for the checks that compare numbers exactly or are about fp32 keys."""
    return load_target_llm(ModelConfig(name="tiny-llama", device="cpu", autocast="off"))


def _frame(n: int = 8) -> pd.DataFrame:
    titles = ["Heat (1995)", "Fargo (1996)", "Babe (1995)"]
    return pd.DataFrame({"sample_id": range(n), "instruction": ["Recommend a movie."] * n,
                         "input": [f"The user watched: {titles[i % 3]}; Alien ({1970 + i})." for i in range(n)],
                         "output": [titles[(i + 1) % 3] for i in range(n)]})


def _cfg(**kw) -> TrainingConfig:
    base = {"lr": 2e-2, "epochs": 3, "batch_size": 2, "grad_accum": 2, "warmup_ratio": 0.1, "seed": 0}
    return TrainingConfig(**{**base, **kw})


@pytest.mark.parametrize("loss_on", ["response", "prompt"])
def test_gathered_loss_equals_the_model_loss(tiny_cpu32, loss_on):
    tiny = tiny_cpu32
    encoded = encode_frame(tiny.tokenizer, _frame(3), loss_on)
    batch = pad_batch(encoded, tiny.tokenizer.pad_token_id)
    with torch.no_grad():
        reference = tiny.model(**batch).loss
        total, n = label_token_loss(tiny.model, batch)
    assert n == int((batch["labels"][:, 1:] != -100).sum())
    torch.testing.assert_close(total / n, reference, rtol=1e-5, atol=1e-6)


def test_epoch_batches_cover_every_sample_once_and_are_seeded():
    lengths = [5, 9, 3, 7, 7, 2, 8, 1, 4]
    first = epoch_batches(lengths, 2, seed=0, epoch=0)
    assert sorted(i for b in first for i in b) == list(range(9))
    assert first == epoch_batches(lengths, 2, seed=0, epoch=0)
    assert first != epoch_batches(lengths, 2, seed=0, epoch=1)


def test_lr_warms_up_then_decays_to_zero():
    assert lr_factor(0, 2, 10, "linear") < lr_factor(1, 2, 10, "linear") < 1.0
    assert lr_factor(2, 2, 10, "linear") == 1.0 == lr_factor(2, 2, 10, "cosine")
    assert lr_factor(10, 2, 10, "linear") == 0.0
    assert lr_factor(10, 2, 10, "cosine") == pytest.approx(0.0)


def test_training_changes_only_lora_and_lowers_the_loss(tiny, tmp_path):
    from peft import PeftModel

    base = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    train = pd.concat([_frame(4)] * 4, ignore_index=True)  # a tiny repeated dataset to memorise
    encoded = encode_frame(tiny.tokenizer, train)
    before = mean_loss(tiny, tiny.model, encoded, 8)
    result = train_lora(tiny, train, train.iloc[:4], LoraConfig(), _cfg(lr=5e-2, epochs=4), tmp_path,
                        progress=False)
    after_state = tiny.model.state_dict()
    assert after_state.keys() == base.keys()  # adapters removed again
    assert all(torch.equal(after_state[k], v) for k, v in base.items())  # base weights untouched
    adapter = load_file(str(result.adapter_dir / "adapter_model.safetensors"))
    assert adapter and all("lora_" in k for k in adapter)
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)
    with peft_notices_silenced():
        model = PeftModel.from_pretrained(tiny.model, str(result.adapter_dir))
    try:
        after = mean_loss(tiny, model, encoded, 8)
    finally:
        model.unload()
    assert after < before - 0.2  # from ~ln(258), the uniform guess of a random byte-level model
    log = read_json(result.log_path)
    assert len(log) == result.steps == 4 * 4  # 16 samples / (2 x 2) per step, 4 epochs
    assert {"step", "loss", "lr", "wall_s", "samples_per_s"} <= set(log[0])
    assert (tmp_path / "loss_curve.png").stat().st_size > 0
    assert result.best_valid_loss == min(e["valid_loss"] for e in log if "valid_loss" in e)


def test_finished_training_is_reused_and_a_mismatch_refused(tiny, tmp_path, monkeypatch):
    first = train_lora(tiny, _frame(), None, LoraConfig(), _cfg(epochs=1), tmp_path, progress=False)
    assert first.best_valid_loss is None and (first.adapter_dir / "adapter_config.json").is_file()
    monkeypatch.setattr(training, "label_token_loss", lambda *a: pytest.fail("trained again"))
    assert train_lora(tiny, _frame(), None, LoraConfig(), _cfg(epochs=1), tmp_path, progress=False) == first
    with pytest.raises(ArtifactMismatchError, match="fingerprint"):
        train_lora(tiny, _frame(), None, LoraConfig(), _cfg(epochs=2), tmp_path, progress=False)


def test_outputs_of_no_training_of_ours_are_not_replaced_silently(tiny, tmp_path, monkeypatch):
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")  # someone else's adapter
    with pytest.raises(OutputExistsError, match=r"holds adapter from no training of DEFT's; use --overwrite"):
        train_lora(tiny, _frame(), None, LoraConfig(), _cfg(epochs=1), tmp_path, progress=False)
    assert (tmp_path / "adapter" / "adapter_config.json").read_text() == "{}"
    done = train_lora(tiny, _frame(), None, LoraConfig(), _cfg(epochs=1), tmp_path, progress=False, overwrite=True)
    assert (done.adapter_dir / "adapter_model.safetensors").is_file() and not (tmp_path / training.STARTED).exists()
    # a run killed before its first checkpoint has claimed its directory: the rerun is not refused
    monkeypatch.setattr(training, "label_token_loss", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        train_lora(tiny, _frame(), None, LoraConfig(), _cfg(epochs=1), tmp_path / "killed", progress=False)
    monkeypatch.undo()
    assert (tmp_path / "killed" / training.STARTED).is_file()
    (tmp_path / "killed" / "train_log.json").write_text("[]")  # as a kill between two writes could leave
    assert train_lora(tiny, _frame(), None, LoraConfig(), _cfg(epochs=1), tmp_path / "killed", progress=False).steps


def test_resume_gives_the_same_adapter(tiny, tmp_path, monkeypatch):
    cfg = _cfg(epochs=2, eval_every=1)
    straight = train_lora(tiny, _frame(), _frame(4), LoraConfig(), cfg, tmp_path / "a", progress=False)

    real_save, calls = training._save_checkpoint, []

    def crash_after_second(*args, **kwargs):
        real_save(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as if the process died right after the checkpoint

    monkeypatch.setattr(training, "_save_checkpoint", crash_after_second)
    with pytest.raises(KeyboardInterrupt):
        train_lora(tiny, _frame(), _frame(4), LoraConfig(), cfg, tmp_path / "b", progress=False)
    assert read_json(tmp_path / "b" / "checkpoint" / "state.json")["step"] == 2
    monkeypatch.setattr(training, "_save_checkpoint", real_save)
    # carried to another machine for the rest: the result says which steps ran where
    monkeypatch.setattr(training, "machine_label", lambda: "Other CPU (2 cores)")
    resumed = train_lora(tiny, _frame(), _frame(4), LoraConfig(), cfg, tmp_path / "b", progress=False)

    assert [(s["step"], s["machine"]) for s in resumed.sessions] == [
        (0, straight.sessions[0]["machine"]), (2, "Other CPU (2 cores)")]
    assert resumed.sessions[1]["wall_s"] > 0 and len(straight.sessions) == 1
    assert read_json(tmp_path / "b" / "train_result.json")["sessions"] == resumed.sessions
    assert resumed.steps == straight.steps == 4 and resumed.best_valid_loss == straight.best_valid_loss
    assert resumed.best_epoch == straight.best_epoch is not None
    a = load_file(str(straight.adapter_dir / "adapter_model.safetensors"))
    b = load_file(str(resumed.adapter_dir / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    losses = [[e["loss"] for e in read_json(r.log_path)] for r in (straight, resumed)]
    assert losses[0] == losses[1]
    assert not (tmp_path / "b" / "checkpoint").exists()


def test_resume_from_a_timed_checkpoint_inside_an_epoch(tiny, tmp_path, monkeypatch):
    # Evaluation once per epoch (2 steps), but a time-based resume point after every step.
    cfg = _cfg(epochs=2, checkpoint_every_s=1e-9)
    straight = train_lora(tiny, _frame(), _frame(4), LoraConfig(), cfg, tmp_path / "a", progress=False)

    real_save, calls = training._save_checkpoint, []

    def crash_after_first(*args, **kwargs):
        real_save(*args, **kwargs)
        calls.append(1)
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "_save_checkpoint", crash_after_first)
    with pytest.raises(KeyboardInterrupt):
        train_lora(tiny, _frame(), _frame(4), LoraConfig(), cfg, tmp_path / "b", progress=False)
    state = read_json(tmp_path / "b" / "checkpoint" / "state.json")
    assert (state["step"], state["epoch"], state["next_batch"]) == (1, 0, 2)  # mid-epoch, before any evaluation
    monkeypatch.setattr(training, "_save_checkpoint", real_save)
    # The interval is not part of the fingerprint: resuming with another one continues the same run.
    resumed = train_lora(tiny, _frame(), _frame(4), LoraConfig(), replace(cfg, checkpoint_every_s=0),
                         tmp_path / "b", progress=False)
    a = load_file(str(straight.adapter_dir / "adapter_model.safetensors"))
    b = load_file(str(resumed.adapter_dir / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.best_valid_loss == straight.best_valid_loss


def test_early_stopping_after_patience(tiny, tmp_path):
    # lr 0: the validation loss never improves after the first evaluation, so patience 1 stops at epoch 2.
    result = train_lora(tiny, _frame(), _frame(4), LoraConfig(), _cfg(lr=1e-12, epochs=5, patience=1),
                        tmp_path, progress=False)
    assert result.epochs_run == 2
    assert result.best_epoch == 1.0  # the kept adapter is the first epoch's; the second only confirmed it
    assert read_json(tmp_path / "train_result.json")["best_epoch"] == 1.0


def test_a_nan_validation_loss_stops_training_instead_of_being_kept_as_best(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(training, "mean_loss", lambda *a, **k: float("nan"))
    with pytest.raises(TrainingDivergedError, match=r"validation loss is nan at optimizer step 2: .*training\.lr"):
        train_lora(tiny, _frame(), _frame(4), LoraConfig(), _cfg(), tmp_path, progress=False)
    assert not (tmp_path / "adapter").exists() and not (tmp_path / "train_result.json").exists()


def test_a_nan_training_loss_stops_before_the_optimizer_step(tiny, tmp_path, monkeypatch):
    real = training.label_token_loss
    calls = []

    def poisoned(model, batch):
        loss_sum, count = real(model, batch)
        calls.append(1)
        return (loss_sum * float("nan"), count) if len(calls) == 3 else (loss_sum, count)

    monkeypatch.setattr(training, "label_token_loss", poisoned)
    steps = []
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, *a, **k: steps.append(1))
    with pytest.raises(TrainingDivergedError, match="training loss is nan at optimizer step 1:"):
        train_lora(tiny, _frame(), _frame(4), LoraConfig(), _cfg(), tmp_path, progress=False)
    assert len(steps) == 1  # the first step ran; the poisoned second one never reached the optimizer


def test_best_epoch_of_a_result_saved_without_it_is_read_back_from_the_log(tiny, tmp_path):
    train_lora(tiny, _frame(), _frame(4), LoraConfig(), _cfg(lr=1e-12, epochs=5, patience=1), tmp_path,
               progress=False)
    saved = read_json(tmp_path / "train_result.json")
    assert training.finished_best_epoch(tmp_path) == saved["best_epoch"] == 1.0
    del saved["best_epoch"]  # as written by a version that did not record it
    (tmp_path / "train_result.json").write_text(json.dumps(saved))
    assert training.finished_best_epoch(tmp_path) == 1.0


def test_best_epoch_from_log_takes_the_first_lowest_validation_loss(tmp_path):
    log = [{"step": 4, "loss": 2.0}, {"step": 8, "loss": 1.5, "valid_loss": 1.9},
           {"step": 16, "loss": 1.2, "valid_loss": 1.7}, {"step": 24, "loss": 1.1, "valid_loss": 1.7},
           {"step": 32, "loss": 1.0, "valid_loss": 1.8}]
    (tmp_path / "log.json").write_text(json.dumps(log))
    assert training.best_epoch_from_log(tmp_path / "log.json", steps_per_epoch=8) == 2.0
    (tmp_path / "none.json").write_text(json.dumps(log[:1]))
    assert training.best_epoch_from_log(tmp_path / "none.json", 8) is None
    assert training.best_epoch_from_log(tmp_path / "missing.json", 8) is None


def test_a_change_of_precision_is_a_new_training(tiny_cpu32):
    """fp32 keys carry no precision (they predate it); bf16 weights or autocast make another key."""
    from deft.models import LoadedModel

    tiny = tiny_cpu32

    train, lora = _frame(), LoraConfig()
    amp = LoadedModel(tiny.model, tiny.tokenizer, tiny.device, torch.bfloat16, tiny.name, tiny.fingerprint)
    assert tiny.autocast_dtype is None and tiny.numerics_key() == {}
    assert amp.numerics_key() == {"precision": ["torch.float32", "torch.bfloat16"]}
    fp32 = training.training_fingerprint(tiny, train, None, lora, _cfg())
    assert fp32 == training.training_fingerprint(tiny, train.copy(), None, lora, _cfg())
    assert fp32 != training.training_fingerprint(amp, train, None, lora, _cfg())


def test_a_sample_beyond_the_model_context_is_refused(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(tiny.model.config, "max_position_embeddings", 40)
    train = _frame(4)
    with pytest.raises(DataFormatError, match=r"4 of 4 training samples are longer than the model's context of 40 "
                                              r"tokens \(max_position_embeddings\): sample_id 0 has \d+ tokens"):
        train_lora(tiny, train, None, LoraConfig(r=2), _cfg(epochs=1), tmp_path / "t")
    longest = max(len(e.input_ids) for e in encode_frame(tiny.tokenizer, train))
    monkeypatch.setattr(tiny.model.config, "max_position_embeddings", longest)
    with pytest.raises(DataFormatError, match=r"1 of 1 validation samples are longer .* sample_id 9 has"):
        train_lora(tiny, train, train.iloc[:1].assign(sample_id=9, output="x" * 200), LoraConfig(r=2),
                   _cfg(epochs=1), tmp_path / "t")
    assert not (tmp_path / "t").exists()  # nothing claimed: the corrected run is not refused as a mismatch
