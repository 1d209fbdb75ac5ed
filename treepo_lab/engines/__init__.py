"""Generation engines: the protocol (base), the HF engine (hf), log-prob recompute (logprobs)."""
from treepo_lab.engines.base import Engine, EngineCounters, SamplingParams, SegmentOut, SegmentRequest
from treepo_lab.engines.factory import ENGINES, build_engine

__all__ = [
    "ENGINES", "Engine", "EngineCounters", "SamplingParams", "SegmentOut", "SegmentRequest", "build_engine",
]
