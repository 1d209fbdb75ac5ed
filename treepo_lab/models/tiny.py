"""Build the embedded tiny Llama (about 1M parameters) deterministically from a `TinyModelConfig`."""
from __future__ import annotations

from pathlib import Path

from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from treepo_lab.models.config import TinyModelConfig
from treepo_lab.seeding import torch_seeded
from treepo_lab.validated import ensure_valid


def build_tiny_model(cfg: TinyModelConfig, tokenizer: PreTrainedTokenizerBase) -> LlamaForCausalLM:
    """A freshly initialised Llama whose weights depend only on `cfg` (the global RNG is left alone)."""
    ensure_valid(cfg)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    with torch_seeded(cfg.seed):
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    return model


def save_checkpoint(model, tokenizer, path: str | Path) -> Path:
    """Write model (safetensors) and tokenizer so `load_model_and_tokenizer(path)` reads them back."""
    path = Path(path)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path
