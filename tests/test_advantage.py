"""Advantage estimators vs brute-force references, the spec's worked example, and invariants.

The references below are written independently of treepo_lab.algo.advantage: per-leaf scans over
all leaves for group membership, recursion over Node parent ids for tree values, and whitening over
an explicit flat list of per-token values.
"""
import math
import random
import statistics

import pytest
import torch

from treepo_lab.algo.advantage import compute_advantages
from treepo_lab.algo.config import AdvantageConfig
from treepo_lab.algo.registries import ESTIMATORS, needs_tree
from treepo_lab.registry import ConfigError
from treepo_lab.rollout.tree import Leaf, Node, Tree

torch.set_num_threads(1)
ALL = ["grpo", "rloo", "reinforce_pp_baseline", "treepo", "tree_segment", "spo"]


# ---- building trees -----------------------------------------------------------------------------
class Ids:
    def __init__(self):
        self.n = 0

    def __call__(self):
        self.n += 1
        return self.n


def random_tree(rng, ids, max_depth=4, max_branch=3, p_stop=0.3, zero_len=False):
    tree = Tree(prompt_ids=[0])

    def grow(parent, depth, path):
        for _ in range(rng.randint(1, max_branch)):
            nid = ids()
            lo = 0 if zero_len and rng.random() < 0.15 else 1
            tree.add(Node(nid, parent, depth, depth, tokens=[7] * rng.randint(lo, 4)))
            if depth >= max_depth or rng.random() < p_stop:
                tree.leaves.append(Leaf(path + [nid], "finished"))
            else:
                grow(nid, depth + 1, path + [nid])

    grow(None, 1, [])
    rng.shuffle(tree.leaves)
    return tree


def chain_tree(rng, ids, n_leaves, max_depth=4):
    """Branching factor 1: every leaf is its own chain from the root (no shared nodes)."""
    tree = Tree(prompt_ids=[0])
    for _ in range(n_leaves):
        parent, path = None, []
        for depth in range(1, rng.randint(1, max_depth) + 1):
            nid = ids()
            tree.add(Node(nid, parent, depth, depth, tokens=[7] * rng.randint(1, 4)))
            parent, path = nid, path + [nid]
        tree.leaves.append(Leaf(path, "finished"))
    return tree


def random_rewards(rng, tree, continuous=True):
    out = []
    for _ in tree.leaves:
        r = float(rng.choice([-1, 1]))
        if continuous and rng.random() < 0.3:
            r -= rng.random()  # an overlong penalty
        out.append(r)
    return out


def random_batch(seed, n_trees=3, **kw):
    rng, ids = random.Random(seed), Ids()
    trees = [random_tree(rng, ids, **kw) for _ in range(n_trees)]
    return trees, [random_rewards(rng, t) for t in trees]


def lengths(tree):
    return [len(tree.response_tokens(lf)) for lf in tree.leaves]


# ---- references -----------------------------------------------------------------------------------
def ref_whiten(tokens):
    flat = [x for per_tree in tokens for leaf in per_tree for x in leaf]
    if not flat:
        return tokens
    mean = statistics.fmean(flat)
    var = statistics.variance(flat) if len(flat) > 1 else 0.0
    return [[[(x - mean) / math.sqrt(var + 1e-8) for x in leaf] for leaf in per_tree] for per_tree in tokens]


def broadcast(trees, scalars):
    return [[[s] * n for s, n in zip(ss, lengths(t))] for t, ss in zip(trees, scalars)]


def ref_grpo(rewards, norm_by_std=True):
    out = []
    for rs in rewards:
        mean, std = (statistics.fmean(rs), statistics.stdev(rs)) if len(rs) > 1 else (0.0, 1.0)
        out.append([(r - mean) / (std + 1e-6) if norm_by_std else r - mean for r in rs])
    return out


def ref_rloo(rewards):
    return [[r - statistics.fmean(rs[:i] + rs[i + 1:]) if len(rs) > 1 else r for i, r in enumerate(rs)]
            for rs in rewards]


