"""Evaluation: metrics on hand-made rankings, grounding, batched generation, the cached evaluate()."""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import pytest
import torch

from deft import evaluation
from deft.artifacts import read_json
from deft.config import EvaluationConfig, LoraConfig
from deft.data.prompts import render_prompt
from deft.errors import ArtifactMismatchError, DataFormatError
from deft.evaluation import (
    compare_evaluations,
    embed_texts,
    evaluate,
    generate,
    ground,
    hit_ranks,
    item_embeddings,
    ndcg_at_k,
    paired_bootstrap,
    recall_at_k,
)
from deft.models import attach_lora, detach_lora, load_target_llm


@pytest.fixture(scope="module")
def tiny():
    return load_target_llm("tiny-llama")


TITLES = {"i1": "Toy Story (1995)", "i2": "Heat (1995)", "i3": "Heat (1995)", "i4": "Fargo (1996)",
          "i5": "Babe (1995)"}


# ----------------------------------------------------------------------------------------------- metrics


def test_single_target_metrics_and_k_beyond_the_list():
    ranked, targets = [["a", "b", "c"]], [{"b"}]
    assert recall_at_k(ranked, targets, 1)[0] == 0.0
    assert recall_at_k(ranked, targets, 2)[0] == 1.0
    assert ndcg_at_k(ranked, targets, 2)[0] == pytest.approx(1 / math.log2(3))
    assert ndcg_at_k(ranked, targets, 50)[0] == pytest.approx(1 / math.log2(3))  # K > list length
    assert recall_at_k([[]], [{"a"}], 10)[0] == 0.0


def test_several_targets_idcg_over_min_targets_k():
    ranked, targets = [["a", "b", "c", "d"]], [{"a", "d", "z"}]
    assert recall_at_k(ranked, targets, 4)[0] == pytest.approx(2 / 3)
    idcg3 = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at_k(ranked, targets, 4)[0] == pytest.approx((1 + 1 / math.log2(5)) / idcg3)
    # K = 2 < |targets|: IDCG has only two positions.
    assert ndcg_at_k(ranked, targets, 2)[0] == pytest.approx(1 / (1 + 1 / math.log2(3)))
    assert ndcg_at_k([["a", "d"]], [{"a", "d"}], 10)[0] == pytest.approx(1.0)


def test_duplicate_titles_share_the_best_rank():
    groups = {"a": "T1", "a2": "T1", "b": "T2", "c": "T3"}
    ranked = [["a", "a2", "b", "c"]] * 3
    targets = [{"a2"}, {"b"}, {"a", "a2"}]
    # a2 is hit at rank 1 through its title; b is the 2nd distinct title, not the 3rd item.
    assert hit_ranks(ranked, targets, groups) == [[1], [2], [1]]
    np.testing.assert_allclose(recall_at_k(ranked, targets, 1, groups), [1, 0, 1])
    np.testing.assert_allclose(ndcg_at_k(ranked, targets, 2, groups), [1, 1 / math.log2(3), 1])
    # Without groups the same lists are scored item by item.
    assert hit_ranks(ranked, targets) == [[2], [3], [1, 2]]


def test_bootstrap_interval_contains_the_mean_difference():
    rng = np.random.default_rng(0)
    b = rng.random(300)
    a = b + 0.05 + 0.1 * rng.standard_normal(300)
    out = paired_bootstrap(a, b, n=500, seed=1)
    assert out["lo"] <= out["mean_diff"] <= out["hi"]
    assert out["mean_diff"] == pytest.approx(float(np.mean(a - b)))
    assert out["p_value"] < 0.05 and out["share_le_zero"] < 0.025
    assert paired_bootstrap(a, b, n=500, seed=1) == out  # seeded
    same = paired_bootstrap(b, b, n=100, seed=0)
    assert same["mean_diff"] == same["lo"] == same["hi"] == 0.0



def _per_user(path, users, ndcg):
    path.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"user": users, "generated": "x", "ndcg@10": ndcg,
                  "recall@10": (np.asarray(ndcg) > 0).astype(float)}).to_parquet(path / "per_user.parquet")
    return path


