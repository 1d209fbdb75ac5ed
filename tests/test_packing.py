"""Tree packing equals the flat per-leaf update: log-probs, loss and gradients.

The reference is the flat path the update has always used: right-padded rows (`policy.pack`,
`token_logprobs`, `place`) into `ppo_loss`, micro-batches weighted as the trainer weights them. Trees come
from a random trie generator (duplicates, prefixes of other leaves, several prompts, a shared prompt) and
from the real sampler on a tiny random Llama through the HF engine (fallback cuts with partial copies,
EOS at different depths, GRPO's independent samples). KL and entropy terms are on, clipping and dual
clipping are active (the current policy is a perturbed copy of the old one).
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import random

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from treepo_lab.algo.config import LOSS_AGG_MODES, LossConfig
from treepo_lab.algo.loss import ppo_loss
from treepo_lab.engines.hf import HFEngine
from treepo_lab.models.config import TinyModelConfig
from treepo_lab.models.tiny import build_tiny_model
from treepo_lab.models.tokenizer import build_char_tokenizer
from treepo_lab.rollout.config import SamplerConfig
from treepo_lab.rollout.sampler import build_sampler
from treepo_lab.train import packing
from treepo_lab.train.packing import leaf_logprobs, pack_forward, plan_packs, stack_rows, tree_mask
from treepo_lab.train.policy import pack, place, token_logprobs

TOL = {torch.float64: 1e-6, torch.float32: 1e-4}
TEMP = 0.9
LOSS = LossConfig(clip_low=0.05, clip_high=0.08, dual_clip_c=1.5, norm_horizon=48,
                  kl_coef=0.3, kl_type="low_var_kl", entropy_coef=0.02)


def tiny_llama(vocab: int, dtype=torch.float64, attn: str = "sdpa") -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      initializer_range=0.2, attn_implementation=attn)
    return LlamaForCausalLM(cfg).to(dtype)


def perturbed(model, scale: float, seed: int):
    """A nearby policy: ratios away from 1, so clipping, dual clipping and KL all do something."""
    other = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return other


def random_trie_seqs(rng: random.Random, vocab: int) -> list[tuple[list[int], list[int]]]:
    """Leaves that branch at random depths, repeat, end inside another leaf, and span prompts."""
    seqs = []
    shared_prompt = [rng.randrange(4, vocab) for _ in range(5)]
    for prompt in (shared_prompt, [rng.randrange(4, vocab) for _ in range(3)], shared_prompt[:1]):
        stem = [rng.randrange(4, vocab) for _ in range(14)]
        for _ in range(rng.randrange(3, 7)):
            cut = rng.randrange(0, len(stem))
            resp = stem[:cut] + [rng.randrange(4, vocab) for _ in range(rng.randrange(1, 9))]
            seqs.append((prompt, resp))
        seqs.append((prompt, list(seqs[-1][1])))  # a duplicate leaf
        seqs.append((prompt, seqs[-1][1][:2]))  # a leaf that ends inside another
    return seqs


# ---- the two update paths -----------------------------------------------------------------------

def weight(mask: torch.Tensor, n_tok: int, n_leaves: int, mode: str) -> float:
    """The trainer's micro-batch weight: the mini-batch loss is the same whatever the split."""
    return mask.sum().item() / n_tok if mode == "token-mean" else mask.shape[0] / n_leaves


def flat_logprobs(model, seqs, micro: int = 4):
    out = []
    for s in range(0, len(seqs), micro):
        b = pack(seqs[s: s + micro], 0, "cpu")
        lp, _ = token_logprobs(model, b["input_ids"], b["attention_mask"], TEMP)
        out += [lp[j][b["response_mask"][j]] for j in range(lp.shape[0])]
    return out


def flat_loss(model, seqs, old, adv, ref, cfg, micro: int = 4):
    n_tok, total = sum(len(r) for _, r in seqs), 0.0
    for s in range(0, len(seqs), micro):
        rows = list(range(s, min(s + micro, len(seqs))))
        b = pack([seqs[j] for j in rows], 0, "cpu")
        mask = b["response_mask"]
        lp, ent = token_logprobs(model, b["input_ids"], b["attention_mask"], TEMP, with_entropy=True)
        loss, _ = ppo_loss(lp, place([old[j] for j in rows], mask), place([adv[j] for j in rows], mask), mask,
                           cfg, ref_logp=place([ref[j] for j in rows], mask), entropy=ent)
        total = total + loss * weight(mask, n_tok, len(seqs), cfg.loss_agg_mode)
    return total


