"""deft.prune as a pipeline step: the coreset comes back in the input's type with its fields unchanged."""

import tempfile
from pathlib import Path

import pandas as pd
import pytest

import deft
from deft.config import DataConfig, PromptConfig, SamplesConfig
from deft.data import build_samples, load_interactions, split_interactions
from deft.errors import DeftError
from deft.pipeline import split_from_samples

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "bench" / "tiny.yaml"


@pytest.fixture(scope="module")
def pool() -> pd.DataFrame:
    data = DataConfig(source=str(ROOT / "data_samples" / "tiny-recbole"))
    inter = load_interactions(data)
    return build_samples(split_interactions(inter, data), inter.titles, SamplesConfig(max_history=5),
                         PromptConfig(max_tokens=None))


def test_dataframe_in_dataframe_out(pool, tmp_path):
    out = deft.prune(pool, budget=5, config=CONFIG, out=tmp_path / "df", progress=False)
    assert isinstance(out.coreset, pd.DataFrame) and len(out.coreset) == 5
    original = pool.set_index("sample_id")
    for row in out.coreset.to_dict(orient="records"):
        assert row["output"] == original.loc[row["sample_id"], "output"]
    assert {"sample_id", "influence", "effort"} <= set(out.scores.columns)


def test_hf_dataset_in_dataset_out_with_budget_sweep(pool, tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_pandas(pool, preserve_index=False)
    out = deft.prune(ds, budget=[3, "20%"], config=CONFIG, out=tmp_path / "hf", progress=False)
    assert isinstance(out.coreset, datasets.Dataset)
    assert sorted(out.coresets) == [3, round(0.2 * len(pool))]
    assert set(ds.column_names) <= set(out.coreset.column_names)


def test_plain_instruction_data_with_effort_only(tmp_path):
    frame = pd.DataFrame({"instruction": ["Say a colour."] * 6, "input": [str(i) for i in range(6)],
                          "output": ["red", "green", "blue", "cyan", "magenta", "yellow"]})
    out = deft.prune(frame, budget=2, method="effort_only", config=CONFIG, out=tmp_path / "plain", progress=False)
    assert len(out.coreset) == 2 and set(out.coreset["output"]) <= set(frame["output"])


def test_surrogate_scores_need_recommendation_columns(tmp_path):
    frame = pd.DataFrame({"instruction": ["x"] * 4, "input": ["a"] * 4, "output": ["b", "c", "d", "e"]})
    with pytest.raises(DeftError, match="user, history, target_item"):
        deft.prune(frame, budget=2, method="dealrec", config=CONFIG, out=tmp_path / "x", progress=False)


def test_wrong_input_type(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(DeftError, match="datasets.Dataset, a pandas DataFrame or a source name"):
        deft.prune(42, budget=2)
    assert not list(tmp_path.iterdir())  # no temporary run directory left behind


def test_user_sequences_rebuilt_from_windows(pool):
    data = DataConfig(source=str(ROOT / "data_samples" / "tiny-recbole"))
    split = split_interactions(load_interactions(data), data)
    rebuilt = split_from_samples(pool)
    for user, seq in split.train.items():
        if len(seq) >= 2:
            assert rebuilt.train[user] + rebuilt.valid[user] == seq


def test_user_sequences_do_not_depend_on_the_row_order(pool, caplog):
    # DEFT's ids "user:position" place each window, so a shuffled table (Dataset.shuffle) rebuilds the same
    # sequences; windows of repeated items keep their repeats.
    in_order = split_from_samples(pool)
    shuffled = split_from_samples(pool.sample(frac=1.0, random_state=3).reset_index(drop=True))
    assert shuffled.train == in_order.train and shuffled.valid == in_order.valid
    repeats = pd.DataFrame({"sample_id": ["u:2", "u:3", "u:4"], "user": "u", "history": [["a", "a"]] * 3,
                            "target_item": ["a", "a", "b"]})
    assert split_from_samples(repeats.iloc[::-1]).train["u"] == ["a", "a", "a", "a"]  # + "b" validates
    conflict = repeats.assign(history=[["a", "a"], ["a", "x"], ["a", "a"]])
    with pytest.raises(DeftError, match=r"user u: samples 'u:2' and 'u:3' disagree on the item at position 2"):
        split_from_samples(conflict)
    with pytest.raises(DeftError, match=r"user u: sample 'u:1' has 2 history items before position 1"):
        split_from_samples(repeats.assign(sample_id=["u:1", "u:3", "u:4"]))
    # Other ids are merged in table order; a shuffle shows as repeated items, and is reported.
    other_ids = pool.assign(sample_id=[f"s{i}" for i in range(len(pool))])
    assert split_from_samples(other_ids).train == in_order.train and "repeat an item" not in caplog.text
    split_from_samples(other_ids.iloc[::-1])
    assert "repeat an item" in caplog.text


def test_fields_and_types_come_back_unchanged(pool, tmp_path):
    datasets = pytest.importorskip("datasets")
    frame = pool.assign(sample_id=range(100, 100 + len(pool)), genre=pd.Categorical(["a", "b"] * (len(pool) // 2)
                                                                                   + ["a"] * (len(pool) % 2)))
    out = deft.prune(frame, budget=4, method="effort_only", config=CONFIG, out=tmp_path / "df", progress=False)
    assert list(out.coreset.columns) == [*frame.columns, "stratum"]
    assert out.coreset.drop(columns="stratum").dtypes.equals(frame.dtypes)  # int ids, categorical kept
    assert frame["sample_id"].dtype.kind == "i"  # the caller's frame is not modified either
    chosen = [int(i) for i in out.scores["sample_id"].iloc[out.selections[4].indices]]
    assert list(out.coreset["sample_id"]) == chosen

    features = datasets.Features({**datasets.Dataset.from_pandas(pool, preserve_index=False).features,
                                  "label": datasets.ClassLabel(names=["no", "yes"])})
    ds = datasets.Dataset.from_pandas(pool.assign(label=[i % 2 for i in range(len(pool))]), features=features,
                                      preserve_index=False)
    out = deft.prune(ds, budget=4, method="effort_only", config=CONFIG, out=tmp_path / "hf", progress=False)
    assert {k: v for k, v in out.coreset.features.items() if k != "stratum"} == dict(ds.features)
    assert out.coreset["sample_id"] == [ds[int(i)]["sample_id"] for i in out.selections[4].indices]


def test_method_defaults_to_the_configs(pool, tmp_path):
    config = tmp_path / "random.yaml"
    config.write_text(CONFIG.read_text().replace("selection:\n", "selection:\n  method: random\n"))
    out = deft.prune(pool, budget=4, config=config, out=tmp_path / "r", progress=False)
    assert out.selections[4].params["method"] == "random"


@pytest.mark.parametrize(("method", "needs"), [("el2n", "baselines"), ("grand", "baselines"), ("ccs", "baselines"),
                                               ("influence_only", "influence")])
def test_methods_that_need_user_sequences_say_so_before_any_work(method, needs, tmp_path):
    frame = pd.DataFrame({"instruction": ["x"] * 4, "input": ["a"] * 4, "output": ["b", "c", "d", "e"]})
    with pytest.raises(DeftError, match=f"{needs}.*user, history, target_item"):
        deft.prune(frame, budget=2, method=method, config=CONFIG, out=tmp_path / "x", progress=False)
    assert not (tmp_path / "x" / "effort").exists()


def test_bad_sample_tables_name_the_row_and_field(pool, tmp_path):
    with pytest.raises(DeftError, match=r"'output': row 2 \(0-based\): is missing"):
        deft.prune(pool.assign(output=[*pool["output"][:2], None, *pool["output"][3:]]), budget=2,
                   method="random", config=CONFIG, out=tmp_path / "a", progress=False)
    as_text = pool.assign(history=pool["history"].map(lambda h: str(list(h))))  # as read back from a CSV
    with pytest.raises(DeftError, match=r"'history': row 0 \(0-based\): must be a list of item ids, got str"):
        deft.prune(as_text, budget=2, method="random", config=CONFIG, out=tmp_path / "b", progress=False)
    no_user = pool.assign(user=[None, *pool["user"][1:]])  # would drop out of the surrogate's sequences
    with pytest.raises(DeftError, match=r"'user': row 0 \(0-based\): is missing"):
        deft.prune(no_user, budget=2, method="random", config=CONFIG, out=tmp_path / "c", progress=False)
    twice = pool.assign(sample_id=[*pool["sample_id"][:3], pool["sample_id"].iloc[1], *pool["sample_id"][4:]])
    with pytest.raises(DeftError, match=r"'sample_id': row 3 \(0-based\): '.+' repeats the id of row 1 \(0-based\)"):
        deft.prune(twice, budget=2, method="random", config=CONFIG, out=tmp_path / "d", progress=False)


def test_an_input_stratum_column_is_refused_before_any_work(pool, tmp_path):
    datasets = pytest.importorskip("datasets")
    again = datasets.Dataset.from_pandas(pool.assign(stratum=0), preserve_index=False)  # an earlier coreset
    with pytest.raises(DeftError, match="already have a column 'stratum'"):
        deft.prune(again, budget=2, method="random", config=CONFIG, out=tmp_path / "s", progress=False)
    assert not (tmp_path / "s").exists()


def test_a_source_path_may_be_a_path_object(tmp_path):
    out = deft.prune(ROOT / "data_samples" / "tiny-recbole", budget=3, method="random", config=CONFIG,
                     out=tmp_path / "p", progress=False)
    assert isinstance(out.coreset, pd.DataFrame) and len(out.coreset) == 3


def test_a_mistyped_score_is_named_before_the_pool_is_scored(tmp_path):
    from deft.config import load_config
    from deft.pipeline import run_scores

    cfg = load_config(CONFIG)
    with pytest.raises(DeftError, match=r"unknown score \['influense'\]"):
        run_scores(cfg, tmp_path / "s", ["influense"], progress=False)


def test_a_tuple_of_budgets_is_a_sweep_like_a_list():
    from deft.api import _resolve_config

    def budgets(budget):
        return _resolve_config(CONFIG, method=None, model=None, seed=None, lambda_=None, strata=None,
                               hard_prune=None, budget=budget, source=None).selection.budgets

    assert budgets((3, "20%")) == budgets([3, "20%"]) == [3, "20%"]
    assert budgets(3) == [3]


def test_a_failed_run_in_a_temporary_directory_leaves_nothing_behind(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    frame = pd.DataFrame({"instruction": ["Say a colour."] * 4, "input": [""] * 4,
                          "output": ["red", "green", "blue", "cyan"]})
    with pytest.raises(DeftError, match="budget 9 exceeds"):  # refused after the pool is written
        deft.prune(frame, budget=9, method="random", config=CONFIG, progress=False)
    assert not list(tmp_path.iterdir())


def test_a_dataframe_coreset_keeps_the_input_index(tmp_path):
    frame = pd.DataFrame({"instruction": ["Say a colour."] * 6, "input": [str(i) for i in range(6)],
                          "output": ["red", "green", "blue", "cyan", "magenta", "yellow"]},
                         index=[105, 101, 104, 100, 103, 102])
    out = deft.prune(frame, budget=3, method="random", config=CONFIG, out=tmp_path / "idx", progress=False)
    assert set(out.coreset.index) <= set(frame.index) and len(out.coreset) == 3
    pd.testing.assert_frame_equal(out.coreset.drop(columns="stratum"), frame.loc[out.coreset.index])
    chosen = out.selections[3].indices  # positions, as in out.scores' sample_id
    assert list(out.coreset.index) == list(frame.index[chosen])


def test_two_budgets_of_the_same_count_are_refused(tmp_path):
    frame = pd.DataFrame({"instruction": ["Say a colour."] * 20, "input": [str(i) for i in range(20)],
                          "output": ["red", "green", "blue", "cyan"] * 5})
    with pytest.raises(DeftError, match=r"give the sample counts \[4, 4\] for a pool of 20: one count twice"):
        deft.prune(frame, budget=[4, "20%"], method="random", config=CONFIG, out=tmp_path / "d", progress=False)


def test_instruction_data_without_an_input_column(tmp_path):
    frame = pd.DataFrame({"instruction": [f"Name colour {i}." for i in range(6)],
                          "output": ["red", "green", "blue", "cyan", "magenta", "yellow"]})
    out = deft.prune(frame, budget=2, method="effort_only", config=CONFIG, out=tmp_path / "noin", progress=False)
    assert list(out.coreset.columns) == ["instruction", "output", "stratum"]  # the rows as given
    assert out.scores["effort"].gt(0).all()


def test_progress_false_silences_the_hugging_face_bars_and_restores_them(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    from transformers.utils import logging as hf_logging

    import deft.pipeline

    seen = {}

    def run_prune(*args, **kwargs):
        seen["during"] = datasets.is_progress_bar_enabled(), hf_logging.is_progress_bar_enabled()
        raise DeftError("stop here")

    monkeypatch.setattr(deft.pipeline, "run_prune", run_prune)
    frame = pd.DataFrame({"instruction": ["x"] * 3, "input": [""] * 3, "output": ["a", "b", "c"]})
    before = datasets.is_progress_bar_enabled(), hf_logging.is_progress_bar_enabled()
    with pytest.raises(DeftError, match="stop here"):
        deft.prune(frame, budget=1, method="random", config=CONFIG, out=tmp_path / "q", progress=False)
    assert seen["during"] == (False, False)
    assert (datasets.is_progress_bar_enabled(), hf_logging.is_progress_bar_enabled()) == before


def test_repeated_samples_are_named_in_a_warning(tmp_path, caplog):
    frame = pd.DataFrame({"instruction": ["Name a colour."] * 5, "input": [""] * 5,
                          "output": ["red", "green", "red", "blue", "red"]})
    with caplog.at_level("WARNING", logger="deft.pipeline"):
        deft.prune(frame, budget=2, method="random", config=CONFIG, out=tmp_path / "rep", progress=False)
    warned = [r.getMessage() for r in caplog.records if "repeat an earlier sample" in r.getMessage()]
    assert warned == ["2 samples repeat an earlier sample's instruction, input and output (sample_id '2' repeats "
                      "'0'); each copy can be chosen: drop the duplicates first to spend the budget on distinct "
                      "samples"]
