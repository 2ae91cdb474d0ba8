"""Suite-wide settings (every test runs tiny models, where threads cost more than they save) and helpers."""

import importlib.util
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="session")
def benchmark_script():
    """Import a script of benchmarks/ (not a package) by name: ``benchmark_script("carry_state")``."""

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    # Tiny tensors gain nothing from intra-op threads, and on a shared 2-core machine threads only contend
    # (measured here: 4x slower with 2 threads under load).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
