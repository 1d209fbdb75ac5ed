"""The engine protocol: what every generation engine offers the samplers.

The sampler never knows which engine runs it. It submits one `SegmentRequest` per path to continue;
the engine continues each by up to `max_tokens` tokens and returns one `SegmentOut` per request.

Path identity is how the HF engine shares prefixes: a request names the path (`parent_id`) whose
state it continues. The engine keeps the KV cache of every live path after each `generate` call;
several requests with the same `parent_id` fork that path (cache rows are copied, the prefix is never
recomputed). A request with `parent_id=None` (a new root, or a fallback cut) is prefilled from its
context. Paths not named as a parent in a call are released. Engines that resubmit full contexts
(vLLM, with automatic prefix caching) may ignore `parent_id`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1 or 0: off

    def __post_init__(self):
        from treepo_lab.registry import ConfigError

        if not self.temperature > 0:
            raise ConfigError("temperature", self.temperature, "a number > 0")
        if not 0 < self.top_p <= 1:
            raise ConfigError("top_p", self.top_p, "a number in (0, 1]")
        if self.top_k < -1:
            raise ConfigError("top_k", self.top_k, "-1 or 0 (off) or a positive integer")


@dataclass
class SegmentRequest:
    path_id: int  # id of the path this request creates (the new segment node)
    context: list[int]  # full token context: prompt + response so far
    parent_id: int | None = None  # live path whose engine state this continues; None = prefill context
    # the key of this request's random stream (its token t is drawn from (seed, t) alone), so a path's
    # tokens do not depend on which other requests share the call: the sampler keys it by (prompt, step,
    # sibling), and a prompt's tree is the same at any world size. None: keyed by (call seed, path_id)
    seed: int | None = None


@dataclass
class SegmentOut:
    tokens: list[int]  # new tokens, EOS included when it was sampled
    logprobs: list[float]  # sampled-token log-prob under the distribution actually sampled from
    entropies: list[float]  # entropy of that full next-token distribution at each position
    eos: bool  # the segment ended on EOS


@dataclass
class EngineCounters:
    decoded_tokens: int = 0  # tokens the model produced by decoding
    prefill_tokens: int = 0  # context tokens the model processed in prefill (cache misses for vLLM)
    prefill_cached_tokens: int = 0  # context tokens served from a prefix cache (vLLM)
    forward_calls: int = 0
    forward_s: float = 0.0  # wall time inside model forward calls

    def snapshot(self) -> EngineCounters:
        return EngineCounters(**self.__dict__)

    def since(self, before: EngineCounters) -> EngineCounters:
        return EngineCounters(**{k: v - getattr(before, k) for k, v in self.__dict__.items()})


@runtime_checkable
class Engine(Protocol):
    eos_token_id: int
    counters: EngineCounters

    def generate(
        self, requests: list[SegmentRequest], max_tokens: int, sampling: SamplingParams, seed: int
    ) -> list[SegmentOut]:
        """Continue every request by up to `max_tokens` tokens (stop early at EOS)."""
        ...

    def release(self) -> None:
        """Free the state of every live path (the sampler calls it when a rollout ends)."""
        ...

    def load_weights(self, state_dict: dict) -> None:
        """Take new policy weights (after an optimizer step)."""
        ...

