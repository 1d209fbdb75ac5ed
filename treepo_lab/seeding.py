"""Seeds: the one place where a run seed becomes random state.

`seed_everything` seeds the global generators once per process (Python, NumPy, torch);
`derive_seed` turns (run seed, step, purpose, ...) into an independent, reproducible seed, so every
random draw of a step can be replayed after a resume; `stream_key` is its cheap cousin for the many
per-request keys of a rollout (one per path per segment: an engine mixes it with the token position);
`torch_seeded` runs a block under a fixed torch seed without moving the caller's global torch generator
(model init, seeded sampling in tests and the warm start).

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


_M64 = (1 << 64) - 1
# splitmix64's increment and multipliers (also the HF engine's per-token draws, engines/draws.py)
SPLITMIX_GOLDEN, SPLITMIX_MIX1, SPLITMIX_MIX2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def _splitmix64(x: int) -> int:
    x = (x + SPLITMIX_GOLDEN) & _M64
    x = ((x ^ (x >> 30)) * SPLITMIX_MIX1) & _M64
    x = ((x ^ (x >> 27)) * SPLITMIX_MIX2) & _M64
    return x ^ (x >> 31)


def stream_key(*keys: int) -> int:
    """A well-mixed 63-bit key from integer keys (splitmix64 chained over them; ~1 us, against ~10 us
    for derive_seed). 63 bits: vLLM's per-request seed and torch's int64 take it as it is."""
    x = 0
    for k in keys:
        x = _splitmix64(x ^ (k & _M64))
    return x >> 1


@contextmanager
def torch_seeded(seed: int) -> Iterator[None]:
    """torch's CPU generator seeded with `seed` inside the block, restored after it."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
