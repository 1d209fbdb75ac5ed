"""Exact tree shapes from a scripted engine: budget transfer, caps, fallback, divergence, stopping rules."""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
import torch
from scripted_engine import BOX, EOS, ScriptedEngine, dec, enc

from treepo_lab.registry import ConfigError
from treepo_lab.rollout import divergence, fallback, stopping
from treepo_lab.rollout.accounting import CumulativeCompute, rollout_metrics
from treepo_lab.config import validate_sampler
from treepo_lab.rollout.config import BudgetConfig, DivTempSchedule, InitDivConfig, SamplerConfig, validate
from treepo_lab.rollout.divergence import ActivePath, largest_remainder
from treepo_lab.rollout.sampler import SequentialSampler, TreeSampler, build_sampler
from treepo_lab.rollout.tree import FinishReason as FR
from treepo_lab.seeding import derive_seed

torch.set_num_threads(1)
PROMPT = [30, 31]


def run(script, prompts=(PROMPT,), seed=0, engine_kw=None, **knobs):
    cfg = SamplerConfig(**{"width": 4, "max_depth": 4, "segment_len": 4, "branch": 2, **knobs})
    engine = ScriptedEngine(script, **(engine_kw or {}))
    result = build_sampler(cfg, engine, dec, EOS).rollout([list(p) for p in prompts], seed=seed)
    return result, engine


def parents(requests) -> list[int]:
    """Children per parent in one call, in request order."""
    return list(Counter(r.parent_id for r in requests).values())


# ---- budget ------------------------------------------------------------------------------------------

def test_budget_transfer_when_a_sibling_finishes():
    # step 2: one of 4 paths finishes -> f=1, fin=1, k=3: total = min(8-1, 2*(1+3)) = 7 -> (2, 2, 3)
    def script(r, call, i):
        if call == 2 and i == 0:
            return enc("b") + [EOS]
        return "cccc" if call < 3 else enc("d") + [EOS]

    res, eng = run(script, width=8)
    assert [len(c) for c in eng.calls] == [2, 4, 7]
    assert parents(eng.calls[2]) == [2, 2, 3]
    assert len(res.trees[0].leaves) == 8
    assert res.stats.fallback_requests == [0]


def test_width_cap_and_even_split_remainder_to_last():
    res, eng = run(lambda r, c, i: "xy", width=5, max_depth=3, segment_len=2)
    assert [len(c) for c in eng.calls] == [2, 4, 5]
    assert parents(eng.calls[2]) == [1, 1, 1, 2]
    tree = res.trees[0]
    assert len(tree.leaves) == 5
    assert {lf.finish_reason for lf in tree.leaves} == {FR.MAX_LENGTH}  # d*l reached before the depth rule
    assert all(len(tree.response_tokens(lf)) == 6 for lf in tree.leaves)


def test_floor_of_one_child_per_active_path():
    # token budget 2 tokens/step with l=2 allows 1 request, but 3 paths are active: each still gets one
    res, eng = run(lambda r, c, i: "xy", width=3, max_depth=3, segment_len=2, init_div=InitDivConfig("random", 3, 3),
                   budget=BudgetConfig("step_token_budget", tokens=2))
    assert [len(c) for c in eng.calls] == [3, 3, 3]
    assert len(res.trees[0].leaves) == 3


def test_step_total_formulas():
    cfg = SamplerConfig(width=16, segment_len=4)
    assert divergence.step_total(cfg, finished=3, finished_now=2, n_active=5, b=2, n_roots_active=1) == 13
    assert divergence.step_total(cfg, finished=10, finished_now=2, n_active=5, b=2, n_roots_active=1) == 6
    assert divergence.step_total(cfg, finished=1, finished_now=0, n_active=3, b=2, n_roots_active=1) == 6
    tok = replace(cfg, budget=BudgetConfig("step_token_budget", tokens=64))
    assert divergence.step_total(tok, finished=0, finished_now=0, n_active=2, b=2, n_roots_active=2) == 8
    assert divergence.step_total(tok, finished=12, finished_now=0, n_active=2, b=2, n_roots_active=2) == 4