def test_compare_pairs_users_by_id_not_by_row(tmp_path):
    rng = np.random.default_rng(3)
    b = rng.random(200)
    a = b + 0.1
    users = [f"u{i}" for i in range(200)]
    order = rng.permutation(200)  # B stores the same users in another order
    run_a = _per_user(tmp_path / "a", users, a)
    _per_user(tmp_path / "b" / "eval", [users[i] for i in order], b[order])  # an experiment arm's layout
    table = compare_evaluations(run_a, tmp_path / "b", n=300, seed=2).set_index("metric")
    # paired by user, every difference is exactly +0.1, so the whole interval is +0.1
    assert table.loc["ndcg@10", "mean_diff"] == pytest.approx(0.1)
    assert table.loc["ndcg@10", "lo"] == pytest.approx(0.1) and table.loc["ndcg@10", "hi"] == pytest.approx(0.1)
    assert table.loc["ndcg@10", "a"] == pytest.approx(a.mean()) and table.loc["ndcg@10", "users"] == 200
    assert set(table.index) == {"ndcg@10", "recall@10"}
    only = compare_evaluations(run_a / "per_user.parquet", tmp_path / "b", metrics=["ndcg@10"], n=300)
    assert list(only["metric"]) == ["ndcg@10"]


def test_compare_refuses_different_users_missing_metrics_and_missing_files(tmp_path):
    run_a = _per_user(tmp_path / "a", ["u1", "u2", "u3"], [0.1, 0.2, 0.3])
    run_b = _per_user(tmp_path / "b", ["u1", "u2", "u9"], [0.1, 0.2, 0.3])
    with pytest.raises(DataFormatError, match=r"different users \(1 only here, 1 only in .*u3"):
        compare_evaluations(run_a, run_b)
    with pytest.raises(DataFormatError, match=r"no per-user metric \['ndcg@20'\]"):
        compare_evaluations(run_a, run_a, metrics=["ndcg@20"])
    with pytest.raises(DataFormatError, match="no per-user results"):
        compare_evaluations(run_a, tmp_path / "empty")
    _per_user(tmp_path / "dup", ["u1", "u1", "u2"], [0.1, 0.2, 0.3])
    with pytest.raises(DataFormatError, match="'u1' appears more than once"):
        compare_evaluations(run_a, tmp_path / "dup")
    (tmp_path / "nouser").mkdir()
    pd.DataFrame({"ndcg@10": [0.1]}).to_parquet(tmp_path / "nouser" / "per_user.parquet")
    with pytest.raises(DataFormatError, match="lack the 'user' column"):
        compare_evaluations(run_a, tmp_path / "nouser")
    _per_user(tmp_path / "nan", ["u1", "u2", "u3"], [0.1, float("nan"), 0.3])
    with pytest.raises(DataFormatError, match=r"per_user\.parquet: field 'ndcg@10': row 2 \(user 'u2'\): ndcg@10 is "
                                              r"nan, not a number"):
        compare_evaluations(run_a, tmp_path / "nan")
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataFormatError, match=r"junk\.parquet: not a readable Parquet file"):
        compare_evaluations(tmp_path / "junk.parquet", run_a)
    _per_user(tmp_path / "none", [], [])
    with pytest.raises(DataFormatError, match="per-user results hold no users"):
        compare_evaluations(tmp_path / "none", tmp_path / "none")


# ----------------------------------------------------------------------------------------------- grounding


def test_ground_expands_titles_and_excludes_history():
    ids = list(TITLES)
    emb = np.array([[0, 0], [1, 0], [1, 0], [5, 5], [9, 9]], dtype=np.float32)
    query = np.array([[1.1, 0], [0, 0]], dtype=np.float32)
    ranked = ground(query, emb, ids, TITLES, k_max=2)
    assert ranked[0] == ["i2", "i3", "i1"]  # both "Heat" items at rank 1, then Toy Story
    assert ranked[1] == ["i1", "i2", "i3"]
    assert len(ground(query, emb, ids, TITLES, k_max=10)[0]) == 5  # K beyond the catalogue: everything
    excluded = ground(query, emb, ids, TITLES, k_max=2, exclude=[{"i2", "i3"}, {"i2"}])
    assert excluded[0] == ["i1", "i4"]  # the fully excluded title disappears
    assert excluded[1] == ["i1", "i3"]  # a partly excluded title keeps its other item


