"""SPO-tree's segment advantage (Guo et al., "Segment Policy Optimization: Effective Segment-Level Credit
Assignment in RL for Large Language Models", arXiv 2505.23564, §4, the tree-based variant for long
chains of thought): Monte Carlo value estimates of the nodes of a fixed-token-segment tree.

V(s) is the mean reward of the leaves below node s (the MC estimate of the state after segment s; V(root)
is the prompt's mean), and the advantage of segment s is V(s) - V(parent(s)): what the segment changed
in the chance of a right answer. Every token of the segment gets it. A segment that did not branch (an
only child, no leaf ending above it) gets 0. Unlike `spo` (the official TreePO code's z-scored variant)
no normalisation. Meant for the segment-wise tree sampler (experiments/spo_tree.yaml).
"""
from __future__ import annotations

from treepo_lab.algo import tree_stats as ts
from treepo_lab.algo.registries import ESTIMATORS


@ESTIMATORS.register("spo_tree", whiten=False, needs_tree=True, label="spotree")
def spo_tree(trees, rewards, cfg):
    """raw = V(leaf) - V(root), the sum of the leaf's segment advantages."""
    runs, raw = [], []
    for t, rs in zip(trees, rewards):
        paths = ts.paths(t)
        V = ts.leaf_mean_values(paths, rs)
        runs.append([ts.segment_runs(t, p, leaf, [V[p[:j]] - V[p[:j - 1]] for j in range(1, len(p) + 1)])
                     for p, leaf in zip(paths, t.leaves)])
        raw.append([V[p] - V[()] for p in paths])
    return runs, raw
