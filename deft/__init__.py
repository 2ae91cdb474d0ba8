"""DEFT: data-efficient fine-tuning of LLMs.

Score a pool of fine-tuning samples (surrogate influence, LLM effort), select a small coreset with
coverage-enhanced stratified sampling, fine-tune with LoRA and evaluate. The library never imports click
(only ``python -m deft`` does, to start the command line).

>>> import deft
>>> out = deft.prune("ml-100k", budget=128, config="configs/demo.yaml", out="runs/ml100k")  # ~12 min on 2 cores
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["prune", "PruneOutput", "__version__"]


def __getattr__(name: str) -> Any:
    # lazy, so `import deft` stays light (no torch) until the API is used
    if name in ("prune", "PruneOutput"):
        from deft import api

        return getattr(api, name)
    raise AttributeError(f"module 'deft' has no attribute {name!r}")
