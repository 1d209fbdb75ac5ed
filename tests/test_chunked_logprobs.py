"""Issue 27, large vocabularies: the trainer's forwards compute logits a chunk of positions at a time
(engines/logprobs.chunked_logprobs) and give the log-probs, entropies and gradients of the full-logits path:
flat rows and tree packs, a Llama and a Gemma 2 (whose final logit soft-cap the chunks apply), many chunks."""
from __future__ import annotations

import random

import pytest
import torch
from test_packing import as_batch, random_trie_seqs, tiny_llama
from transformers import Gemma2Config, Gemma2ForCausalLM

from treepo_lab.engines import logprobs
from treepo_lab.train.packing import forward_packed
from treepo_lab.train.update import forward_leaves

VOCAB = 24


def tiny_gemma2() -> Gemma2ForCausalLM:
    torch.manual_seed(0)
    cfg = Gemma2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=8, max_position_embeddings=256, final_logit_softcapping=3.0,
                       attn_logit_softcapping=None, sliding_window=256, attn_implementation="eager")
    return Gemma2ForCausalLM(cfg).double()


def outputs(model, forward, batch):
    model.zero_grad(set_to_none=True)
    logp, ent, mask = forward(model, batch, list(range(len(batch))), 0.8, with_entropy=True)
    ((logp * mask).sum() + (ent * mask).sum() * 0.1).backward()
    return logp[mask].detach(), ent[mask].detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("forward", [forward_leaves, forward_packed], ids=["flat", "tree"])
@pytest.mark.parametrize("build", [lambda: tiny_llama(VOCAB, torch.float64), tiny_gemma2], ids=["llama", "gemma2"])
def test_chunks_of_three_positions_equal_the_full_logits(monkeypatch, forward, build):
    model = build()
    assert logprobs.head_of(model) is not None
    batch = as_batch(random_trie_seqs(random.Random(3), VOCAB))
    monkeypatch.setattr(logprobs, "LOGIT_CHUNK_ELEMENTS", 3 * VOCAB)  # dozens of chunks
    chunked = outputs(model, forward, batch)
    monkeypatch.setattr(logprobs, "head_of", lambda m: None)  # the model's own forward, all logits at once
    full = outputs(model, forward, batch)
    for a, b in zip(chunked[:2], full[:2]):
        assert torch.allclose(a, b, atol=1e-10, rtol=0)
    assert max(((a - b).norm() / b.norm().clamp(min=1e-30)).item() for a, b in zip(chunked[2], full[2])) < 1e-10


def test_without_gradients_no_checkpointing_is_needed():
    model = tiny_llama(VOCAB, torch.float64)
    batch = as_batch(random_trie_seqs(random.Random(4), VOCAB))
    with torch.no_grad():
        logp, _, mask = forward_packed(model, batch, list(range(len(batch))), 1.0)
    assert not logp.requires_grad and torch.isfinite(logp[mask]).all()