def test_random_div_draws_per_root_and_initial_range_capped_at_width():
    cfg = SamplerConfig(width=5, budget=BudgetConfig("random_div", 2, 8))
    rng = np.random.default_rng(0)
    draws = {divergence.branch_factor(cfg, rng, 1) for _ in range(200)}
    assert draws == set(range(2, 9))
    init = replace(cfg, budget=BudgetConfig("fixed_div"), init_div=InitDivConfig("random", 2, 8))
    b0 = {divergence.initial_branching(init, rng, 1) for _ in range(200)}
    assert b0 == {2, 3, 4, 5}  # UniformInt[2, 8], never more than w
    # b0 is drawn per prompt: six distinct prompts, so a Counter over contexts sees each prompt's own b0
    prompts = [[30 + k, 31] for k in range(6)]
    res, eng = run(lambda r, c, i: enc("a") + [EOS], prompts=prompts, width=8, init_div=InitDivConfig("random", 2, 6))
    per_prompt = [Counter(tuple(r.context) for r in eng.calls[0])[tuple(p)] for p in prompts]
    # each prompt's own stream (seed 0, its index) draws its b0 first
    expect = [int(np.random.default_rng(derive_seed(0, k)).integers(2, 7)) for k in range(6)]
    assert per_prompt == expect and len(set(per_prompt)) > 1
    assert all(len(t.leaves) == 8 for t in res.trees)


# ---- divergence allocation -----------------------------------------------------------------------------

def test_largest_remainder_reference():
    assert largest_remainder([0.7, 0.2, 0.1], 8) == [5, 2, 1]
    assert largest_remainder([1, 1, 1], 3) == [1, 1, 1]
    assert largest_remainder([0.25, 0.25, 0.25, 0.25], 6) == [2, 2, 1, 1]
    for w, t in [([0.5, 0.3, 0.2], 10), ([0.9, 0.05, 0.05], 4)]:
        a = largest_remainder(w, t)
        assert sum(a) == t and min(a) >= 1


def test_fixed_avg():
    pol = divergence.DIV_POLICIES.get("fixed_avg")
    assert pol([None] * 3, 7, 1.0) == [2, 2, 3]
    assert pol([None] * 4, 4, 1.0) == [1, 1, 1, 1]


SEG_MEANS = [-3.0, -1.0, -1.0]


@pytest.mark.parametrize("policy,expected", [
    ("node_logprob_weighted_div", [4, 1, 1]),  # low probability encourages branching
    ("inverse_node_logprob_weighted_div", [1, 3, 2]),
    ("norm_logprob_weighted_div", [4, 1, 1]),
    ("norm_inv_logprob_weighted_div", [1, 3, 2]),
])
def test_logprob_policies_on_given_logprobs(policy, expected):
    paths = [ActivePath([m, m], [m, m]) for m in SEG_MEANS]
    assert divergence.DIV_POLICIES.get(policy)(paths, 6, 1.0) == expected


def test_cumulative_vs_mean_and_temperature():
    # path 0: longer but likelier per token. Cumulative sum calls it the least likely, the mean the most.
    paths = [ActivePath([-0.5] * 8, [-0.5]), ActivePath([-1.0] * 2, [-1.0])]
    cum = divergence.DIV_POLICIES.get("logprob_weighted_div")(paths, 6, 0.5)
    mean = divergence.DIV_POLICIES.get("norm_logprob_weighted_div")(paths, 6, 0.5)
    assert cum == [5, 1] and mean == [2, 4]
    assert divergence.DIV_POLICIES.get("inverse_logprob_weighted_div")(paths, 6, 0.5) == [1, 5]
    hot = divergence.DIV_POLICIES.get("logprob_weighted_div")(paths, 6, 1000.0)
    assert hot == [3, 3]  # a high temperature flattens the weights


