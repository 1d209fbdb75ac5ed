"""Load any Hugging Face causal LM (a local dir or a hub id), or the embedded warm-started tiny model."""
from __future__ import annotations

from pathlib import Path

import torch

from treepo_lab.models.config import DTYPES, ModelConfig, WarmstartConfig
from treepo_lab.registry import ConfigError


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


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
    """The model to load: `cfg.path`, or the embedded checkpoint dir for `warmstart_cfg` (default
    settings when None), warm-started now if it is not cached."""
    cfg.validate()
    if cfg.path is not None:
        return cfg.path
    from treepo_lab.models.warmstart import warmstart

    return str(warmstart(warmstart_cfg or WarmstartConfig()))
