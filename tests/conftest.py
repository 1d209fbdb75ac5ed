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
