"""LoRA adapters through peft (`model.lora.r > 0`; peft is the optional extra `treepo_lab[lora]`).

Only the adapter weights train; the base weights stay frozen, so the optimizer holds (and a checkpoint
saves) the adapter alone. The adapted model is an ordinary module to the rest of the trainer: tree packing
runs its forward with the tree mask (exact, tests/test_lora.py), and the HF engine samples from it through
the model forward (the lean decode step reads base weights directly and would miss the adapters).

A checkpoint holds `adapter/` (peft's adapter weights and config: what `resume` loads back onto the base
model) and `model/`, the adapters merged into the base weights as a plain Hugging Face directory, so
`treepo-lab eval checkpoint=...`, transformers and vLLM load it without peft.
"""
from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

from treepo_lab.models.config import LoraConfig
from treepo_lab.registry import ConfigError

ADAPTER_DIR = "adapter"  # beside model/ in a checkpoint
INSTALL = "pip install 'treepo_lab[lora]' (peft)"


def check_installed(cfg: LoraConfig) -> None:
    """peft importable when adapters are asked for (a preflight check: before any run exists)."""
    if cfg.r and importlib.util.find_spec("peft") is None:
        raise ConfigError("model.lora.r", cfg.r, f"0 (no adapters) unless peft is installed: {INSTALL}")


def check_targets(cfg: LoraConfig, model) -> None:
    """Every target names linear layers of `model` (a skeleton on the meta device will do: no weights read)."""
    linear = {n.split(".")[-1] for n, mod in model.named_modules() if type(mod).__name__ == "Linear"}
    missing = [m for m in cfg.target_modules if m not in linear]
    if missing:
        raise ConfigError("model.lora.target_modules", cfg.target_modules,
                          f"names of the model's linear layers ({', '.join(sorted(linear))}); {missing[0]!r} is not one")


def skeleton(model_cfg, tokenizer, tiny_cfg):
    """The model's modules without weights (meta device): its config (a model dir), or the embedded model's."""
    import torch

    with torch.device("meta"):
        if model_cfg is None:
            from treepo_lab.models.tiny import build_tiny_model

            return build_tiny_model(tiny_cfg, tokenizer)
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_config(model_cfg)


def add_adapters(model, cfg: LoraConfig):
    """`model` with trainable LoRA adapters on `cfg.target_modules` (every other weight frozen; the targets
    were checked by the preflight)."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft_cfg = PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                              target_modules=list(cfg.target_modules), task_type="CAUSAL_LM")
    return get_peft_model(model, peft_cfg)


def is_adapted(model) -> bool:
    return type(model).__name__.startswith("PeftModel")


def save_adapted(model, folder: Path, tokenizer=None) -> None:
    """`folder/adapter` (the adapter) and `folder/model` (base + adapters merged, a plain HF directory)."""
    model.save_pretrained(folder / ADAPTER_DIR)
    merged = copy.deepcopy(model).merge_and_unload()
    merged.save_pretrained(folder / "model", safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder / "model")


def load_adapter_weights(model, folder: Path) -> None:
    """The adapter of a checkpoint's `folder/adapter` into the adapted `model`, in place."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(folder / ADAPTER_DIR / "adapter_model.safetensors")))
