"""The tree methods' advantages against hand-computed values and a brute force written from the papers'
equations (leaf enumeration, no shared helpers): TreeRL (global + local over sqrt of leaves), TreeRPO
(GRPO among siblings), SPO-tree (V(s) - V(parent) from Monte Carlo node values)."""
from __future__ import annotations

import math
import random

import pytest

import treepo_lab.methods  # noqa: F401  (registers the estimators of the methods)
from treepo_lab.algo.advantage import compute_advantages
from treepo_lab.algo.config import AdvantageConfig
from treepo_lab.rollout.tree import Leaf, Node, Tree

# node -> (parent, n tokens); leaves with their rewards
#            root
#      1      4       7
#    2   3  5   6     8
NODES = {1: (None, 2), 2: (1, 1), 3: (1, 3), 4: (None, 1), 5: (4, 2), 6: (4, 1), 7: (None, 2), 8: (7, 1)}
LEAVES = [([1, 2], 1.0), ([1, 3], 1.0), ([4, 5], -1.0), ([4, 6], 1.0), ([7, 8], 1.0)]
S2 = math.sqrt(2)
# V(root) = 3/5, V1 = V7 = V8 = 1, V4 = 0, V5 = -1, V2 = V3 = V6 = 1; |L(1)| = |L(4)| = 2
HAND = {
    "treerl": [[0.8 / S2, 0.4], [0.8 / S2, 0.4], [-1.2 / S2, -2.6], [-1.2 / S2, 1.4], [0.8, 0.4]],
    # root children V = (1, 0, 1): mean 2/3, unbiased std 1/sqrt(3); siblings 2, 3 equal: 0; 5, 6: -+1/sqrt(2);
    # 8 is 7's only child: it carries 7's advantage
    "treerpo": [[1 / math.sqrt(3), 0.0], [1 / math.sqrt(3), 0.0], [-2 / math.sqrt(3), -1 / S2],
                [-2 / math.sqrt(3), 1 / S2], [1 / math.sqrt(3), 1 / math.sqrt(3)]],
    "spo_tree": [[0.4, 0.0], [0.4, 0.0], [-0.6, -1.0], [-0.6, 1.0], [0.4, 0.0]],
}


def make_tree(nodes: dict, leaves: list) -> Tree:
    t = Tree(prompt_ids=[1])
    for nid, (parent, n) in nodes.items():
        t.add(Node(nid, parent, 0, 1, tokens=list(range(n))))
    t.leaves = [Leaf(list(path), "finished") for path, _ in leaves]
    return t


def per_segment(res, tree, leaf_index) -> list[float]:
    """The token advantages of one leaf read back per segment (each segment's tokens share one value)."""
    adv, out, k = res.token_adv[0][leaf_index].tolist(), [], 0
    for n in tree.segment_lengths(tree.leaves[leaf_index]):
        assert len(set(adv[k:k + n])) == 1
        out.append(adv[k])
        k += n
    return out


@pytest.mark.parametrize("estimator", list(HAND))
def test_hand_computed_tree(estimator):
    tree = make_tree(NODES, LEAVES)
    res = compute_advantages([tree], [[r for _, r in LEAVES]], AdvantageConfig(estimator=estimator))
    for i, want in enumerate(HAND[estimator]):
        assert per_segment(res, tree, i) == pytest.approx(want, abs=1e-5), (estimator, i)


# ---- brute force from the equations ----------------------------------------------------------
def values(paths, rs):
    """V(prefix) = mean reward of the leaves whose path starts with it."""
    out = {}
    for p in paths:
        for k in range(len(p) + 1):
            below = [r for q, r in zip(paths, rs) if q[:k] == p[:k]]
            out[p[:k]] = sum(below) / len(below)
    return out


def brute(estimator: str, paths, rs):
    V = values(paths, rs)
    n_under = {pre: sum(q[:len(pre)] == pre for q in paths) for pre in V}
    kids = {pre: sorted({q[:len(pre) + 1] for q in paths if len(q) > len(pre) and q[:len(pre)] == pre}) for pre in V}
    out = []
    for p in paths:
        segs = []
        for j in range(1, len(p) + 1):
            s, parent = p[:j], p[:j - 1]
            if estimator == "treerl":
                segs.append(((V[s] - V[()]) + (V[s] - V[parent])) / math.sqrt(n_under[s]))
            elif estimator == "spo_tree":
                segs.append(V[s] - V[parent])
            else:  # treerpo: nearest ancestor-or-self with siblings decides
                k = j
                while k > 0 and len(kids[p[:k - 1]]) < 2:
                    k -= 1
                if k == 0:
                    segs.append(0.0)
                    continue
                group = [V[c] for c in kids[p[:k - 1]]]
                m = sum(group) / len(group)
                sd = math.sqrt(sum((v - m) ** 2 for v in group) / (len(group) - 1))
                segs.append((V[p[:k]] - m) / (sd + 1e-6))
        out.append(segs)
    return out


def random_tree(rng: random.Random):
    """A random tree of up to 4 levels, every leaf ending at a node no other leaf passes through."""
    nodes, leaves, next_id = {}, [], [1]

    def grow(parent, depth, path):
        for _ in range(rng.choice([1, 1, 2, 3]) if depth else rng.choice([2, 3])):
            nid = next_id[0]
            next_id[0] += 1
            nodes[nid] = (parent, rng.randint(1, 3))
            if depth == 3 or rng.random() < 0.3:
                leaves.append((path + [nid], rng.choice([-1.0, 1.0])))
            else:
                grow(nid, depth + 1, path + [nid])

    grow(None, 0, [])
    return nodes, leaves


@pytest.mark.parametrize("estimator", list(HAND))
def test_random_trees_equal_brute_force(estimator):
    rng = random.Random(3)
    for _ in range(20):
        nodes, leaves = random_tree(rng)
        tree = make_tree(nodes, leaves)
        rs = [r for _, r in leaves]
        res = compute_advantages([tree], [rs], AdvantageConfig(estimator=estimator))
        want = brute(estimator, [tuple(p) for p, _ in leaves], rs)
        for i, w in enumerate(want):
            assert per_segment(res, tree, i) == pytest.approx(w, abs=1e-5)


def test_knobs_change_what_they_say():
    tree = make_tree(NODES, LEAVES)
    rs = [[r for _, r in LEAVES]]
    plain = compute_advantages([tree], rs, AdvantageConfig(estimator="treerl", params={"sqrt_leaves": False}))
    assert per_segment(plain, tree, 0) == pytest.approx([0.8, 0.4])
    diff = compute_advantages([tree], rs, AdvantageConfig(estimator="treerpo", params={"norm_by_std": False}))
    assert per_segment(diff, tree, 2) == pytest.approx([-2 / 3, -1.0])
