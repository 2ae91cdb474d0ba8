"""The data layer: load interactions from any supported format, split them, build instruction samples.

>>> from deft.config import DataConfig, PromptConfig, SamplesConfig
>>> inter = load_interactions(DataConfig(source="ml-100k"))
>>> split = split_interactions(inter, DataConfig())
>>> pool = build_samples(split, inter.titles, SamplesConfig(), PromptConfig())
"""

from deft.data.describe import describe, format_description
from deft.data.loaders import detect_format, load_interactions, natural_key, sort_events
from deft.data.prompts import PROMPT_FORMAT, TEMPLATES, Template, render_prompt, template_for
from deft.data.samples import EVAL_COLUMNS, build_eval_users, build_samples, grounding_titles, valid_samples
from deft.data.splits import split_interactions
from deft.data.types import EVENT_COLUMNS, SAMPLE_COLUMNS, Interactions, Split

__all__ = [
    "EVAL_COLUMNS", "EVENT_COLUMNS", "PROMPT_FORMAT", "SAMPLE_COLUMNS", "TEMPLATES",
    "Interactions", "Split", "Template",
    "build_eval_users", "build_samples", "describe", "detect_format", "format_description", "grounding_titles",
    "load_interactions", "natural_key", "render_prompt", "sort_events", "split_interactions", "template_for",
    "valid_samples",
]
