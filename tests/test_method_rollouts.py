"""The tree methods' rollout loops on the embedded model (tiny char Llama) through the HF engine: every
leaf's stored log-probs and entropies equal a from-scratch recompute (EPTree forks inside segments, so the
engine's KV reuse must stay exact there too), tree packing is exact on their trees, and each loop does
what its paper says (EPTree forks at the top-N entropy tokens; LATR drops near-duplicate branches)."""
from __future__ import annotations

import copy

import pytest
import torch
from test_packing import TOL as PACK_TOL
from test_packing import compare, real_model  # noqa: F401  (the embedded model fixture)

from treepo_lab.algo.advantage import compute_advantages
from treepo_lab.algo.config import AdvantageConfig
from treepo_lab.config import load_config
from treepo_lab.engines.base import SamplingParams
from treepo_lab.engines.hf import HFEngine
from treepo_lab.engines.logprobs import sequence_stats
from treepo_lab.methods.eptree import EPTreeSampler
from treepo_lab.methods.latr import similarity
from treepo_lab.registry import ConfigError
from treepo_lab.rollout.config import SamplerConfig
from treepo_lab.rollout.sampler import build_sampler
from treepo_lab.rollout.tree import FinishReason, Leaf, Node, Tree

TEMP = 0.9
SHAPE = {"max_depth": 4, "segment_len": 4, "temperature": TEMP}
ROLLOUTS = {  # method -> (sampler knobs, the estimators that train on its trees)
    "eptree": ({"kind": "eptree", "width": 10, "params": {"forks": 2, "rounds": 1, "branches": 2}}, ["treerl"]),
    "latr": ({"kind": "latr", "width": 8, "branch": 2, "params": {"similarity": 0.25},
              "fallback_candidates": "random_all"}, ["treepo"]),
    "tree": ({"kind": "tree", "width": 8, "branch": 2, "fallback_candidates": "random_all"}, ["treerpo", "spo_tree"]),
}


