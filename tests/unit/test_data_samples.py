"""Sample construction, validation samples, evaluation prompts and token-budget trimming, checked by hand."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

from deft.config import DataConfig, PromptConfig, SamplesConfig
from deft.data import (
    SAMPLE_COLUMNS,
    Split,
    build_eval_users,
    build_samples,
    grounding_titles,
    load_interactions,
    render_prompt,
    split_interactions,
    valid_samples,
)
from deft.data.encoding import encode_pair
from deft.data.prompts import truncate_titles

SAMPLES = Path(__file__).resolve().parents[2] / "data_samples"
# Short texts so token counts are easy to check by hand with a whitespace/punctuation tokenizer.
SHORT = PromptConfig(instruction="Recommend.", input_format="Seen: {history}", separator=" | ", max_tokens=None)


@pytest.fixture(scope="module")
def data() -> tuple[Split, dict[str, str]]:
    inter = load_interactions(DataConfig(source=str(SAMPLES / "tiny-recbole")))
    return split_interactions(inter, DataConfig()), inter.titles


@pytest.fixture(scope="module")
def tokenizer():
    """A word-level tokenizer: one token per word and per run of punctuation, EOS </s>."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.Whitespace()
    inter = load_interactions(DataConfig(source=str(SAMPLES / "tiny-recbole")))
    words = {w for t in inter.titles.values() for w, _ in pre.pre_tokenize_str(t)}
    vocab = {w: i for i, w in enumerate(["[UNK]", "</s>", *sorted(words)])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", unk_token="[UNK]")


def rows(frame) -> list[tuple[str, list[str], str]]:
    return [(r.sample_id, list(r.history), r.target_item) for r in frame.itertuples()]


def test_sliding_window(data) -> None:
    split, titles = data
    frame = build_samples(split, titles, SamplesConfig(), PromptConfig())
    assert tuple(frame.columns) == SAMPLE_COLUMNS
    assert rows(frame) == [
        ("1:1", ["1"], "2"), ("1:2", ["1", "2"], "3"), ("1:3", ["1", "2", "3"], "4"),
        ("2:1", ["2"], "7"), ("2:2", ["2", "7"], "1"),
        ("3:1", ["3"], "10"), ("3:2", ["3", "10"], "11"),
        ("4:1", ["14"], "15"),
        ("5:1", ["4"], "5"), ("5:2", ["4", "5"], "6"),
        ("6:1", ["8"], "9"),
        # user 7 has one training item: no sample
        ("10:1", ["15"], "1"), ("10:2", ["15", "1"], "2"), ("10:3", ["15", "1", "2"], "3"),
        ("10:4", ["15", "1", "2", "3"], "4"), ("10:5", ["15", "1", "2", "3", "4"], "5"),
        ("10:6", ["15", "1", "2", "3", "4", "5"], "6"), ("10:7", ["15", "1", "2", "3", "4", "5", "6"], "7"),
        ("10:8", ["15", "1", "2", "3", "4", "5", "6", "7"], "8"),
        ("10:9", ["15", "1", "2", "3", "4", "5", "6", "7", "8"], "9"),
        ("10:10", ["15", "1", "2", "3", "4", "5", "6", "7", "8", "9"], "10"),
        ("10:11", ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10"], "11"),  # at most max_history = 10
    ]
    first = frame.iloc[1]
    assert first["user"] == "1"
    assert first["instruction"] == ("Given the movies the user watched before, recommend the next movie the user "
                                    "will watch.")
    assert first["input"] == "The user watched: The Clockwork Garden (1987); Paper Lanterns Over Oslo (1992)."
    assert first["output"] == "The Last Ferry to Marlow (1979)"


def test_stride_and_min_history(data) -> None:
    split, titles = data
    frame = build_samples(split, titles, SamplesConfig(stride=3), SHORT)
    assert list(frame["sample_id"]) == ["1:1", "2:1", "3:1", "4:1", "5:1", "6:1", "10:1", "10:4", "10:7", "10:10"]
    frame = build_samples(split, titles, SamplesConfig(stride=2, min_history=2, max_history=3), SHORT)
    assert rows(frame) == [
        ("1:2", ["1", "2"], "3"), ("2:2", ["2", "7"], "1"), ("3:2", ["3", "10"], "11"), ("5:2", ["4", "5"], "6"),
        ("10:2", ["15", "1"], "2"), ("10:4", ["1", "2", "3"], "4"), ("10:6", ["3", "4", "5"], "6"),
        ("10:8", ["5", "6", "7"], "8"), ("10:10", ["7", "8", "9"], "10"),
    ]


def test_last_per_user(data) -> None:
    split, titles = data
    frame = build_samples(split, titles, SamplesConfig(construction="last_per_user"), PromptConfig())
    assert rows(frame) == [
        ("1:3", ["1", "2", "3"], "4"), ("2:2", ["2", "7"], "1"), ("3:2", ["3", "10"], "11"), ("4:1", ["14"], "15"),
        ("5:2", ["4", "5"], "6"), ("6:1", ["8"], "9"),
        ("10:11", ["15", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10"], "11"),  # all earlier items
    ]


def test_valid_samples(data) -> None:
    split, titles = data
    frame = valid_samples(split, titles, SamplesConfig(), PromptConfig())
    assert tuple(frame.columns) == SAMPLE_COLUMNS
    assert rows(frame) == [
        ("1:4", ["1", "2", "3", "4"], "5"), ("2:3", ["2", "7", "1"], "8"), ("3:3", ["3", "10", "11"], "12"),
        ("5:3", ["4", "5", "6"], "7"), ("6:2", ["8", "9"], "10"), ("7:1", ["12"], "13"),
        ("10:12", ["2", "3", "4", "5", "6", "7", "8", "9", "10", "11"], "12"),
    ]
    assert frame.iloc[6]["output"] == "Midnight at the Lighthouse (1994)"


def test_eval_users_test_and_valid(data) -> None:
    split, titles = data
    test = build_eval_users(split, titles, SHORT, SamplesConfig(), which="test")
    assert list(test.columns) == ["user", "history", "targets", "instruction", "input", "seen"]
    assert [(r.user, list(r.history), list(r.targets)) for r in test.itertuples()] == [
        ("1", ["1", "2", "3", "4", "5"], ["6"]), ("2", ["2", "7", "1", "8"], ["9"]),
        ("3", ["3", "10", "11", "12"], ["13"]), ("5", ["4", "5", "6", "7"], ["1"]), ("6", ["8", "9", "10"], ["11"]),
        ("7", ["12", "13"], ["14"]), ("10", ["3", "4", "5", "6", "7", "8", "9", "10", "11", "12"], ["13"]),
    ]
    assert test.iloc[5]["input"] == "Seen: Midnight at the Lighthouse (1994) | Tin Soldiers Dance (1999)"
    assert test.iloc[5]["instruction"] == "Recommend."
    valid = build_eval_users(split, titles, SHORT, SamplesConfig(max_history=2), which="valid")
    # the prompt keeps the last 2 items; `seen` (what exclude_history removes) keeps them all
    assert list(valid.iloc[0]["seen"]) == ["1", "2", "3", "4"] and list(valid.iloc[0]["history"]) == ["3", "4"]
    assert [(r.user, list(r.history), list(r.targets)) for r in valid.itertuples()] == [
        ("1", ["3", "4"], ["5"]), ("2", ["7", "1"], ["8"]), ("3", ["10", "11"], ["12"]), ("5", ["5", "6"], ["7"]),
        ("6", ["8", "9"], ["10"]), ("7", ["12"], ["13"]), ("10", ["10", "11"], ["12"]),
    ]


def test_eval_prompts_cut_the_history_as_their_construction_trains_on_it(data) -> None:
    """last_per_user trains on whole histories, so its test prompts keep them whole too (one template and one
    history rule for training and inference); the windows keep max_history items in both."""
    split, titles = data
    for construction in ("last_per_user", "sliding_window"):
        cfg = SamplesConfig(construction=construction, max_history=2)
        valid = {r.user: list(r.history) for r in valid_samples(split, titles, cfg, SHORT).itertuples()}
        prompts = {r.user: list(r.history) for r in build_eval_users(split, titles, SHORT, cfg, which="valid")
                   .itertuples()}
        assert prompts == valid
        longest = max(len(h) for h in prompts.values())
        assert longest == (12 if construction == "last_per_user" else 2)  # user 10: 12 training items


def test_eval_users_temporal_targets_are_all_period_items() -> None:
    inter = load_interactions(DataConfig(source=str(SAMPLES / "tiny-recbole")))
    split = split_interactions(inter, DataConfig(split="temporal"))
    test = build_eval_users(split, inter.titles, SHORT, SamplesConfig(), which="test")
    assert [(r.user, list(r.targets)) for r in test.itertuples()] == [
        ("1", ["6"]), ("2", ["9"]), ("5", ["1"]), ("7", ["14"]), ("10", ["13"])]
    assert list(test.iloc[4]["history"]) == ["3", "4", "5", "6", "7", "8", "9", "10", "11", "12"]  # train + valid


def token_count(tokenizer, row) -> int:
    return len(encode_pair(tokenizer, render_prompt(row.instruction, row.input), row.output).input_ids)


@pytest.mark.parametrize(("budget", "kept"), [(40, ["9", "10"]), (41, ["8", "9", "10"]), (20, []), (12, [])])
def test_trimming_drops_oldest_items_to_fit(data, tokenizer, budget: int, kept: list[str]) -> None:
    # Sample 10:11, target "The Copper Astronomer (1976)": 6 tokens + EOS. The prompt's fixed part is 13 tokens
    # (### Instruction : Recommend . ### Input : Seen : ### Response :). Newest history titles: item 10
    # "Crème Brûlée at Dawn (1990)" 7 tokens, item 9 "Running with Foxes (2004)" 6, item 8 6, each after a "|".
    # 20 + 7 = 27; + 1 + 6 = 34; + 1 + 6 = 41.
    split, titles = data
    prompt = PromptConfig(instruction="Recommend.", input_format="Seen: {history}", separator=" | ",
                          max_tokens=budget)
    frame = build_samples(split, titles, SamplesConfig(), prompt, tokenizer=tokenizer)
    row = frame.set_index("sample_id").loc["10:11"]
    assert list(row["history"]) == kept
    assert row["input"] == "Seen: " + " | ".join(titles[i] for i in kept)


def test_samples_trimmed_below_min_history_are_kept_and_counted(data, tokenizer, caplog) -> None:
    split, titles = data
    prompt = PromptConfig(instruction="Recommend.", input_format="Seen: {history}", separator=" | ", max_tokens=20)
    with caplog.at_level("WARNING", logger="deft.data.samples"):
        frame = build_samples(split, titles, SamplesConfig(min_history=2), prompt, tokenizer=tokenizer)
    short = frame[frame["history"].map(len) < 2]
    assert len(short) > 0 and len(frame) == len(build_samples(split, titles, SamplesConfig(min_history=2), SHORT))
    warning = [r.getMessage() for r in caplog.records if "min_history=2" in r.getMessage()]
    assert len(warning) == 1 and warning[0].startswith(f"{len(short)} sample(s) keep fewer than min_history=2")
    assert short["sample_id"].iloc[0] in warning[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger="deft.data.samples"):
        build_samples(split, titles, SamplesConfig(min_history=2), PromptConfig(max_tokens=400), tokenizer=tokenizer)
    assert not [r for r in caplog.records if "min_history" in r.getMessage()]


def test_trimmed_samples_fit_and_are_maximal(data, tokenizer) -> None:
    split, titles = data
    prompt = PromptConfig(max_tokens=60)
    frame = build_samples(split, titles, SamplesConfig(construction="last_per_user"), prompt, tokenizer=tokenizer)
    template_rows = build_samples(split, titles, SamplesConfig(construction="last_per_user"), PromptConfig())
    for row, full in zip(frame.itertuples(), template_rows.itertuples(), strict=True):
        assert token_count(tokenizer, row) <= 60
        history, longer = list(row.history), list(full.history)
        assert history == longer[len(longer) - len(history):]  # a suffix: the oldest items went first
        if len(history) < len(longer):
            one_more = longer[len(longer) - len(history) - 1:]
            text = "The user watched: " + "; ".join(titles[i] for i in one_more) + "."
            assert len(encode_pair(tokenizer, render_prompt(row.instruction, text), row.output).input_ids) > 60
    assert len(frame.iloc[-1]["history"]) < 11  # user 10's 11 items do not fit in 60 tokens


def test_over_long_title_is_truncated_not_fatal(data, tokenizer) -> None:
    split, titles = data
    titles = dict(titles)
    titles["3"] = "The Unfinished Symphony of Dr. Lark " * 40  # 280 tokens
    prompt = PromptConfig(max_tokens=64, max_title_tokens=4)
    frame = build_samples(split, titles, SamplesConfig(), prompt, tokenizer=tokenizer)
    by_id = frame.set_index("sample_id")
    assert by_id.loc["1:2", "output"] == "The Unfinished Symphony of"
    assert by_id.loc["1:3", "input"].endswith("; The Unfinished Symphony of.")
    assert all(token_count(tokenizer, r) <= 64 for r in frame.itertuples())
    untrimmed = build_samples(split, titles, SamplesConfig(), PromptConfig(max_tokens=64))
    assert untrimmed.set_index("sample_id").loc["1:2", "output"] == titles["3"]  # no tokenizer: no trimming


@pytest.fixture(scope="module")
def byte_tokenizer():
    """A byte-level tokenizer without merges: one token per UTF-8 byte, so a cut can split a character."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE({c: i for i, c in enumerate(alphabet)}, []))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend)


@pytest.mark.parametrize(("title", "limit", "cut"), [
    ("Café au lait (1999)", 4, "Caf"),  # the 4th token is the first byte of "é"
    ("Café au lait (1999)", 5, "Café"),
    ("日本語の映画", 5, "日"),  # 3 bytes per character
    ("🎬 Premiere Night", 3, ""),  # the first character alone needs 4 tokens
    ("Bad \ufffd byte and more", 8, "Bad \ufffd"),  # a U+FFFD the title has may stay
])
def test_truncated_title_never_splits_a_character(byte_tokenizer, title: str, limit: int, cut: str) -> None:
    text = truncate_titles(byte_tokenizer, [title], limit)[title]
    assert text == cut
    assert text.count("\ufffd") <= title.count("\ufffd")
    assert len(byte_tokenizer(text, add_special_tokens=False)["input_ids"]) <= limit


def test_eval_users_reserve_room_for_the_answer(data, tokenizer) -> None:
    split, titles = data
    prompt = PromptConfig(instruction="Recommend.", input_format="Seen: {history}", separator=" | ",
                          max_tokens=45, max_title_tokens=8)
    frame = build_eval_users(split, titles, prompt, SamplesConfig(), tokenizer=tokenizer)
    for row in frame.itertuples():
        n = len(tokenizer(render_prompt(row.instruction, row.input), add_special_tokens=False)["input_ids"])
        assert n + 8 + 1 <= 45


def test_row_order_is_natural_and_deterministic(data) -> None:
    split, titles = data
    shuffled = Split({u: split.train[u] for u in reversed(list(split.train))}, split.valid, split.test, split.kind)
    a = build_samples(split, titles, SamplesConfig(), PromptConfig())
    b = build_samples(shuffled, titles, SamplesConfig(), PromptConfig())
    assert list(a["sample_id"]) == list(b["sample_id"])
    assert list(dict.fromkeys(a["user"])) == ["1", "2", "3", "4", "5", "6", "10"]


def test_ml100k_sample_counts() -> None:
    try:
        importlib.metadata.distribution("recbole")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("recbole is not installed (pip install --no-deps recbole==1.2.1): the real ML-100K ships in it")
    inter = load_interactions(DataConfig())
    split = split_interactions(inter, DataConfig())
    # 943 users, n_u events each: n_u - 2 training items give n_u - 3 windows (stride 1), ceil((n_u - 3) / 10).
    assert len(build_samples(split, inter.titles, SamplesConfig(stride=1), PromptConfig())) == 97_171
    assert len(build_samples(split, inter.titles, SamplesConfig(stride=10), PromptConfig())) == 10_132
    assert len(build_samples(split, inter.titles, SamplesConfig(construction="last_per_user"), PromptConfig())) == 943


def test_generations_are_grounded_to_the_titles_the_samples_answer_with(data, tokenizer) -> None:
    split, titles = data
    titles = dict(titles)
    titles["3"] = "The Unfinished Symphony of Dr. Lark " * 40
    prompt = PromptConfig(max_tokens=64, max_title_tokens=4)
    frame = build_samples(split, titles, SamplesConfig(), prompt, tokenizer=tokenizer)
    grounded = grounding_titles(titles, prompt, tokenizer)
    assert grounded["3"] == "The Unfinished Symphony of" == frame.set_index("sample_id").loc["1:2", "output"]
    assert all(grounded[r.target_item] == r.output for r in frame.itertuples())  # every answer grounds exactly
    assert set(grounded) == set(titles)  # the whole catalogue, not only the items samples name
    assert grounding_titles(titles, PromptConfig(max_tokens=None), tokenizer) == titles  # no budget: nothing cut
