"""Real SmolLM2-135M on real ML-100K samples (marked slow: `make test-slow`)."""

import numpy as np
import pytest

from deft.config import DataConfig, EffortConfig, LoraConfig, PromptConfig, SamplesConfig
from deft.data import build_samples, load_interactions, split_interactions
from deft.models import load_target_llm
from deft.scores.effort import compute_effort

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real():
    loaded = load_target_llm("smollm2-135m")
    data = DataConfig()
    inter = load_interactions(data)
    pool = build_samples(split_interactions(inter, data), inter.titles, SamplesConfig(stride=500), PromptConfig(),
                         tokenizer=loaded.tokenizer)
    return loaded, pool.head(6).reset_index(drop=True)


def test_effort_is_batch_invariant_on_the_real_model(real):
    loaded, pool = real
    one = compute_effort(loaded, pool, LoraConfig(), EffortConfig(batch_size=1), progress=False)
    many = compute_effort(loaded, pool, LoraConfig(), EffortConfig(batch_size=6), progress=False)
    assert np.all(np.isfinite(one["effort"])) and (one["effort"] > 0).all()
    np.testing.assert_allclose(many["effort"], one["effort"], rtol=1e-3)


def test_tokenizer_budget_respected(real):
    loaded, pool = real
    from deft.data import render_prompt

    for row in pool.itertuples():
        text = render_prompt(row.instruction, row.input) + row.output
        assert len(loaded.tokenizer(text)["input_ids"]) + 1 <= PromptConfig().max_tokens
