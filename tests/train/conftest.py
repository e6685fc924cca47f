"""Tiny models train faster on one thread than on two, and far faster when other jobs share the cores (idle
OpenMP workers spin on a busy CPU)."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
