"""Shared settings for the evaluation tests."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread: the tests run many small batched ops, which are several times slower when two threads
    contend with other processes on the shared 2-core machine (measured 7x on the OT re-ranking test)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
