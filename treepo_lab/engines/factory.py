"""`build_engine`: pick a generation engine by its config name (`engine.name`).

The engines need torch (and vLLM), so they are declared by import path and imported on first use
(treepo_lab/registry.py): choosing "hf" never imports vLLM, and checking a config imports neither.
Each builder takes (model, tokenizer, **EngineConfig fields).
"""
from __future__ import annotations

from treepo_lab.engines.base import Engine
from treepo_lab.registry import Registry

# name -> build(model, tokenizer, **opts) -> Engine
ENGINES: Registry = Registry("engine")
ENGINES.declare("hf", "treepo_lab.engines.hf_build:build")
ENGINES.declare("vllm", "treepo_lab.engines.vllm_engine:build")


def special_ids(tokenizer, opts: dict) -> tuple[int, int]:
    """eos/pad ids: explicit opts win (popped), then the tokenizer's; pad falls back to eos (it is masked)."""
    eos = opts.pop("eos_token_id", None)
    pad = opts.pop("pad_token_id", None)
    if eos is None:
        eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise ValueError("no eos_token_id: the tokenizer has none and none was given")
    if pad is None:
        pad = getattr(tokenizer, "pad_token_id", None)
    return int(eos), int(eos if pad is None else pad)


def build_engine(name: str, model, tokenizer, /, **opts) -> Engine:
    """The engine registered as `name` ("hf", "vllm") for this model; opts are EngineConfig fields
    (a whole `vars(cfg.engine)` may be passed) plus eos_token_id / pad_token_id."""
    return ENGINES.get(name, "engine.name")(model, tokenizer, **opts)
