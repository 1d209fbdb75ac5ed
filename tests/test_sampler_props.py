"""Property tests of the tree sampler over random configurations and a random scripted engine."""
from __future__ import annotations

import json

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scripted_engine import BOX, EOS, ScriptedEngine, dec, default_logprob

from treepo_lab.rollout import divergence, fallback
from treepo_lab.rollout.config import BudgetConfig, InitDivConfig, SamplerConfig, validate
from treepo_lab.rollout.sampler import build_sampler
from treepo_lab.rollout.tree import FinishReason, Tree

torch.set_num_threads(1)


def random_script(seed: int, p_eos: float, p_box: float):
    """Segments drawn from (seed, path_id): siblings differ, reruns repeat."""
    def script(req, call, i):
        rng = np.random.default_rng([seed, req.path_id])
        eos = rng.random() < p_eos
        n = int(rng.integers(0 if eos else 1, 9))  # an EOS-only segment is possible
        toks = [int(t) for t in rng.integers(2, 6, size=n)]  # letters a..d
        if n and rng.random() < p_box:
            toks[int(rng.integers(n))] = BOX
        return toks + [EOS] * eos

    return script


@st.composite
def configs(draw):
    l = draw(st.integers(1, 6))
    cut = draw(st.sampled_from(fallback.CUT_POLICIES.names()))
    aligned = draw(st.booleans())
    window = draw(st.sampled_from([None, l, 2 * l] if aligned else [None, l + 1, 2 * l + 1]))
    init = draw(st.one_of(st.just(InitDivConfig("fixed")),
                          st.tuples(st.integers(1, 4), st.integers(0, 6)).map(
                              lambda t: InitDivConfig("random", t[0], t[0] + t[1]))))
    budget = draw(st.one_of(st.just(BudgetConfig("fixed_div")), st.just(BudgetConfig("random_div", 1, 3)),
                            st.integers(1, 64).map(lambda n: BudgetConfig("step_token_budget", tokens=n))))
    boxed = draw(st.sampled_from(["boxed", "boxed_with_eos"]))
    rules = ([boxed, "eos", "max_length", "max_depth", "repetition"] if draw(st.booleans())
             else ["repetition", boxed, "eos", "max_length", "max_depth"])
    d = draw(st.integers(1, 5))
    return SamplerConfig(
        kind=draw(st.sampled_from(["tree", "tree", "tree", "sequential"])),
        width=draw(st.integers(1, 8)), max_depth=d, segment_len=l, branch=draw(st.integers(1, 4)),
        init_div=init, budget=budget,
        div_policy=draw(st.sampled_from(divergence.DIV_POLICIES.names())),
        div_temperature=draw(st.sampled_from([0.5, 1.0, 2.0])),
        stop_rules=rules,
        repetition_window=draw(st.integers(1, 4)), repetition_count=draw(st.integers(2, 6)),
        min_len=draw(st.sampled_from([None, min(3, d * l)])),
        fallback_candidates=draw(st.sampled_from(fallback.CANDIDATE_POLICIES.names())),
        fallback_min_windows=draw(st.integers(1, 2)),
        fallback_cut=cut, fallback_window=window, require_aligned_window=aligned,
        max_fallback_window=draw(st.sampled_from([None] if cut == "min_logprob_token" else [None, 1, 2, 3])),
        fallback_block_size=draw(st.integers(1, 5)),
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=configs(), n_prompts=st.integers(1, 3), seed=st.integers(0, 2**16),
       p_eos=st.sampled_from([0.1, 0.4, 0.9]), p_box=st.sampled_from([0.0, 0.2]))