def ref_rfpp(rewards):
    return [[r - (statistics.fmean(rs) if len(rs) > 1 else 0.0) for r in rs] for rs in rewards]


def ref_treepo(trees, rewards, agg="average", remove_zero_std=False, drop_root=False, cap=0):
    paths = [[t.group_path(lf) for lf in t.leaves] for t in trees]
    dmax = max([len(p) for ps in paths for p in ps] + [1])
    if cap > 0:
        dmax = min(dmax, cap)
    out = []
    for ps, rs in zip(paths, rewards):
        row = []
        for i in range(len(rs)):
            terms = []
            for j in range(dmax):
                if j == 0 and drop_root:
                    continue
                members = [k for k in range(len(rs)) if ps[k][:j] == ps[i][:j]]
                vals = [rs[k] for k in members]
                if j > 0 and (len(members) < 2 or (remove_zero_std and statistics.pstdev(vals) == 0)):
                    continue
                mean = statistics.fmean(vals) if len(members) > 1 else 0.0
                terms.append((rs[i] - mean, len(members)))
            if not terms:
                row.append(0.0)
            elif agg == "average":
                row.append(statistics.fmean(a for a, _ in terms))
            else:
                row.append(sum(a * n for a, n in terms) / sum(n for _, n in terms))
        out.append(row)
    return out


def _value(tree, node_id, leaf_vals):
    """Mean over the node's child nodes (recursive) and the leaves ending at it."""
    kids = [n.node_id for n in tree.nodes.values() if n.parent_id == node_id]
    vals = [_value(tree, k, leaf_vals) for k in kids]
    vals += [v for lf, v in zip(tree.leaves, leaf_vals) if lf.node_path and lf.node_path[-1] == node_id]
    return statistics.fmean(vals)


def ref_tree_segment(trees, rewards, eta=-1.0):
    tokens = []
    for t, rs in zip(trees, rewards):
        mod = []
        for i, lf in enumerate(t.leaves):
            num = den = 0.0
            for k in range(len(lf.node_path) + 1):
                members = [rs[m] for m, o in enumerate(t.leaves) if o.node_path[:k] == lf.node_path[:k]]
                num += len(members) * (rs[i] - statistics.fmean(members))
                den += len(members)
            mod.append(num / den)
        per_tree = []
        for lf in t.leaves:
            n, toks = len(lf.node_path), []
            for j, nid in enumerate(lf.node_path, start=1):
                parent = t.nodes[nid].parent_id
                vp = 0.0 if parent is None else _value(t, parent, mod)
                d = eta ** (n - j) if eta > 0 else 1.0
                toks += [_value(t, nid, mod) - d * vp] * len(t.nodes[nid].tokens)
            per_tree.append(toks)
        tokens.append(per_tree)
    return ref_whiten(tokens)


def _z(tree, node_id, rs):
    """z of a node among its siblings; root 0; an only child inherits its parent's z."""
    if node_id is None:
        return 0.0
    parent = tree.nodes[node_id].parent_id
    sibs = [n.node_id for n in tree.nodes.values() if n.parent_id == parent]
    ends = [r for lf, r in zip(tree.leaves, rs) if parent is not None and lf.node_path[-1] == parent]
    vals = [_value(tree, s, rs) for s in sibs] + ends
    if len(vals) < 2:
        return _z(tree, parent, rs)
    sd = statistics.pstdev(vals)
    return (_value(tree, node_id, rs) - statistics.fmean(vals)) / sd if sd > 1e-6 else 0.0


def ref_spo(trees, rewards):
    out = []
    for t, rs in zip(trees, rewards):
        per_tree = []
        for lf in t.leaves:
            toks = []
            for nid in lf.node_path:
                adv = _z(t, nid, rs) - _z(t, t.nodes[nid].parent_id, rs)
                toks += [adv] * len(t.nodes[nid].tokens)
            per_tree.append(toks)
        out.append(per_tree)
    return out


