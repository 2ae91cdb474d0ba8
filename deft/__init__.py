"""DEFT: data-efficient fine-tuning of LLMs.

Score a pool of fine-tuning samples (surrogate influence, LLM effort), select a small coreset with
coverage-enhanced stratified sampling, fine-tune with LoRA and evaluate. The library never imports click.
"""

__version__ = "0.1.0"
