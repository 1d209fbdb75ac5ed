"""The tree sampler on a real (tiny, random) Llama through the HF engine.

Exactness is checked without trusting the engine: every leaf's stored log-probs and entropies must equal
a from-scratch recompute of its whole sequence, whatever forks, fallback cuts and partial copies the
tree went through. The same seed must give the same tree.
"""
from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from treepo_lab.engines.base import SamplingParams
from treepo_lab.engines.hf import HFEngine
from treepo_lab.engines.logprobs import sequence_stats
from treepo_lab.rollout.config import BudgetConfig, InitDivConfig, SamplerConfig
from treepo_lab.rollout.sampler import build_sampler

torch.set_num_threads(1)
EOS, PAD, VOCAB = 1, 0, 40
TOL = 1e-4
PROMPTS = [[5, 9, 3], [7, 2, 11, 4, 8]]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      initializer_range=0.3)  # sharp distributions: a wrong KV row shows far above TOL
    return LlamaForCausalLM(cfg).eval()


def decode(ids: list[int]) -> str:
    return "".join(chr(ord("a") + t % 26) for t in ids if t != EOS)


CONFIGS = {
    # budget transfer and EOS stops; fallback restarts every finished kind of leaf at random cuts
    "tree": {"width": 6, "max_depth": 3, "segment_len": 4, "branch": 2, "fallback_candidates": "random_all"},
    # b=1 chains that fall back at the least likely token: cuts inside segments (partial copies)
    "min_logprob": {"width": 5, "max_depth": 3, "segment_len": 4, "branch": 1, "init_div": InitDivConfig("random", 2, 2),
                    "fallback_candidates": "random_all", "fallback_cut": "min_logprob_token", "top_k": 12,
                    "temperature": 0.8},
    "weighted": {"width": 6, "max_depth": 4, "segment_len": 3, "branch": 2,
                 "div_policy": "entropy_weighted_div",
                 "budget": BudgetConfig("random_div", 1, 3), "fallback_candidates": "finished_first",
                 "fallback_window": 5, "require_aligned_window": False, "top_p": 0.9},
    "sequential": {"kind": "sequential", "width": 3, "max_depth": 3, "segment_len": 4},
}


def rollout(model, knobs, seed):
    cfg = SamplerConfig(**knobs)
    engine = HFEngine(model, eos_token_id=EOS, pad_token_id=PAD)
    return cfg, build_sampler(cfg, engine, decode, EOS).rollout(PROMPTS, seed=seed)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_leaf_logprobs_equal_a_recompute(model, name):
    cfg, res = rollout(model, CONFIGS[name], seed=3)
    sampling = SamplingParams(cfg.temperature, cfg.top_p, cfg.top_k)
    prompts, responses, stored_lp, stored_ent = [], [], [], []
    for tree in res.trees:
        assert len(tree.leaves) == cfg.width
        for leaf in tree.leaves:
            assert len(leaf.node_path) <= cfg.max_depth
            prompts.append(tree.prompt_ids)
            responses.append(tree.response_tokens(leaf))
            stored_lp.append(tree.response_logprobs(leaf))
            stored_ent.append(tree.response_entropies(leaf))
    with torch.no_grad():
        lps, ents = sequence_stats(model, prompts, responses, sampling, pad_token_id=PAD)
    for got, want in zip(stored_lp, lps):
        assert torch.allclose(torch.tensor(got), want, atol=TOL), (got, want.tolist())
    for got, want in zip(stored_ent, ents):
        assert torch.allclose(torch.tensor(got), want, atol=TOL)
    m = res.metrics()
    assert m["rollout/decoded_tokens"] == sum(
        len(n.tokens) for t in res.trees for n in t.nodes.values() if n.group_id is None)
    if cfg.kind == "tree":
        assert m["rollout/token_saving"] > 0  # shared prefixes are decoded once


def test_misaligned_run_really_made_partial_copies(model):
    _, res = rollout(model, CONFIGS["min_logprob"], seed=3)
    assert any(n.group_id is not None for t in res.trees for n in t.nodes.values())
    assert sum(res.stats.fallback_requests) > 0


def test_same_seed_same_tree(model):
    a = [t.to_dict() for t in rollout(model, CONFIGS["tree"], seed=7)[1].trees]
    b = [t.to_dict() for t in rollout(model, CONFIGS["tree"], seed=7)[1].trees]
    c = [t.to_dict() for t in rollout(model, CONFIGS["tree"], seed=8)[1].trees]
    assert a == b and a != c


def _shape(tree) -> list:
    """A tree's structure and tokens, without the node ids (a call-wide counter) or float noise."""
    return sorted((tree.response_tokens(lf), lf.finish_reason) for lf in tree.leaves)


@pytest.mark.parametrize("name", ["tree", "weighted", "sequential"])
def test_a_prompt_gets_the_same_tree_whatever_its_neighbours(model, name):
    """What data parallelism rests on: a prompt keyed by its global index gets the same tree alone, with
    other prompts, or placed elsewhere in the call (as on another rank)."""
    cfg = SamplerConfig(**CONFIGS[name])
    sampler = build_sampler(cfg, HFEngine(model, eos_token_id=EOS, pad_token_id=PAD), decode, EOS)
    extra = [[3, 3, 8, 1 + 1], [12, 6]]
    together = sampler.rollout(PROMPTS + extra, seed=5).trees
    alone = [sampler.rollout([p], seed=5, keys=[k]).trees[0] for k, p in enumerate(PROMPTS)]
    moved = sampler.rollout([extra[1], PROMPTS[1]], seed=5, keys=[3, 1]).trees
    assert [_shape(t) for t in together[:2]] == [_shape(t) for t in alone]
    assert _shape(moved[1]) == _shape(together[1]) and _shape(moved[0]) == _shape(together[3])
    other = sampler.rollout([PROMPTS[0]], seed=5, keys=[1]).trees[0]  # another key: another tree
    assert _shape(other) != _shape(together[0])