def test_exact_title_ranks_first_whatever_the_embeddings_say():
    # Embeddings as low precision might leave them: "Heat (1995)" is not the nearest point to its own text.
    ids = list(TITLES)
    emb = np.array([[0, 0], [1, 0], [1, 0], [5, 5], [9, 9]], dtype=np.float32)
    query = np.array([[0.1, 0], [0.1, 0], [0.1, 0]], dtype=np.float32)
    generated = ["Heat (1995)", "not a title", "Toy Story (1995)"]
    ranked = ground(query, emb, ids, TITLES, k_max=2, generated=generated)
    assert ranked[0] == ["i2", "i3", "i1"]  # the exact title first, then the nearest others
    assert ranked[1] == ["i1", "i2", "i3"]  # no title: plain L2 order
    assert ranked[2] == ["i1", "i2", "i3"]  # already nearest: listed once
    assert ground(query, emb, ids, TITLES, k_max=2)[0] == ["i1", "i2", "i3"]
    # An excluded exact title stays out; its text then ranks by distance alone.
    assert ground(query, emb, ids, TITLES, k_max=2, exclude=[{"i2", "i3"}, set(), set()],
                  generated=generated)[0] == ["i1", "i4"]
    with pytest.raises(ValueError, match="generated has 1 texts for 3 queries"):
        ground(query, emb, ids, TITLES, k_max=2, generated=["Heat (1995)"])


def test_generated_title_grounds_to_itself(tiny, tmp_path):
    item_ids, item_emb = item_embeddings(tiny, TITLES, tmp_path)
    assert item_emb.shape == (5, tiny.model.config.hidden_size) and item_emb.dtype == np.float32
    generated = ["Fargo (1996)", "Heat (1995)", "Babe (1995)"]
    gen_emb = embed_texts(tiny, generated, batch_size=2)
    ranked = ground(gen_emb, item_emb, item_ids, TITLES, k_max=3)
    assert hit_ranks(ranked, [{"i4"}, {"i3"}, {"i5"}], TITLES) == [[1], [1], [1]]
    assert ranked[1][:2] == ["i2", "i3"]


def test_item_embeddings_are_cached(tiny, tmp_path, monkeypatch):
    first = item_embeddings(tiny, TITLES, tmp_path)
    monkeypatch.setattr(evaluation, "embed_texts", lambda *a, **k: pytest.fail("cache not used"))
    second = item_embeddings(tiny, TITLES, tmp_path)
    assert first[0] == second[0] and np.array_equal(first[1], second[1])
    monkeypatch.undo()
    item_embeddings(tiny, TITLES, tmp_path, batch_size=2)  # other batch shapes: another entry, not this one
    assert len(list(tmp_path.glob("item_emb-*.npy"))) == 2


def test_response_cleaning_keeps_the_title_after_a_leading_newline(tiny):
    tok = tiny.tokenizer
    ids = tok("\nHeat (1995)\nFargo (1996)", add_special_tokens=False)["input_ids"]
    assert evaluation._clean(tok, ids + [tok.eos_token_id, *ids]) == "Heat (1995)"
    assert evaluation._clean(tok, tok("  Heat (1995) ", add_special_tokens=False)["input_ids"]) == "Heat (1995)"


def test_embedding_ignores_padding_and_adapters(tiny):
    alone = embed_texts(tiny, ["Heat (1995)"], batch_size=1)
    batched = embed_texts(tiny, ["a much longer title than the other one", "Heat (1995)", ""], batch_size=3)
    # fp32 agrees to float error; in bf16 (a GPU machine) another batch shape rounds differently, by a bf16 step
    # or two (2^-6 = 0.016 at magnitude 2), while attention that leaked into the padding would move it by O(1).
    np.testing.assert_allclose(batched[1], alone[0], atol=1e-5 if tiny.numerics_key() == {} else 5e-2)
    assert np.isfinite(batched).all()
    peft_model = attach_lora(tiny, LoraConfig(), seed=0)
    try:
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=1.0)  # a non-zero adapter that would move the states
        with_lora = embed_texts(tiny, ["Heat (1995)"], batch_size=1)
        assert all(p.requires_grad for n, p in peft_model.named_parameters() if "lora_" in n)
    finally:
        detach_lora(peft_model)
    np.testing.assert_allclose(with_lora, alone, atol=1e-6)


# ----------------------------------------------------------------------------------------------- generation


