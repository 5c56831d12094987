"""Fixtures for the passes tests.

torch runs these small graphs faster on one thread, and much faster on a loaded machine
(OpenMP threads spin against other processes); the previous setting is restored afterwards.
"""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)