def tree_loss(model, seqs, old, adv, ref, cfg, budget=None):
    n_tok, total = sum(len(r) for _, r in seqs), 0.0
    for pk in plan_packs(seqs, budget):
        mask = pk.response_mask
        lp, ent = pack_forward(model, pk, TEMP, with_entropy=True)
        loss, _ = ppo_loss(lp, stack_rows(old, pk.leaves, mask), stack_rows(adv, pk.leaves, mask), mask,
                           cfg, ref_logp=stack_rows(ref, pk.leaves, mask), entropy=ent)
        total = total + loss * weight(mask, n_tok, len(seqs), cfg.loss_agg_mode)
    return total


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp(min=1e-30)).item()


def grads(model, loss) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return [p.grad.detach().clone() for p in model.parameters()]


def compare(model, seqs, mode: str, budget, dtype, n_adv_seed: int = 0):
    """Old/ref log-probs each path computes its own way; loss and gradients of both; max rel diffs."""
    old_model, ref_model = perturbed(model, 0.0, 1), perturbed(model, 0.03, 2)
    cur = perturbed(model, 0.02, 3)
    g = torch.Generator().manual_seed(n_adv_seed)
    adv = [torch.randn(len(r), generator=g) for _, r in seqs]  # per-token: a shared token sees several
    with torch.no_grad():
        old_f, ref_f = flat_logprobs(old_model, seqs), flat_logprobs(ref_model, seqs)
        packs = plan_packs(seqs, budget)
        old_t, ref_t = leaf_logprobs(old_model, packs, len(seqs), TEMP), leaf_logprobs(ref_model, packs, len(seqs), TEMP)
    lp_diff = max(rel(t, f) for t, f in zip(old_t + ref_t, old_f + ref_f))
    cfg = dataclasses.replace(LOSS, loss_agg_mode=mode)
    lf, lt = flat_loss(cur, seqs, old_f, adv, ref_f, cfg), tree_loss(cur, seqs, old_t, adv, ref_t, cfg, budget)
    gf, gt = grads(cur, lf), grads(cur, lt)
    return lp_diff, rel(lt.detach(), lf.detach()), max(rel(a, b) for a, b in zip(gt, gf))


# ---- random tries -------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_random_trees_loss_and_gradients_equal_flat(mode, dtype):
    vocab = 24
    model = tiny_llama(vocab, dtype)
    seqs = random_trie_seqs(random.Random(1), vocab)
    for budget in (None, 20):  # one pack; packs split along subtrees, prefixes repeated
        lp_diff, loss_diff, grad_diff = compare(model, seqs, mode, budget, dtype)
        assert lp_diff < TOL[dtype] and loss_diff < TOL[dtype] and grad_diff < TOL[dtype], \
            (budget, lp_diff, loss_diff, grad_diff)


def test_eager_attention_is_exact_too():
    vocab = 24
    model = tiny_llama(vocab, torch.float64, attn="eager")
    seqs = random_trie_seqs(random.Random(2), vocab)
    assert max(compare(model, seqs, "seq-mean-token-mean", 30, torch.float64)) < 1e-6


def test_trie_counts_each_prefix_once_and_mask_is_ancestry():
    seqs = random_trie_seqs(random.Random(3), 24)
    # the unique forwarded prefixes: every prefix of prompt + response[:-1] (a last token is only a target)
    prefixes = {tuple((p + r[:-1])[: k + 1]) for p, r in seqs for k in range(len(p) + len(r) - 1)}
    (one,) = plan_packs(seqs)
    assert one.n_tokens == len(prefixes)
    # rebuild each position's prefix by walking the mask's visible keys: it must be a trie node's prefix
    sees = tree_mask(one, torch.float32)[0, 0] == 0
    ids, pos = one.input_ids.tolist(), one.position_ids.tolist()
    seen_prefixes = set()
    for q in range(one.n_tokens):
        keys = sees[q].nonzero().squeeze(1).tolist()
        assert [pos[k] for k in keys] == list(range(pos[q] + 1))  # exactly one ancestor per depth
        seen_prefixes.add(tuple(ids[k] for k in keys))
    assert seen_prefixes == prefixes
    # packs at a small budget: the same leaves, each once; shared prefixes repeated across packs
    small = plan_packs(seqs, 12)
    assert sorted(i for pk in small for i in pk.leaves) == list(range(len(seqs)))
    assert all(pk.n_tokens <= 12 or len(pk.leaves) == 1 for pk in small)
    assert sum(pk.n_tokens for pk in small) > one.n_tokens


