"""Load any Hugging Face causal LM (a local dir or a hub id), or the embedded warm-started tiny model."""
from __future__ import annotations

from pathlib import Path

import torch

from treepo_lab.models.config import DTYPES, ModelConfig, WarmstartConfig
from treepo_lab.registry import ConfigError
from treepo_lab.validated import ensure_valid


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def cpu_has_bf16() -> bool:
    """oneDNN's bf16 kernels run on this CPU (AVX512 or AMX); elsewhere every bf16 op is emulated."""
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def bf16_problem(device: torch.device) -> str | None:
    """Why bfloat16 would not run well on `device` (None: it does): emulated, it is slower than float32."""
    if device.type != "cpu" or cpu_has_bf16():
        return None
    return "float32 (or float16 on a GPU): this CPU has no native bfloat16 (no AVX512/AMX bf16 for oneDNN)"


def load_model_and_tokenizer(path_or_hub_id: str | Path, dtype: str = "float32", device: str = "auto",
                             trust_remote_code: bool = False):
    """(model in eval mode on `device`, tokenizer) through the Auto classes only."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPES:
        raise ConfigError("model.dtype", dtype, f"one of {', '.join(DTYPES)}")
    torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(path_or_hub_id), trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        str(path_or_hub_id), dtype=torch_dtype, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        # Many released LMs have no pad token; batched generation needs one, and EOS is the usual stand-in.
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(resolve_device(device)).eval(), tokenizer


def resolve_model(cfg: ModelConfig, warmstart_cfg: WarmstartConfig | None = None) -> str:
    """The model to load: `cfg.path` (a .gguf file: its converted HF directory, models/gguf.py), or the
    embedded checkpoint dir for `warmstart_cfg` (default settings when None), warm-started now if not cached."""
    ensure_valid(cfg)
    if cfg.path is not None:
        from treepo_lab.models.gguf import converted, is_gguf

        return str(converted(cfg.path)) if is_gguf(cfg.path) else cfg.path
    from treepo_lab.models.warmstart import warmstart

    return str(warmstart(warmstart_cfg or WarmstartConfig()))