@pytest.fixture(scope="module")
def rollouts(real_model):  # noqa: F811
    model, tok = real_model
    decode = lambda ids: tok.decode(ids, skip_special_tokens=True)  # noqa: E731
    prompts = [tok(p)["input_ids"] for p in ("12+7=", "3*4-5=")]
    out = {}
    for name, (knobs, _) in ROLLOUTS.items():
        cfg = SamplerConfig(**knobs, **SHAPE)
        engine = HFEngine(model, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        out[name] = cfg, build_sampler(cfg, engine, decode, tok.eos_token_id).rollout(prompts, seed=5)
    return out


@pytest.mark.parametrize("name", list(ROLLOUTS))
def test_stored_logprobs_equal_a_recompute_and_packing_is_exact(real_model, rollouts, name):  # noqa: F811
    model, tok = real_model
    cfg, res = rollouts[name]
    prompts, responses, lps, ents = [], [], [], []
    for tree in res.trees:
        assert len(tree.leaves) == cfg.width
        for leaf in tree.leaves:
            prompts.append(tree.prompt_ids)
            responses.append(tree.response_tokens(leaf))
            lps.append(tree.response_logprobs(leaf))
            ents.append(tree.response_entropies(leaf))
            assert len(responses[-1]) <= cfg.max_response_len
    with torch.no_grad():
        want_lp, want_ent = sequence_stats(model, prompts, responses, SamplingParams(TEMP), pad_token_id=tok.pad_token_id)
    for got, want in zip(lps, want_lp):
        assert torch.allclose(torch.tensor(got), want, atol=1e-4)
    for got, want in zip(ents, want_ent):
        assert torch.allclose(torch.tensor(got), want, atol=1e-4)
    seqs = list(zip(prompts, responses))
    diffs = compare(copy.deepcopy(model).double(), seqs, "token-mean", 40)
    assert max(diffs) < PACK_TOL[torch.float64], diffs
    for estimator in ROLLOUTS[name][1]:  # the method's estimator runs on its trees, one value per token
        res_adv = compute_advantages(res.trees, [[1.0 if i % 3 else -1.0 for i in range(len(t.leaves))]
                                                 for t in res.trees], AdvantageConfig(estimator=estimator))
        assert [len(a) for a in res_adv.flat()] == [len(r) for r in responses]


def test_eptree_forked_inside_segments(rollouts):
    cfg, res = rollouts["eptree"]
    for tree in res.trees:
        forks = [nid for nid, n in tree.nodes.items() if sum(c.parent_id == nid for c in tree.nodes.values()) > 1]
        assert len(forks) >= 1
        # a fork inside a segment leaves a head shorter than l whose path length is no multiple of l
        assert any(len(tree.tokens_to(nid)) % cfg.segment_len for nid in forks)
    assert res.stats.counters.prefill_tokens > 0  # forked contexts were prefilled (once per fork point)


def test_eptree_picks_the_top_entropy_tokens_and_splits_there():
    cfg = SamplerConfig(kind="eptree", width=5, max_depth=2, segment_len=4, params={"forks": 2, "branches": 2})
    sampler = EPTreeSampler(engine=None, cfg=cfg, decode=lambda ids: "".join(map(str, ids)), eos_token_id=0)
    sampler._next_id = 100
    tree = Tree(prompt_ids=[9])
    # the chain's first token has the highest entropy but is never a fork (it would start a new chain)
    tree.add(Node(1, None, 1, 1, tokens=[1, 2, 3, 4], logprobs=[-.1, -.2, -.3, -.4], entropies=[5.0, 0.9, 0.2, 0.8]))
    tree.add(Node(2, 1, 2, 2, tokens=[5, 6, 7, 8], logprobs=[-.5] * 4, entropies=[0.3, 0.95, 0.1, 0.1],
                  finish_reason=FinishReason.MAX_LENGTH))
    tree.leaves = [Leaf([1, 2], FinishReason.MAX_LENGTH)]
    forks = sampler._forks(0, tree)
    assert [(p.last, p.response) for p in forks] == [(1, [1]), (1, [1]), (2, [1, 2, 3, 4, 5]), (2, [1, 2, 3, 4, 5])]
    assert tree.leaves[0].node_path == [1, 100, 2, 101]  # the chain is unchanged, cut at both points
    assert tree.response_tokens(tree.leaves[0]) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert tree.response_entropies(tree.leaves[0]) == [5.0, 0.9, 0.2, 0.8, 0.3, 0.95, 0.1, 0.1]
    assert tree.nodes[101].finish_reason == FinishReason.MAX_LENGTH and tree.nodes[2].finish_reason is None
    assert [tree.nodes[n].depth for n in (1, 100, 2, 101)] == [1, 2, 3, 4]


def test_eptree_width_must_be_whole_chains():
    with pytest.raises(ConfigError, match="sampler.width=16 is not allowed: a multiple of 1 \\+ rounds\\*forks\\*branches = 5"):
        load_config("treerl", ["sampler.width=16"])
    with pytest.raises(ConfigError, match="sampler.params.forks=0 is not allowed: an integer >= 1"):
        load_config("treerl", ["sampler.params.forks=0"])


def test_latr_similarity_and_pruning(rollouts):
    assert similarity([1, 2, 3], [1, 2, 3]) == 1.0
    assert similarity([1, 2, 3, 4], [1, 2, 4, 4]) == 0.75  # one substitution in four
    assert similarity([1, 2, 3], [2, 3]) == pytest.approx(2 / 3)  # one deletion
    assert similarity([], [1]) == 0.0
    cfg, res = rollouts["latr"]
    assert res.stats.pruned > 0 and res.metrics()["rollout/pruned"] == res.stats.pruned
    for tree in res.trees:
        pruned = {nid for nid, n in tree.nodes.items() if n.finish_reason == FinishReason.PRUNED}
        on_leaves = {nid for lf in tree.leaves for nid in lf.node_path}
        assert not pruned & on_leaves
        for nid in pruned:  # an earlier kept sibling was at least this similar
            node = tree.nodes[nid]
            sibs = [n for n in tree.nodes.values() if n.parent_id == node.parent_id and n.step == node.step
                    and n.node_id < nid and n.finish_reason != FinishReason.PRUNED]
            assert any(similarity(node.tokens, s.tokens) >= 0.25 for s in sibs)