def test_entropy_policy_branches_uncertain_paths():
    paths = [ActivePath([-1], [-1], [0.1, 0.1]), ActivePath([-1], [-1], [2.0, 2.0])]
    # softmax(+[0.1, 2.0]) = (0.13, 0.87): quotas of the 4 extra children (0.52, 3.48) -> (1+0+1, 1+3)
    assert divergence.DIV_POLICIES.get("entropy_weighted_div")(paths, 6, 1.0) == [2, 4]
    assert divergence.DIV_POLICIES.get("entropy_weighted_div")(paths, 6, 0.25) == [1, 5]
    with pytest.raises(RuntimeError, match="entropies"):
        divergence.DIV_POLICIES.get("entropy_weighted_div")([ActivePath([-1], [-1])], 2, 1.0)


def test_divergence_policy_in_the_sampler_uses_segment_logprobs():
    def script(r, call, i):
        if call == 1:
            return "ab", [SEG_MEANS[i]] * 2
        return enc("z") + [EOS]

    _, eng = run(script, width=9, init_div=InitDivConfig("random", 3, 3), div_policy="node_logprob_weighted_div")
    assert parents(eng.calls[1]) == [4, 1, 1]  # total = min(9, 2*3) = 6
    _, eng = run(script, width=9, init_div=InitDivConfig("random", 3, 3), div_policy="inverse_node_logprob_weighted_div")
    assert parents(eng.calls[1]) == [1, 3, 2]


def test_temperature_schedule():
    s = DivTempSchedule("sinusoid_descending", min_temp=1.0, max_temp=5.0)
    cfg = SamplerConfig(div_temperature=2.0, div_temp_schedule=s)
    assert divergence.div_temperature(cfg, 0, 10) == pytest.approx(5.0)
    assert divergence.div_temperature(cfg, 5, 10) == pytest.approx(3.0)
    assert divergence.div_temperature(cfg, 10, 10) == pytest.approx(1.0)
    up = replace(cfg, div_temp_schedule=replace(s, kind="sinusoid_ascending"))
    assert [round(divergence.div_temperature(up, s_, 4), 6) for s_ in (0, 4)] == [1.0, 5.0]
    assert divergence.div_temperature(replace(cfg, div_temp_schedule=DivTempSchedule()), 3, 10) == 2.0


# ---- fallback --------------------------------------------------------------------------------------------

def test_fallback_triggers_and_refills_to_exactly_w():
    # both first paths end short with EOS: L < l, so the cut is 0 and 2 copies restart from the prompt
    res, eng = run(lambda r, c, i: enc("ab") + [EOS], width=4, max_depth=3)
    assert [len(c) for c in eng.calls] == [2, 2]
    assert all(r.parent_id is None and r.context == PROMPT for r in eng.calls[1])
    tree = res.trees[0]
    assert len(tree.leaves) == 4
    assert [lf.fallback_count for lf in tree.leaves] == [0, 0, 1, 1]
    assert [tree.nodes[lf.node_path[0]].from_fallback for lf in tree.leaves] == [False, False, True, True]
    m = res.metrics()
    assert m["tree/fallback_count"] == 2 and m["train/prompt_fallback_ratio"] == 1.0


def test_fallback_truncates_the_node_path_and_refills_later():
    # one chain aa|bb|c<eos>; max_fallback_window=1 backs off exactly one block: keep the first 2 nodes
    def script(r, call, i):
        return {1: "aa", 2: "bb"}.get(call, enc("c") + [EOS])

    res, eng = run(script, width=3, max_depth=4, segment_len=2, branch=1, max_fallback_window=1)
    tree = res.trees[0]
    first = tree.leaves[0].node_path
    assert [len(c) for c in eng.calls] == [1, 1, 1, 1, 1]  # copies min(b, R) = 1: refilled step by step
    for req in eng.calls[3:]:
        assert req[0].parent_id is None and req[0].context == PROMPT + enc("aabb")
    assert len(tree.leaves) == 3
    assert all(lf.node_path[:2] == first[:2] and len(lf.node_path) == 3 for lf in tree.leaves)
    assert all(tree.group_path(lf) == lf.node_path for lf in tree.leaves)


