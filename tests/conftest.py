"""Shared test setup: one torch thread (tests run beside each other on small machines) and fixed seeds."""
import random

import numpy as np
import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _fixed_seed():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def ws_cache(tmp_path_factory):
    """One warm-start cache per test session: the short warm start of trainer tests is built once."""
    return str(tmp_path_factory.mktemp("warmstart"))