def test_tree_invariants(cfg, n_prompts, seed, p_eos, p_box):
    validate(cfg)
    prompts = [[40 + r, 50 + r] for r in range(n_prompts)]
    engine = ScriptedEngine(random_script(seed, p_eos, p_box))
    result = build_sampler(cfg, engine, dec, EOS).rollout(prompts, seed=seed)
    trees, stats = result.trees, result.stats
    w, d, l = cfg.width, cfg.max_depth, cfg.segment_len

    for r, tree in enumerate(trees):
        # exactly w leaves unless fallback is off (or min_len drops exhausted fallback_patience)
        assert len(tree.leaves) <= w
        refilled = cfg.kind == "tree" and cfg.fallback_cut != "no_fallback"
        if refilled and stats.dropped_short == 0:
            assert len(tree.leaves) == w
        for leaf in tree.leaves:
            assert 1 <= len(leaf.node_path) <= d
            assert leaf.node_path == tree.path_to(leaf.node_path[-1])
            resp = tree.response_tokens(leaf)
            assert len(resp) <= d * l
            if cfg.min_len is not None:
                assert len(resp) >= cfg.min_len
            # the leaf is the sequence the engine actually extended, segment after segment
            assert engine.seqs[leaf.node_path[-1]][:len(prompts[r]) + len(resp)] == prompts[r] + resp
            lps = tree.response_logprobs(leaf)
            assert len(lps) == len(resp)
            assert lps == [default_logprob(prompts[r] + resp[:i], t) for i, t in enumerate(resp)]
            depths = [tree.nodes[nid].depth for nid in leaf.node_path]
            assert depths == list(range(1, len(leaf.node_path) + 1))
            last = tree.nodes[leaf.node_path[-1]]
            assert last.finish_reason == leaf.finish_reason and leaf.finish_reason in FinishReason.PRIORITY
            for nid, gid in zip(leaf.node_path, tree.group_path(leaf)):
                node, orig = tree.nodes[nid], tree.nodes[gid]
                assert orig.tokens[:len(node.tokens)] == node.tokens  # partial copy = prefix of original
        # JSON round trip
        back = Tree.from_dict(json.loads(json.dumps(tree.to_dict())))
        assert back.to_dict() == tree.to_dict()
        if cfg.kind == "sequential":
            assert sum(n.parent_id is None for n in tree.nodes.values()) == w

    # counters add up
    generated_nodes = [n for t in trees for n in t.nodes.values() if n.group_id is None]
    assert sum(stats.requests_per_step) == len(generated_nodes) == sum(len(c) for c in engine.calls)
    assert stats.steps == len(engine.calls) == engine.counters.forward_calls
    for t in trees:  # well-behaved engine: nothing was cut at d*l, every node holds what was generated
        for n in t.nodes.values():
            if n.group_id is None:
                assert engine.seqs[n.node_id] == t.prompt_ids + t.tokens_to(n.node_id)
    m = result.metrics()
    assert m["rollout/decoded_tokens"] == sum(len(n.tokens) for n in generated_nodes)
    assert m["rollout/prefill_tokens"] == sum(len(r.context) for c in engine.calls for r in c if r.parent_id is None)
    assert m["rollout/generated_tokens"] == sum(len(t.response_tokens(lf)) for t in trees for lf in t.leaves)
    assert m["rollout/n_traj"] == sum(len(t.leaves) for t in trees)
    assert m["tree/fallback_count"] == sum(n.from_fallback for n in generated_nodes)
    if m["rollout/n_traj"]:
        assert abs(sum(v for k, v in m.items() if k.startswith("tree/finish/")) - 1) < 1e-9
        assert abs(sum(v for k, v in m.items() if k.startswith("tree/depth-")) - 1) < 1e-9
    assert engine.released == 1


@settings(max_examples=25, deadline=None)
@given(cfg=configs(), seed=st.integers(0, 2**16))
def test_same_seed_same_tree(cfg, seed):
    def once():
        engine = ScriptedEngine(random_script(seed, 0.4, 0.1))
        res = build_sampler(cfg, engine, dec, EOS).rollout([[40, 41], [42]], seed=seed)
        return [t.to_dict() for t in res.trees]

    assert once() == once()