def reference(name, trees, rewards, cfg):
    if name == "grpo":
        return broadcast(trees, ref_grpo(rewards, cfg.norm_by_std))
    if name == "rloo":
        return broadcast(trees, ref_rloo(rewards))
    if name == "reinforce_pp_baseline":
        return ref_whiten(broadcast(trees, ref_rfpp(rewards)))
    if name == "treepo":
        return ref_whiten(broadcast(trees, ref_treepo(trees, rewards, cfg.aggregation, cfg.remove_zero_std_subgroups,
                                                      cfg.drop_root, cfg.max_subgroup_depth)))
    if name == "tree_segment":
        return ref_tree_segment(trees, rewards, cfg.segment_eta)
    return ref_spo(trees, rewards)


def assert_matches(result, expected, tol=1e-5):
    assert len(result.token_adv) == len(expected)
    for got_t, exp_t in zip(result.token_adv, expected):
        assert len(got_t) == len(exp_t)
        for got, exp in zip(got_t, exp_t):
            assert got.dtype == torch.float32 and got.shape == (len(exp),)
            assert torch.allclose(got.double(), torch.tensor(exp, dtype=torch.float64), atol=tol), (got, exp)


# ---- a worked example of the subgroup advantage (TreePO, arXiv 2508.17445) ------------------------------
def worked_example():
    t = Tree(prompt_ids=[1])
    t.add(Node(1, None, 1, 1, tokens=[5] * 3))
    t.add(Node(2, None, 1, 1, tokens=[5] * 3))
    for nid, parent in [(3, 1), (4, 1), (5, 2), (6, 2)]:
        t.add(Node(nid, parent, 2, 2, tokens=[5] * 2))
    t.leaves = [Leaf([1, 3], "finished"), Leaf([1, 4], "finished"), Leaf([2, 5], "finished"), Leaf([2, 6], "finished")]
    return [t], [[1.0, -1.0, 1.0, 1.0]]


@pytest.mark.parametrize("kw, expected", [
    ({}, [0.75, -1.25, 0.25, 0.25]),
    ({"aggregation": "group_size"}, [2 / 3, -4 / 3, 1 / 3, 1 / 3]),
    ({"remove_zero_std_subgroups": True}, [0.75, -1.25, 0.5, 0.5]),
])
def test_worked_example(kw, expected):
    trees, rewards = worked_example()
    res = compute_advantages(trees, rewards, AdvantageConfig(estimator="treepo", **kw))
    assert res.raw[0] == pytest.approx(expected, abs=1e-12)
    # whitening by hand: every leaf has 5 tokens, so the token mean is the leaf mean
    mean = sum(expected) / 4
    var = sum(5 * (v - mean) ** 2 for v in expected) / 19
    for got, v in zip(res.token_adv[0], expected):
        assert got.shape == (5,)
        assert torch.allclose(got, torch.full((5,), (v - mean) / math.sqrt(var + 1e-8)), atol=1e-6)


# ---- against the references on random trees -------------------------------------------------------
CONFIGS = [
    ("grpo", {}), ("grpo", {"norm_by_std": False}), ("rloo", {}), ("reinforce_pp_baseline", {}),
    ("treepo", {}), ("treepo", {"aggregation": "group_size"}), ("treepo", {"remove_zero_std_subgroups": True}),
    ("treepo", {"drop_root": True}), ("treepo", {"max_subgroup_depth": 2}),
    ("treepo", {"aggregation": "group_size", "remove_zero_std_subgroups": True, "max_subgroup_depth": 3}),
    ("tree_segment", {}), ("tree_segment", {"segment_eta": 0.9}), ("spo", {}),
]


@pytest.mark.parametrize("name, kw", CONFIGS)
@pytest.mark.parametrize("seed", range(8))
def test_matches_reference(name, kw, seed):
    trees, rewards = random_batch(seed, n_trees=3, zero_len=seed % 2 == 1)
    cfg = AdvantageConfig(estimator=name, **kw)
    assert_matches(compute_advantages(trees, rewards, cfg), reference(name, trees, rewards, cfg))