def test_misaligned_cut_makes_a_partial_copy_keyed_on_the_original():
    def script(r, call, i):
        return {1: "aa", 2: "bb"}.get(call, enc("x") + [EOS])

    res, eng = run(script, width=2, max_depth=4, segment_len=2, branch=1, fallback_window=3,
                   require_aligned_window=False, max_fallback_window=1)
    tree = res.trees[0]
    a, b = tree.leaves
    assert eng.calls[3][0].context == PROMPT + enc("aab")  # ceil(5/3)=2 blocks, back 1 -> cut 3
    part = tree.nodes[b.node_path[1]]
    assert part.tokens == enc("b") and part.group_id == a.node_path[1] and part.depth == 2
    assert b.node_path[0] == a.node_path[0]
    assert tree.group_path(b)[:2] == a.node_path[:2]
    assert tree.nodes[b.node_path[2]].depth == 3 and tree.nodes[b.node_path[2]].from_fallback


def test_depth_guard_keeps_one_more_step_possible():
    # the least likely token is the last one (inside node 2 = depth d): the cut moves back to l*(d-1)
    def script(r, call, i):
        return ("aa", [-0.1, -0.2]) if call == 1 else ("bb", [-0.3, -9.0])

    res, eng = run(script, width=2, max_depth=2, segment_len=2, branch=1, fallback_cut="min_logprob_token",
                   fallback_candidates="random_all")
    assert eng.calls[2][0].context == PROMPT + enc("aa")
    tree = res.trees[0]
    assert all(len(lf.node_path) <= 2 for lf in tree.leaves) and len(tree.leaves) == 2
    assert fallback.depth_guard([2, 2], 3, 2) == 2
    assert fallback.depth_guard([2, 2, 2], 3, 3) == 3
    assert fallback.depth_guard([1, 2, 2], 3, 2) == 1  # counted in nodes after a partial copy


def test_random_cut_is_segment_aligned_and_drops_at_least_the_last_block():
    cfg = SamplerConfig(segment_len=4)
    rng = np.random.default_rng(0)
    cand = fallback.Candidate(leaf=None, length=10, logprobs=[-1.0] * 10)
    cuts = {fallback.CUT_POLICIES.get("random")(cand, cfg, rng) for _ in range(300)}
    assert cuts == {0, 4, 8}
    neg = replace(cfg, fallback_window=None, max_fallback_window=2)  # B3: a null W means l
    assert {fallback.CUT_POLICIES.get("random")(cand, neg, rng) for _ in range(300)} == {4, 8}


def test_block_cuts_and_b4_fixed():
    cand = fallback.Candidate(leaf=None, length=6, logprobs=[-0.1, -0.1, -5.0, -5.0, -0.1, -0.1])
    rng = np.random.default_rng(0)
    cfg = SamplerConfig(fallback_block_size=2)
    low = Counter(fallback.CUT_POLICIES.get("block")(cand, cfg, rng) for _ in range(400))
    high = Counter(fallback.CUT_POLICIES.get("inverse_block")(cand, cfg, rng) for _ in range(400))
    assert low.most_common(1)[0][0] == 2 and set(low) <= {0, 2, 4}
    assert high[2] < 20
    b4 = replace(cfg, max_fallback_window=3)  # block size overridden: blocks [0,3), [3,6)
    assert {fallback.CUT_POLICIES.get("block")(cand, b4, rng) for _ in range(100)} <= {0, 3}


