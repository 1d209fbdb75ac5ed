"""The "hf" entry of the engine registry (engines/factory.py): the HF engine on the policy model itself.

It samples on the model's own device (`model.device` is the one device setting): nothing is moved.
"""
from __future__ import annotations

from dataclasses import fields

from treepo_lab.engines.config import EngineConfig
from treepo_lab.engines.factory import ENGINES, special_ids
from treepo_lab.engines.hf import HFEngine

# EngineConfig fields are vLLM options, the name and hf_decode, so a whole EngineConfig can be passed as opts
_ENGINE_CONFIG_FIELDS = {f.name for f in fields(EngineConfig)}


@ENGINES.implements("hf")
def build(model, tokenizer, **opts) -> HFEngine:
    eos, pad = special_ids(tokenizer, opts)
    unknown = set(opts) - _ENGINE_CONFIG_FIELDS
    if unknown:
        raise TypeError(f"hf engine: unknown options {sorted(unknown)} (the device is the model's: model.device)")
    return HFEngine(model, eos_token_id=eos, pad_token_id=pad, lean_decode=opts.get("hf_decode", "lean") == "lean")
