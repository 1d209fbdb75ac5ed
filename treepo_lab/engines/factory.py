"""`build_engine`: pick a generation engine by its config name.

Builders import their engine lazily, so choosing "hf" never imports vLLM and vice versa.
"""
from __future__ import annotations

from treepo_lab.engines.base import Engine
from treepo_lab.registry import Registry

ENGINES: Registry = Registry("engine")


def _special_ids(tokenizer, opts: dict) -> tuple[int, int]:
    """eos/pad ids: explicit opts win, then the tokenizer's; pad falls back to eos (it is masked)."""
    eos = opts.pop("eos_token_id", None)
    pad = opts.pop("pad_token_id", None)
    if eos is None:
        eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise ValueError("no eos_token_id: the tokenizer has none and none was given")
    if pad is None:
        pad = getattr(tokenizer, "pad_token_id", None)
    return int(eos), int(eos if pad is None else pad)


# EngineConfig fields the HF engine has no use for: it runs the model object it is given as is
# (dtype is the model loader's business), so a whole EngineConfig can be passed as opts.
_NOT_FOR_HF = {"name", "dtype", "gpu_memory_utilization", "tensor_parallel_size", "block_size",
               "max_model_len", "enforce_eager", "n_logprobs"}


@ENGINES.register("hf")
def _build_hf(model, tokenizer, **opts) -> Engine:
    import torch

    from treepo_lab.engines.hf import HFEngine

    eos, pad = _special_ids(tokenizer, opts)
    device = opts.pop("device", None)
    if device == "auto":  # the GPU when there is one, else wherever the model already is
        device = "cuda" if torch.cuda.is_available() else None
    unknown = set(opts) - _NOT_FOR_HF
    if unknown:
        raise TypeError(f"hf engine: unknown options {sorted(unknown)}")
    return HFEngine(model, eos_token_id=eos, pad_token_id=pad, device=device)


@ENGINES.register("vllm")
def _build_vllm(model, tokenizer, **opts) -> Engine:
    # vLLM is imported lazily: the HF path must work without it installed
    try:
        from treepo_lab.engines.vllm_engine import build
    except ImportError as err:
        raise ImportError(f"the vLLM engine is not available ({err}); install the [vllm] extra") from err
    return build(model, tokenizer, **opts)


def build_engine(name: str, model, tokenizer, /, **opts) -> Engine:
    """The engine registered as `name` ("hf", "vllm") for this model; opts go to its constructor."""
    return ENGINES.get(name, key="engine")(model, tokenizer, **opts)