def test_candidate_policies():
    from treepo_lab.rollout.tree import Leaf

    reasons = [FR.REPETITION, FR.FINISHED, FR.EOS, FR.MAX_LENGTH]
    cands = [fallback.Candidate(Leaf([i], r), length=4 * (i + 1), logprobs=[]) for i, r in enumerate(reasons)]
    cfg, rng = SamplerConfig(segment_len=4), np.random.default_rng(0)
    policy = fallback.CANDIDATE_POLICIES.get
    strict = policy("finished_first_strict")(cands, cfg, rng)
    assert [c.leaf.finish_reason for c in strict] == [FR.FINISHED, FR.EOS, FR.MAX_LENGTH, FR.REPETITION]
    soft = policy("soft_boxed_and_eos")(cands, cfg, rng)
    assert {c.leaf.finish_reason for c in soft} == {FR.FINISHED, FR.EOS}
    long_boxed = policy("boxed_ge_window")(cands, replace(cfg, fallback_min_windows=2), rng)
    assert [c.leaf.node_path for c in long_boxed] == [[1]]
    assert policy("boxed_ge_window")(cands, replace(cfg, fallback_min_windows=3), rng) == []
    firsts = Counter(policy("finished_first")(cands, cfg, rng)[0].leaf.finish_reason
                     for _ in range(2000))
    assert firsts[FR.FINISHED] > firsts[FR.EOS] > firsts[FR.REPETITION]
    longer = Counter(policy("longer_first")(cands, cfg, rng)[0].leaf.node_path[0]
                     for _ in range(2000))
    assert longer[3] > longer[0]
    assert len(policy("random_all")(cands, cfg, rng)) == 4


def test_from_start_uses_one_candidate_b_copies():
    res, eng = run(lambda r, c, i: "abcd" if c == 1 else enc("e") + [EOS], width=6, max_depth=3,
                   fallback_cut="from_start", fallback_candidates="random_all")
    # step 1: 2 paths; step 2: 4 leaves; fallback: one start point, min(b, 2) = 2 copies from the prompt
    assert [len(c) for c in eng.calls] == [2, 4, 2]
    assert all(r.context == PROMPT for r in eng.calls[2])
    assert len(res.trees[0].leaves) == 6


def test_no_fallback_leaves_the_group_short():
    res, _ = run(lambda r, c, i: enc("ab") + [EOS], width=4, fallback_cut="no_fallback")
    assert len(res.trees[0].leaves) == 2 and res.stats.short_prompts == 1


# ---- stopping rules ----------------------------------------------------------------------------------------

def test_repetition_threshold():
    assert not stopping.has_repetition("a" * 38) and stopping.has_repetition("a" * 39)
    assert stopping.has_repetition("ab" * 10, window=4, count=8)
    assert not stopping.has_repetition("abc" * 3, window=4, count=8)
    go, stop = run(lambda r, c, i: "a" * 38, width=1, branch=1, max_depth=2, segment_len=40)[0], \
        run(lambda r, c, i: "a" * 39, width=1, branch=1, max_depth=2, segment_len=40)[0]
    assert go.trees[0].leaves[0].finish_reason == FR.MAX_DEPTH and len(go.trees[0].leaves[0].node_path) == 2
    leaf = stop.trees[0].leaves[0]
    assert leaf.finish_reason == FR.REPETITION and len(leaf.node_path) == 1


def test_repetition_priority():
    seg = lambda r, c, i: [BOX] + enc("a" * 39)
    last = run(seg, width=1, branch=1, segment_len=50)[0].trees[0].leaves[0]
    res, _ = run(seg, width=1, branch=1, segment_len=50,
                 stop_rules=["repetition", "boxed", "eos", "max_length", "max_depth"])
    first = res.trees[0].leaves[0]
    assert last.finish_reason == FR.FINISHED and first.finish_reason == FR.REPETITION


def test_eos_only_segment_stops():
    res, eng = run(lambda r, c, i: "abcd" if c == 1 else [EOS], width=2, branch=1, max_depth=4)
    tree = res.trees[0]
    assert len(eng.calls) >= 2
    leaf = tree.leaves[0]
    assert leaf.finish_reason == FR.EOS and tree.nodes[leaf.node_path[-1]].tokens == [EOS]