def test_batched_generation_equals_one_at_a_time(tiny):
    words = ["Heat", "Toy Story", "Fargo and Babe", "Alien", "Zz Top 123 long one"]
    prompts = [render_prompt(w, w) for w in words]  # five lengths, so batches need padding
    cfg = EvaluationConfig(batch_size=3)
    batched = generate(tiny, None, prompts, cfg, max_new_tokens=6)
    single = [generate(tiny, None, [p], EvaluationConfig(batch_size=1), max_new_tokens=6)[0] for p in prompts]
    assert batched == single
    assert len(set(batched)) > 1  # distinct outputs, so a mix-up of the order would show
    assert all("\n" not in g for g in batched)


def test_a_checkpoints_own_generation_settings_do_not_change_greedy_decoding(tiny, monkeypatch):
    """A chat model's generation_config.json may ask for a repetition penalty or ban repeated n-grams;
    transformers would apply them to any field the caller leaves unset, and greedy would no longer be greedy."""
    prompts = [render_prompt(w, w) for w in ["Heat", "Toy Story", "Fargo and Babe"]]
    cfg = EvaluationConfig(batch_size=3)
    plain = generate(tiny, None, prompts, cfg, max_new_tokens=8)
    model_cfg = tiny.model.generation_config
    for field, value in {"repetition_penalty": 5.0, "no_repeat_ngram_size": 1, "min_new_tokens": 8,
                         "suppress_tokens": [tiny.tokenizer.eos_token_id]}.items():
        monkeypatch.setattr(model_cfg, field, value, raising=False)
    assert generate(tiny, None, prompts, cfg, max_new_tokens=8) == plain


