"""Seeds: the one place where a run seed becomes random state.

`seed_everything` seeds the global generators once per process (Python, NumPy, torch);
`derive_seed` turns (run seed, step, purpose, ...) into an independent, reproducible seed, so every
random draw of a step can be replayed after a resume; `torch_seeded` runs a block under a fixed torch
seed without moving the caller's global torch generator (model init, seeded sampling in tests and
the warm start).

torch is imported by the two functions that seed it, not here: the sampler derives its seeds from
this module, and `treepo-lab show` and every config error must run without importing torch.
"""
from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derive_seed(*keys: int) -> int:
    """A well-mixed 32-bit seed from integer keys, e.g. derive_seed(run_seed, step, purpose)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0])


@contextmanager
def torch_seeded(seed: int) -> Iterator[None]:
    """torch's CPU generator seeded with `seed` inside the block, restored after it."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