def test_whiten_override():
    trees, rewards = random_batch(0)
    on = compute_advantages(trees, rewards, AdvantageConfig(estimator="grpo", whiten=True))
    assert_matches(on, ref_whiten(broadcast(trees, ref_grpo(rewards))))
    off = compute_advantages(trees, rewards, AdvantageConfig(estimator="treepo", whiten=False))
    assert_matches(off, broadcast(trees, ref_treepo(trees, rewards)))


def test_singleton_conventions():
    rng, ids = random.Random(3), Ids()
    trees = [chain_tree(rng, ids, 1), chain_tree(rng, ids, 3)]
    rewards = [[0.7], [1.0, -1.0, 1.0]]
    no_w = {"whiten": False}
    assert compute_advantages(trees, rewards, AdvantageConfig("grpo")).raw[0] == pytest.approx([0.7 / (1 + 1e-6)])
    assert compute_advantages(trees, rewards, AdvantageConfig("rloo")).raw[0] == [0.7]
    assert compute_advantages(trees, rewards, AdvantageConfig("reinforce_pp_baseline")).raw[0] == [0.7]
    assert compute_advantages(trees, rewards, AdvantageConfig("treepo", **no_w)).raw[0] == [0.7]
    assert compute_advantages(trees, rewards, AdvantageConfig("tree_segment", **no_w)).raw[0] == [0.0]
    assert compute_advantages(trees, rewards, AdvantageConfig("spo")).raw[0] == [0.0]


def test_group_ids_define_subgroups():
    """A partial copy keeps the id of the segment it was cut from: same subgroup, other node."""
    trees, rewards = worked_example()
    t = trees[0]
    t.add(Node(7, None, 1, 3, tokens=[5], group_id=1, from_fallback=True))  # cut inside node 1
    t.add(Node(8, 7, 2, 4, tokens=[5] * 4))
    t.leaves.append(Leaf([7, 8], "finished", fallback_count=1))
    rewards = [[1.0, -1.0, 1.0, 1.0, -1.0]]
    res = compute_advantages(trees, rewards, AdvantageConfig("treepo", whiten=False))
    assert res.raw[0] == pytest.approx(ref_treepo(trees, rewards)[0])
    # level 1 puts leaf 5 (group path [1, 8]) with leaves 1 and 2: mean of (1, -1, -1)
    assert res.raw[0][4] == pytest.approx(((-1 - 0.2) + (-1 + 1 / 3)) / 2)
    assert res.token_adv[0][4].shape == (5,)


# ---- invariants ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name, kw", CONFIGS)
def test_leaf_permutation_permutes_advantages(name, kw):
    trees, rewards = random_batch(11, n_trees=3)
    cfg = AdvantageConfig(estimator=name, **kw)
    base = compute_advantages(trees, rewards, cfg)
    rng = random.Random(5)
    perms = [rng.sample(range(len(t.leaves)), len(t.leaves)) for t in trees]
    for t, p in zip(trees, perms):
        t.leaves = [t.leaves[i] for i in p]
    permuted = compute_advantages(trees, [[rs[i] for i in p] for rs, p in zip(rewards, perms)], cfg)
    for t, p in enumerate(perms):
        for new, old in enumerate(p):
            assert torch.allclose(permuted.token_adv[t][new], base.token_adv[t][old], atol=1e-6)
            assert permuted.raw[t][new] == pytest.approx(base.raw[t][old])


@pytest.mark.parametrize("name, kw", CONFIGS)
def test_equal_rewards_give_zero(name, kw):
    rng, ids = random.Random(2), Ids()
    trees = [random_tree(rng, ids) for _ in range(4)]
    trees = [t for t in trees if len(t.leaves) > 1] + [chain_tree(rng, ids, 3)]
    rewards = [[c] * len(t.leaves) for t, c in zip(trees, [1.0, -1.0, 0.3, 1.0, -0.5])]
    res = compute_advantages(trees, rewards, AdvantageConfig(estimator=name, **kw))
    for adv in res.flat():
        assert not torch.isnan(adv).any()
        assert torch.allclose(adv, torch.zeros_like(adv), atol=1e-6)


