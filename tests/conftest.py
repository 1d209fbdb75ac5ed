"""Shared test setup: one torch thread (tests run beside each other on small machines) and fixed seeds."""
import random
import signal

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



@pytest.fixture(autouse=True)
def _signal_handlers():
    """SIGINT and SIGTERM handlers as they were before each test: a test that runs a command in-process (which
    installs its own) or a library that sets one (vLLM) must not change how the next test's Ctrl-C behaves."""
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in before.items():
        signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