def test_boxed_policies():
    boxed_no_eos = lambda r, c, i: [BOX] if c == 1 else [BOX, EOS]
    a = run(boxed_no_eos, width=1, branch=1)[0].trees[0].leaves[0]
    assert a.finish_reason == FR.FINISHED and len(a.node_path) == 1  # boxed_as_eos
    with_eos = ["boxed_with_eos", "eos", "max_length", "max_depth", "repetition"]
    b = run(boxed_no_eos, width=1, branch=1, stop_rules=with_eos)[0].trees[0].leaves[0]
    assert b.finish_reason == FR.FINISHED and len(b.node_path) == 2  # waited for the EOS
    c = run(lambda r, c_, i: enc("ab") + [EOS], width=1, branch=1,
            stop_rules=with_eos)[0].trees[0].leaves[0]
    assert c.finish_reason == FR.EOS
    assert stopping.has_boxed("so \\boxed{\\frac{1}{2}} done") and not stopping.has_boxed("\\boxed{1")


def test_boxed_rule_finds_any_complete_box_in_the_segment():
    # spec §1.4: a later unclosed box does not hide an earlier complete one (only the last was read before)
    assert stopping.has_boxed("so \\boxed{5} hmm \\boxed{")
    assert stopping.has_boxed("\\boxed{ \\boxed{5}") and not stopping.has_boxed("a \\boxed{ b \\boxed{")
    text = "so \\boxed{5} hmm \\boxed{"
    leaf = run(lambda r, c, i: text, width=1, branch=1, segment_len=len(text))[0].trees[0].leaves[0]
    assert leaf.finish_reason == FR.FINISHED and len(leaf.node_path) == 1


def test_length_cap_truncates_to_exactly_d_times_l():
    # an engine that overruns max_tokens: the response is cut to d*l = 3 tokens
    res, _ = run(lambda r, c, i: "abcde", width=1, branch=1, max_depth=1, segment_len=3,
                 engine_kw={"ignore_max_tokens": True})
    tree = res.trees[0]
    leaf = tree.leaves[0]
    assert leaf.finish_reason == FR.MAX_LENGTH and tree.response_tokens(leaf) == enc("abc")
    assert len(tree.response_logprobs(leaf)) == 3 and tree.nodes[leaf.node_path[0]].text == "abc"
    cfg = SamplerConfig(max_depth=2, segment_len=4)
    rules = stopping.stop_rules(cfg)
    assert stopping.stop_reason(rules, cfg, stopping.Segment("xx", False, 8, 2)) == FR.MAX_LENGTH
    assert stopping.stop_reason(rules, cfg, stopping.Segment("xx", False, 7, 2)) == FR.MAX_DEPTH
    assert stopping.stop_reason(rules, cfg, stopping.Segment("xx", False, 7, 1)) is None


def test_min_len_drops_and_fallback_refills():
    def script(r, call, i):
        return {1: enc("a") + [EOS], 2: enc("xyz") + [EOS]}.get(call, enc("pq") + [EOS])

    res, eng = run(script, width=2, branch=1, min_len=3)
    tree = res.trees[0]
    assert res.stats.dropped_short == 1
    assert [len(tree.response_tokens(lf)) for lf in tree.leaves] == [4, 3]
    dropped = [n for n in tree.nodes.values() if n.finish_reason == FR.DROPPED_SHORT]
    assert len(dropped) == 1 and all(dropped[0].node_id not in lf.node_path for lf in tree.leaves)
    assert eng.calls[1][0].context == PROMPT  # nothing to fall back on: restart from the prompt


def test_min_len_that_is_never_met_stops_after_fallback_patience():
    res, eng = run(lambda r, c, i: enc("a") + [EOS], width=2, min_len=3, fallback_patience=5)
    assert res.trees[0].leaves == [] and len(eng.calls) == 6 and res.stats.short_prompts == 1


def test_a_tree_fills_w_leaves_one_fallback_round_at_a_time():
    # b=1 and no qualifying candidate (length-capped leaves are not soft_boxed_and_eos): every fallback round
    # restarts one copy from the prompt and adds one leaf. A cap on all rounds (64) left 1 + 64 = 65.
    res, eng = run(lambda r, c, i: "xy", width=70, branch=1, max_depth=1, segment_len=2)
    assert len(res.trees[0].leaves) == 70 and res.stats.short_prompts == 0
    assert all(lf.finish_reason == FR.MAX_LENGTH for lf in res.trees[0].leaves)
    assert res.stats.fallback_rounds == [69]