def test_killed_generation_resumes_from_its_saved_batches(tiny, tmp_path, monkeypatch):
    words = ["Heat", "Toy Story", "Fargo and Babe", "Alien", "Zz Top 123 long one", "Babe"]
    prompts = [render_prompt(w, w) for w in words]
    cfg, partial = EvaluationConfig(batch_size=2), tmp_path / "partial.parquet"
    whole = generate(tiny, None, prompts, cfg, max_new_tokens=6)
    real, calls = type(tiny.model).generate, []

    def dies_after_two(self, *args, **kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(type(tiny.model), "generate", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        generate(tiny, None, prompts, cfg, max_new_tokens=6, partial=partial, save_every_s=0)
    assert len(pd.read_parquet(partial)) == 4  # the two finished batches
    calls.clear()
    monkeypatch.setattr(type(tiny.model), "generate", lambda self, *a, **k: (calls.append(1), real(self, *a, **k))[1])
    assert generate(tiny, None, prompts, cfg, max_new_tokens=6, partial=partial, save_every_s=0) == whole
    assert len(calls) == 1  # only the batch that had not finished
    monkeypatch.undo()
    one_by_one = tmp_path / "timed.parquet"
    start = time.perf_counter()
    generate(tiny, None, prompts, EvaluationConfig(batch_size=1), max_new_tokens=6, partial=one_by_one, save_every_s=0)
    # the seconds saved with the responses are the whole generation's, not the last batch's
    assert pd.read_parquet(one_by_one)["elapsed_s"].iloc[0] >= 0.5 * (time.perf_counter() - start)


def test_beam_search_runs_batched(tiny):
    prompts = [render_prompt("Recommend.", "The user watched: a."), render_prompt("Recommend.", "b")]
    out = generate(tiny, None, prompts, EvaluationConfig(batch_size=2, num_beams=2), max_new_tokens=4)
    assert len(out) == 2 and all(isinstance(g, str) for g in out)


# ----------------------------------------------------------------------------------------------- evaluate


def _users() -> pd.DataFrame:
    return pd.DataFrame({
        "user": ["u1", "u2", "u3"],
        "history": [["i1"], ["i2", "i4"], ["i5"]],
        "targets": [["i4"], ["i1"], ["i2", "i5"]],
        "instruction": ["Recommend."] * 3,
        "input": ["The user watched: Toy Story (1995).", "The user watched: Heat (1995); Fargo (1996).",
                  "The user watched: Babe (1995)."],
    })


def test_evaluate_writes_results_and_reuses_them(tiny, tmp_path, monkeypatch):
    cfg = EvaluationConfig(batch_size=2, ks=[1, 3], exclude_history=True)
    result = evaluate(tiny, None, _users(), TITLES, cfg, tmp_path, progress=False)
    assert set(result.metrics) == {"recall@1", "ndcg@1", "recall@3", "ndcg@3"}
    assert all(0.0 <= v <= 1.0 for v in result.metrics.values())
    assert (tmp_path / "metrics.json").is_file() and (tmp_path / "per_user.parquet").is_file()
    assert list(result.per_user["user"]) == ["u1", "u2", "u3"]
    assert {"generated", "top3", "hit_ranks", "ndcg@3"} <= set(result.per_user.columns)
    # History items were excluded from every list, and metrics.json says which.
    for hist, top in zip(_users()["history"], result.per_user["top3"], strict=True):
        assert not set(hist) & set(top)
    saved = read_json(tmp_path / "metrics.json")
    assert saved["excluded"] == "the prompt's history items (1.3 per user on average)"
    # The titles were embedded in this evaluation; the per-user speed leaves that one-off cost out.
    assert 0 < saved["title_embedding_s"] < saved["wall_s"]
    assert math.isclose(saved["s_per_user"], (saved["wall_s"] - saved["title_embedding_s"]) / 3, abs_tol=1e-3)
    monkeypatch.setattr(evaluation, "generate", lambda *a, **k: pytest.fail("cache not used"))
    again = evaluate(tiny, None, _users(), TITLES, cfg, tmp_path, progress=False)
    assert again.metrics == result.metrics
    assert not list(tmp_path.glob("partial-generations-*"))  # the saved responses went into per_user.parquet


def test_per_user_results_of_no_evaluation_of_ours_are_not_replaced(tiny, tmp_path):
    from deft.errors import OutputExistsError

    pd.DataFrame({"user": ["x"]}).to_parquet(tmp_path / "per_user.parquet")
    cfg = EvaluationConfig(batch_size=2, ks=[1])
    with pytest.raises(OutputExistsError, match=r"per_user\.parquet exists without the metrics\.json a finished DEFT evaluation"):
        evaluate(tiny, None, _users(), TITLES, cfg, tmp_path, progress=False)
    assert list(pd.read_parquet(tmp_path / "per_user.parquet")["user"]) == ["x"]
    result = evaluate(tiny, None, _users(), TITLES, cfg, tmp_path, progress=False, overwrite=True)
    assert list(result.per_user["user"]) == ["u1", "u2", "u3"]


def test_responses_of_another_unfinished_evaluation_are_not_discarded(tiny, tmp_path):
    from deft.errors import ArtifactMismatchError

    theirs = tmp_path / "partial-generations-0123456789abcdef.parquet"
    pd.DataFrame({"index": [0], "text": ["Heat"], "elapsed_s": [3600.0]}).to_parquet(theirs)
    cfg = EvaluationConfig(batch_size=2, ks=[1])
    with pytest.raises(ArtifactMismatchError, match="responses of an unfinished evaluation with other inputs"):
        evaluate(tiny, None, _users(), TITLES, cfg, tmp_path, progress=False)
    assert theirs.is_file()
    evaluate(tiny, None, _users(), TITLES, cfg, tmp_path, progress=False, overwrite=True)
    assert not theirs.exists()


def test_exclude_history_removes_every_seen_item_not_only_the_prompt(tiny, tmp_path):
    users = _users().assign(seen=[["i1", "i2", "i3"], ["i2", "i4"], ["i1", "i4"]])
    cfg = EvaluationConfig(batch_size=2, ks=[1, 2], exclude_history=True)
    result = evaluate(tiny, None, users, TITLES, cfg, tmp_path, progress=False)
    for seen, top in zip(users["seen"], result.per_user["top2"], strict=True):
        assert not set(seen) & set(top)
    assert read_json(tmp_path / "metrics.json")["excluded"].startswith("every item seen before the target (2.3")


def test_the_items_kept_out_of_the_ranking_are_part_of_the_cached_results_key(tiny, tmp_path):
    users = _users().assign(seen=[["i1", "i2", "i3"], ["i2", "i4"], ["i1", "i4"]])
    cfg = EvaluationConfig(batch_size=2, ks=[1, 2], exclude_history=True)
    evaluate(tiny, None, users, TITLES, cfg, tmp_path, progress=False)
    other = users.assign(seen=[["i1"], ["i2"], ["i4"]])  # same prompts and targets, other items seen
    with pytest.raises(ArtifactMismatchError):  # not the saved results of the first frame
        evaluate(tiny, None, other, TITLES, cfg, tmp_path, progress=False)