@pytest.mark.parametrize("name", ALL)
def test_empty_inputs(name):
    assert compute_advantages([], [], AdvantageConfig(name)).token_adv == []
    res = compute_advantages([Tree(prompt_ids=[1])], [[]], AdvantageConfig(name))
    assert res.token_adv == [[]]


def chain_batch(seed):
    rng, ids = random.Random(seed), Ids()
    trees = [chain_tree(rng, ids, n) for n in (1, 2, 4, 5)]
    return trees, [random_rewards(rng, t) for t in trees]


@pytest.mark.parametrize("kw", [{}, {"aggregation": "group_size"}, {"remove_zero_std_subgroups": True},
                                {"max_subgroup_depth": 2}])
@pytest.mark.parametrize("seed", range(4))
def test_chains_treepo_is_reinforce_pp_baseline(kw, seed):
    """No shared nodes: every deeper subgroup is a singleton, only the prompt level remains."""
    trees, rewards = chain_batch(seed)
    a = compute_advantages(trees, rewards, AdvantageConfig("treepo", **kw))
    b = compute_advantages(trees, rewards, AdvantageConfig("reinforce_pp_baseline"))
    for x, y in zip(a.flat(), b.flat()):
        assert torch.allclose(x, y, atol=1e-6)


@pytest.mark.parametrize("eta", [-1.0, 0.8])
@pytest.mark.parametrize("seed", range(4))
def test_chains_tree_segment(eta, seed):
    """Chain counterpart: R'_i = G (R_i - mean) / (G + n_i) on the first segment (the only decision
    that differs between leaves), 0 on later ones (R'_i (1 - eta^(n-j)) with eta), then whitening."""
    trees, rewards = chain_batch(seed)
    tokens = []
    for t, rs in zip(trees, rewards):
        g, m, per_tree = len(rs), statistics.fmean(rs), []
        for lf, r in zip(t.leaves, rs):
            n = len(lf.node_path)
            mod = g * (r - m) / (g + n)
            seg = [mod] + [mod * (1 - eta ** (n - j)) if eta > 0 else 0.0 for j in range(2, n + 1)]
            per_tree.append([v for v, nid in zip(seg, lf.node_path) for _ in t.nodes[nid].tokens])
        tokens.append(per_tree)
    assert_matches(compute_advantages(trees, rewards, AdvantageConfig("tree_segment", segment_eta=eta)),
                   ref_whiten(tokens))


@pytest.mark.parametrize("seed", range(4))
def test_chains_spo(seed):
    """Chain counterpart: GRPO with population std and no epsilon (0 when the std is ~0) on the
    first segment, 0 on later segments (none of them branched)."""
    trees, rewards = chain_batch(seed)
    tokens = []
    for t, rs in zip(trees, rewards):
        m, sd = statistics.fmean(rs), statistics.pstdev(rs)
        z = [(r - m) / sd if sd > 1e-6 else 0.0 for r in rs]
        tokens.append([[zi] * len(t.nodes[lf.node_path[0]].tokens) + [0.0] * sum(
            len(t.nodes[n].tokens) for n in lf.node_path[1:]) for zi, lf in zip(z, t.leaves)])
    assert_matches(compute_advantages(trees, rewards, AdvantageConfig("spo")), tokens)


def test_token_advantages_cover_each_response():
    trees, rewards = random_batch(4)
    for name in ALL:
        res = compute_advantages(trees, rewards, AdvantageConfig(name))
        for t, tree in enumerate(trees):
            for i, lf in enumerate(tree.leaves):
                assert res.token_adv[t][i].numel() == len(tree.response_tokens(lf))


def test_registry_and_needs_tree():
    assert set(ALL) <= set(ESTIMATORS.names())
    assert [needs_tree(n) for n in ALL] == [False, False, False, True, True, True]
    with pytest.raises(ConfigError, match="treepo"):
        needs_tree("gae")
    with pytest.raises(ValueError, match="one reward per leaf"):
        compute_advantages(worked_example()[0], [[1.0]], AdvantageConfig())