def test_unsupported_attention_falls_back_with_one_log(caplog):
    model = tiny_llama(8, torch.float32)
    assert packing.resolve_packing("tree", model) == "tree"
    model.config._attn_implementation = "flash_attention_2"  # ignores a custom 4-D mask
    packing._warned.clear()
    with caplog.at_level(logging.WARNING, logger="treepo_lab.train.packing"):
        assert packing.resolve_packing("tree", model) == "flat"
        assert packing.resolve_packing("tree", model) == "flat"
    assert len(caplog.records) == 1 and "flash_attention_2" in caplog.records[0].getMessage()
    assert packing.resolve_packing("flat", model) == "flat"


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="empty prompt"):
        plan_packs([([], [1, 2])])
    with pytest.raises(ValueError, match="budget"):
        plan_packs([([1], [2])], budget=0)


# ---- real sampler trees -------------------------------------------------------------------------

SAMPLERS = {
    # b=1 chains that fall back at the least likely token: cuts inside segments (partial copies)
    "partial_copies": {"width": 6, "max_depth": 4, "segment_len": 4, "branch": 1, "init_div_range": [2, 2],
                       "fallback_candidates": "random_all", "fallback_cut": "min_logprob_token"},
    # branching with EOS at different depths and random fallback cuts
    "tree": {"width": 8, "max_depth": 4, "segment_len": 4, "branch": 2, "fallback_candidates": "random_all"},
    # GRPO: independent samples that share only the prompt
    "sequential": {"kind": "sequential", "width": 5, "max_depth": 3, "segment_len": 4},
}


@pytest.fixture(scope="module")
def real_model():
    tok = build_char_tokenizer()
    model = build_tiny_model(TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                                             max_positions=128, seed=0), tok).eval()
    with torch.no_grad():  # a likely EOS in part of the contexts: leaves end at different depths
        model.lm_head.weight[tok.eos_token_id] *= 12
    return model, tok


def sampler_seqs(real_model, knobs: dict, seed: int = 5):
    model, tok = real_model
    engine = HFEngine(model, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    cfg = SamplerConfig(**knobs, temperature=TEMP)
    decode = lambda ids: tok.decode(ids, skip_special_tokens=True)  # noqa: E731
    prompts = [tok("12+7=")["input_ids"], tok("3*4-5=")["input_ids"]]
    res = build_sampler(cfg, engine, decode, tok.eos_token_id).rollout(prompts, seed=seed)
    return res.trees, [(t.prompt_ids, t.response_tokens(lf)) for t in res.trees for lf in t.leaves]


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_real_sampler_trees_equal_flat_for_every_mode(real_model, name):
    trees, seqs = sampler_seqs(real_model, SAMPLERS[name])
    depths = {len(lf.node_path) for t in trees for lf in t.leaves}
    assert len(depths) > 1, depths  # leaves of different depths
    if name == "partial_copies":
        assert any(n.group_id is not None for t in trees for n in t.nodes.values())
    (one,) = plan_packs(seqs)
    assert one.n_tokens < sum(len(p) + len(r) for p, r in seqs)  # something is shared (at least the prompt)
    model = copy.deepcopy(real_model[0]).double()  # sampled in float32, checked in float64
    for mode in LOSS_AGG_MODES:
        for budget in (None, 40):
            diffs = compare(model, seqs, mode, budget, torch.float64)
            assert max(diffs) < TOL[torch.float64], (mode, budget, diffs)


def test_real_sampler_trees_float32(real_model):
    _, seqs = sampler_seqs(real_model, SAMPLERS["partial_copies"])
    model = real_model[0]
    for mode in LOSS_AGG_MODES:
        assert max(compare(model, seqs, mode, 40, torch.float32)) < TOL[torch.float32], mode
