"""Tree packing equals the flat per-leaf update: log-probs, loss and gradients.

The reference is the flat path the update has always used (`update.forward_leaves`: right-padded rows)
into `ppo_loss`, micro-batches weighted as `update.ppo_update` weights them; the tree side swaps in
`packing.forward_packed` over packs (`split_packs`). Trees come from a random trie generator (duplicates,
prefixes of other leaves, several prompts, a shared prompt) and from the real sampler on a tiny random
Llama through the HF engine (fallback cuts with partial copies, EOS at different depths, GRPO's
independent samples). KL and entropy terms are on, clipping and dual clipping are active (the current
policy is a perturbed copy of the old one). The last tests run `ppo_update` itself both ways.
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
from treepo_lab.rollout.config import InitDivConfig, SamplerConfig
from treepo_lab.rollout.sampler import build_sampler
from treepo_lab.train import packing
from treepo_lab.train.packing import build_pack, forward_packed, split_packs, tree_mask
from treepo_lab.train.update import (LeafBatch, first_epoch, forward_leaves, leaf_logprobs, place,
                                     plan_minibatches, ppo_update)

TOL = {torch.float64: 1e-6, torch.float32: 1e-4}
TEMP = 0.9
HORIZON = 48  # max_response_len: the horizon of seq-mean-token-sum-norm
LOSS = LossConfig(clip_low=0.05, clip_high=0.08, dual_clip_c=1.5, kl_coef=0.3, kl_type="low_var_kl",
                  entropy_coef=0.02)


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


def as_batch(seqs) -> LeafBatch:
    """Leaves in one LeafBatch, a prompt group per distinct prompt."""
    ids: dict[tuple, int] = {}
    groups = [ids.setdefault(tuple(p), len(ids)) for p, _ in seqs]
    return LeafBatch([list(p) for p, _ in seqs], [list(r) for _, r in seqs], groups, 0)


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


# ---- the two forwards under one loss --------------------------------------------------------------

def chunks(batch: LeafBatch, budget, micro: int = 4) -> tuple[list[list[int]], list[list[int]]]:
    """Flat micro-batches of `micro` leaves; tree packs of at most `budget` trie tokens."""
    rows = list(range(len(batch)))
    return ([rows[s: s + micro] for s in range(0, len(rows), micro)],
            split_packs(list(zip(batch.prompts, batch.responses)), rows, budget))


def minibatch_loss(model, batch, parts, forward, old, adv, ref, cfg):
    """One mini-batch's loss as ppo_update builds it: each part's loss weighted by its share of tokens
    (token-mean) or of leaves (the seq-mean modes)."""
    mode, total = cfg.loss_agg_mode, 0.0
    share = (lambda rows: sum(len(batch.responses[j]) for j in rows)) if mode == "token-mean" else len
    whole = sum(share(rows) for rows in parts)
    for rows in parts:
        lp, ent, mask = forward(model, batch, rows, TEMP, with_entropy=True)
        loss, _ = ppo_loss(lp, place([old[j] for j in rows], mask), place([adv[j] for j in rows], mask), mask,
                           cfg, ref_logp=place([ref[j] for j in rows], mask), entropy=ent,
                           max_response_len=HORIZON)
        total = total + loss * (share(rows) / whole)
    return total


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp(min=1e-30)).item()


def grads(model, loss) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return [p.grad.detach().clone() for p in model.parameters()]


def compare(model, seqs, mode: str, budget, seed: int = 0):
    """Old/ref log-probs each path computes its own way; loss and gradients of both; max rel diffs."""
    batch = as_batch(seqs)
    old_model, ref_model, cur = perturbed(model, 0.0, 1), perturbed(model, 0.03, 2), perturbed(model, 0.02, 3)
    g = torch.Generator().manual_seed(seed)
    adv = [torch.randn(len(r), generator=g) for r in batch.responses]  # per token: a shared token sees several
    flat, tree = chunks(batch, budget)
    old_f, ref_f = (leaf_logprobs(m, batch, flat, TEMP) for m in (old_model, ref_model))
    old_t, ref_t = (leaf_logprobs(m, batch, tree, TEMP, forward_packed) for m in (old_model, ref_model))
    lp_diff = max(rel(t, f) for t, f in zip(old_t + ref_t, old_f + ref_f))
    cfg = dataclasses.replace(LOSS, loss_agg_mode=mode)
    lf = minibatch_loss(cur, batch, flat, forward_leaves, old_f, adv, ref_f, cfg)
    lt = minibatch_loss(cur, batch, tree, forward_packed, old_t, adv, ref_t, cfg)
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
        lp_diff, loss_diff, grad_diff = compare(model, seqs, mode, budget)
        assert lp_diff < TOL[dtype] and loss_diff < TOL[dtype] and grad_diff < TOL[dtype], \
            (budget, lp_diff, loss_diff, grad_diff)


def test_eager_attention_is_exact_too():
    vocab = 24
    model = tiny_llama(vocab, torch.float64, attn="eager")
    seqs = random_trie_seqs(random.Random(2), vocab)
    assert max(compare(model, seqs, "seq-mean-token-mean", 30)) < 1e-6


def test_trie_counts_each_prefix_once_and_mask_is_ancestry():
    seqs = random_trie_seqs(random.Random(3), 24)
    # the unique forwarded prefixes: every prefix of prompt + response[:-1] (a last token is only a target)
    prefixes = {tuple((p + r[:-1])[: k + 1]) for p, r in seqs for k in range(len(p) + len(r) - 1)}
    one = build_pack(seqs, list(range(len(seqs))))
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
    parts = split_packs(seqs, list(range(len(seqs))), 12)
    assert sorted(j for rows in parts for j in rows) == list(range(len(seqs)))
    small = [build_pack(seqs, rows) for rows in parts]
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
        build_pack([([], [1, 2])], [0])
    with pytest.raises(ValueError, match="budget"):
        split_packs([([1], [2])], [0], budget=0)


# ---- real sampler trees -------------------------------------------------------------------------

SAMPLERS = {
    # b=1 chains that fall back at the least likely token: cuts inside segments (partial copies)
    "partial_copies": {"width": 6, "max_depth": 4, "segment_len": 4, "branch": 1, "init_div": InitDivConfig("random", 2, 2),
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


def sampler_seqs(real_model, knobs: dict, seed: int = 5, prompts=("12+7=", "3*4-5=")):
    model, tok = real_model
    engine = HFEngine(model, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    cfg = SamplerConfig(**knobs, temperature=TEMP)
    decode = lambda ids: tok.decode(ids, skip_special_tokens=True)  # noqa: E731
    prompts = [tok(p)["input_ids"] for p in prompts]
    res = build_sampler(cfg, engine, decode, tok.eos_token_id).rollout(prompts, seed=seed)
    return res.trees, [(t.prompt_ids, t.response_tokens(lf)) for t in res.trees for lf in t.leaves]


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_real_sampler_trees_equal_flat_for_every_mode(real_model, name):
    trees, seqs = sampler_seqs(real_model, SAMPLERS[name])
    depths = {len(lf.node_path) for t in trees for lf in t.leaves}
    assert len(depths) > 1, depths  # leaves of different depths
    if name == "partial_copies":
        assert any(n.group_id is not None for t in trees for n in t.nodes.values())
    one = build_pack(seqs, list(range(len(seqs))))
    assert one.n_tokens < sum(len(p) + len(r) for p, r in seqs)  # something is shared (at least the prompt)
    model = copy.deepcopy(real_model[0]).double()  # sampled in float32, checked in float64
    for mode in LOSS_AGG_MODES:
        for budget in (None, 40):
            diffs = compare(model, seqs, mode, budget)
            assert max(diffs) < TOL[torch.float64], (mode, budget, diffs)


def test_real_sampler_trees_float32(real_model):
    _, seqs = sampler_seqs(real_model, SAMPLERS["partial_copies"])
    model = real_model[0]
    for mode in LOSS_AGG_MODES:
        assert max(compare(model, seqs, mode, 40)) < TOL[torch.float32], mode


# ---- ppo_update itself, both ways ---------------------------------------------------------------

def run_update(model, batch, adv, cfg, packing_kind: str, budget: int, epochs: int = 2, loss_fn=ppo_loss):
    """Old/ref log-probs and ppo_update (plain SGD, no clipping of the norm) with one packing; the
    parameter change of every tensor."""
    model = copy.deepcopy(model)
    ref_model = perturbed(model, 0.03, 2)
    gen = torch.Generator().manual_seed(11)
    tree = packing_kind == "tree"
    plan = plan_minibatches(batch, epochs, 2, 5, gen, pack_tokens=budget if tree else None)
    forward = forward_packed if tree else forward_leaves
    first = first_epoch(plan)
    old, ref = (leaf_logprobs(m, batch, first, TEMP, forward) for m in (model, ref_model))
    before = [p.detach().clone() for p in model.parameters()]
    ppo_update(model, torch.optim.SGD(model.parameters(), lr=0.02), batch, plan, old, adv, loss_fn, cfg,
               temperature=TEMP, max_response_len=HORIZON, grad_clip=1e9, ref_logp=ref, forward=forward)
    return [p.detach() - b for p, b in zip(model.parameters(), before)]


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_ppo_update_tree_equals_flat(real_model, mode):
    """Two epochs, mini-batches of 2 prompts, flat micro-batches of 5 leaves vs packs of 40 tokens."""
    _, seqs = sampler_seqs(real_model, SAMPLERS["tree"], prompts=("12+7=", "3*4-5=", "9-1="))
    batch = as_batch(seqs)
    g = torch.Generator().manual_seed(4)
    adv = [torch.randn(len(r), generator=g) for r in batch.responses]
    cfg = dataclasses.replace(LOSS, loss_agg_mode=mode)
    model = copy.deepcopy(real_model[0]).double()
    flat, tree = (run_update(model, batch, adv, cfg, kind, 40) for kind in ("flat", "tree"))
    assert max(rel(t, f) for t, f in zip(tree, flat)) < 1e-6


def test_first_packed_minibatch_has_ratio_exactly_one(real_model):
    _, seqs = sampler_seqs(real_model, SAMPLERS["partial_copies"])
    batch = as_batch(seqs)
    seen = []

    def recording(logp, old, adv, mask, cfg, **kw):
        seen.append(((logp - old) * mask).abs().max().item())
        return ppo_loss(logp, old, adv, mask, cfg, **kw)

    run_update(real_model[0], batch, [torch.ones(len(r)) for r in batch.responses], LOSS, "tree", 40,
               epochs=1, loss_fn=recording)
    assert len(seen) > 1 and seen[0] == 0.0  # the same packs as the old log-probs: bit-identical


def test_packing_knob_is_checked():
    from treepo_lab.registry import ConfigError
    from treepo_lab.train.config import TrainerConfig

    with pytest.raises(ConfigError, match="trainer.packing"):
        TrainerConfig(packing="dense").validate()
    with pytest.raises(ConfigError, match="trainer.pack_tokens"):
        TrainerConfig(pack_tokens=0).validate()
    TrainerConfig().validate()
    assert TrainerConfig().packing == "tree"