# ---- sampler plumbing ------------------------------------------------------------------------------------

def test_requests_sorted_by_root_and_engine_released():
    res, eng = run(lambda r, c, i: "ab" if c < 3 else enc("c") + [EOS], prompts=[[40], [41], [42]], width=4)
    for call in eng.calls:
        roots = [r.context[0] for r in call]
        assert roots == sorted(roots)
    assert eng.released == 1 and all(len(t.leaves) == 4 for t in res.trees)


def test_sequential_baseline():
    res, eng = run(lambda r, c, i: "ab" if c < 2 else enc("c") + [EOS], width=3, kind="sequential")
    assert isinstance(build_sampler(SamplerConfig(kind="sequential"), eng, dec, EOS), SequentialSampler)
    assert isinstance(build_sampler(SamplerConfig(), eng, dec, EOS), TreeSampler)
    assert [len(c) for c in eng.calls] == [3, 3]
    tree = res.trees[0]
    assert len(tree.leaves) == 3 and len({n for lf in tree.leaves for n in lf.node_path}) == 6  # no sharing


def test_accounting_adds_up():
    res, eng = run(lambda r, c, i: "ab" if c < 3 else enc("c") + [EOS], width=4)
    m = rollout_metrics(res.trees, res.stats)
    tree = res.trees[0]
    assert m["rollout/generated_tokens"] == sum(len(tree.response_tokens(lf)) for lf in tree.leaves) == 4 * 6
    assert m["rollout/decoded_tokens"] == eng.counters.decoded_tokens == 2 * 2 + 4 * 2 + 4 * 2
    assert m["rollout/prefill_tokens"] == 2 * len(PROMPT)
    independent = 4 * (len(PROMPT) + 6)
    assert m["rollout/token_saving"] == pytest.approx(1 - (20 + 4) / independent)
    assert m["rollout/unique_tree_tokens"] == len(PROMPT) + 20
    assert m["tree/depth-3_ratio"] == 1.0 and m["tree/depth-1_ratio"] == 0.0
    assert sum(v for k, v in m.items() if k.startswith("tree/finish/")) == pytest.approx(1.0)
    assert not any("@" in k for k in m)
    cum = CumulativeCompute()
    cum.add(m)
    total = cum.add(m)
    assert total["cumulative/rollout/decoded_tokens"] == 2 * m["rollout/decoded_tokens"]
    assert total["cumulative/rollout/token_saving"] == pytest.approx(m["rollout/token_saving"])


# ---- validation ------------------------------------------------------------------------------------------

