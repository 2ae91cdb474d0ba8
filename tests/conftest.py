"""Suite-wide settings: every test runs tiny models, where threads cost more than they save."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    # Tiny tensors gain nothing from intra-op threads, and on a shared 2-core machine threads only contend
    # (measured here: 4x slower with 2 threads under load).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