BAD = [
    ({"kind": "beam"}, "sampler.kind"),
    ({"width": 0}, "sampler.width"),
    ({"width": 2.5}, "sampler.width"),
    ({"max_depth": 0}, "sampler.max_depth"),
    ({"segment_len": 0}, "sampler.segment_len"),
    ({"shape": "8x"}, "sampler.shape"),
    ({"shape": "0x16"}, "sampler.shape"),
    ({"shape": "4x32", "segment_len": 16}, "sampler.segment_len"),
    ({"branch": 0}, "sampler.branch"),
    ({"init_div": InitDivConfig("random", 5, 2)}, "sampler.init_div.max"),
    ({"init_div": InitDivConfig("random", 0, 2)}, "sampler.init_div.min"),
    ({"init_div": InitDivConfig("uniform")}, "sampler.init_div.kind"),
    ({"budget": BudgetConfig("by_magic")}, "sampler.budget.kind"),
    ({"budget": BudgetConfig("random_div", 8, 2)}, "sampler.budget.max"),
    ({"budget": BudgetConfig("random_div", 0, 2)}, "sampler.budget.min"),
    ({"budget": BudgetConfig("step_token_budget", tokens=0)}, "sampler.budget.tokens"),
    ({"div_policy": "greedy"}, "sampler.div_policy"),
    ({"div_temperature": 0.0}, "sampler.div_temperature"),
    ({"div_temp_schedule": DivTempSchedule(kind="cosine")}, "sampler.div_temp_schedule.kind"),
    ({"div_temp_schedule": DivTempSchedule(min_temp=-1.0)}, "sampler.div_temp_schedule.min_temp"),
    ({"div_temp_schedule": DivTempSchedule(min_temp=5.0, max_temp=1.0)},
     "sampler.div_temp_schedule.min_temp"),
    ({"stop_rules": ["eos", "max_length", "max_depth", "eos_only"]}, "sampler.stop_rules"),
    ({"stop_rules": ["boxed", "max_length", "max_depth"]}, "sampler.stop_rules"),
    ({"stop_rules": []}, "sampler.stop_rules"),
    ({"stop_rules": ["eos", "eos", "max_length", "max_depth"]}, "sampler.stop_rules"),
    ({"repetition_window": 0}, "sampler.repetition_window"),
    ({"repetition_count": 0}, "sampler.repetition_count"),
    ({"min_len": 10_000}, "sampler.min_len"),
    ({"min_len": -1}, "sampler.min_len"),
    ({"fallback_candidates": "best"}, "sampler.fallback_candidates"),
    ({"fallback_candidates": "boxed_ge_window_2"}, "sampler.fallback_candidates"),
    ({"fallback_min_windows": 0}, "sampler.fallback_min_windows"),
    ({"fallback_cut": "middle"}, "sampler.fallback_cut"),
    ({"fallback_window": 20, "segment_len": 16}, "sampler.fallback_window"),
    ({"fallback_window": -1}, "sampler.fallback_window"),
    ({"max_fallback_window": 0}, "sampler.max_fallback_window"),
    ({"fallback_cut": "min_logprob_token", "max_fallback_window": 2}, "sampler.max_fallback_window"),
    ({"fallback_block_size": 0}, "sampler.fallback_block_size"),
    ({"fallback_patience": 0}, "sampler.fallback_patience"),
    ({"temperature": 0.0}, "sampler.temperature"),
    ({"top_p": 1.5}, "sampler.top_p"),
    ({"top_k": -2}, "sampler.top_k"),
]


@pytest.mark.parametrize("knobs,key", BAD, ids=[k for _, k in BAD])
def test_validation_names_the_knob(knobs, key):
    with pytest.raises(ConfigError) as err:
        validate_sampler(SamplerConfig(**knobs))
    assert err.value.key == key
    assert key in str(err.value) and "allowed" in str(err.value)


def test_validation_lists_valid_names_and_accepts_good_configs():
    with pytest.raises(ConfigError, match="entropy_weighted_div"):
        validate_sampler(SamplerConfig(div_policy="nope"))
    with pytest.raises(ConfigError, match="soft_boxed_and_eos"):
        validate_sampler(SamplerConfig(fallback_candidates="nope"))
    for good in [{}, {"budget": BudgetConfig("random_div", 2, 2)},
                 {"fallback_candidates": "boxed_ge_window", "fallback_min_windows": 3},
                 {"fallback_window": 20, "segment_len": 16, "require_aligned_window": False},
                 {"init_div": InitDivConfig("random", 2, 8)}, {"min_len": 4},
                 {"budget": BudgetConfig("fixed_div", 9, 1)},  # min/max apply to random_div only
                 {"shape": "4x32", "max_depth": 4}]:
        validate_sampler(SamplerConfig(**good))
    assert math.isclose(SamplerConfig().max_response_len, 8 * 16)
    assert validate(SamplerConfig(shape="2x64")).max_depth == 2 and SamplerConfig(shape="2x64").max_response_len == 128


def test_sampler_refuses_bad_values_before_any_compute():
    engine = ScriptedEngine(lambda r, c, i: "a")
    with pytest.raises(ConfigError):
        TreeSampler(engine, SamplerConfig(width=0), dec, EOS)
    with pytest.raises(ConfigError, match="sampler.stop_rules"):
        TreeSampler(engine, SamplerConfig(stop_rules=["eos", "max_length", "max_depth", "nope"]), dec, EOS)
    assert engine.calls == []
