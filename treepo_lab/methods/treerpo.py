"""TreeRPO's step-level group advantage (Yang et al., "TreeRPO: Tree Relative Policy Optimization",
arXiv 2506.05183): GRPO among siblings.

A node's reward is the mean reward of the leaves below it; the children of one node form a group, and a
child's advantage is its reward against the group: (V(s) - mean over siblings) / (std over siblings +
1e-6) (unbiased std, as grpo here; norm_by_std=false: the difference only). Every token of the segment
gets its node's advantage. A node that is its parent's only child (the tree stopped branching, the budget
of w leaves being spent) has no group: it carries its parent's advantage on (the root's children compare
with each other, so the first segments always have a group once the prompt branched).
"""
from __future__ import annotations

from treepo_lab.algo import tree_stats as ts
from treepo_lab.algo.registries import ESTIMATORS
from treepo_lab.registry import Knob


@ESTIMATORS.register(
    "treerpo", whiten=False, needs_tree=True, label="treerpo",
    knobs={"norm_by_std": Knob(True, "true or false (divide by the siblings' std)", lambda v: isinstance(v, bool),
                               code="std")})
def treerpo(trees, rewards, cfg):
    """raw = the advantage of the leaf's last segment."""
    runs, raw = [], []
    for t, rs in zip(trees, rewards):
        paths = ts.paths(t)
        V = ts.leaf_mean_values(paths, rs)
        siblings: dict[tuple, list[tuple]] = {}
        for node in V:
            if node:
                siblings.setdefault(node[:-1], []).append(node)
        A: dict[tuple, float] = {(): 0.0}
        for node in sorted(V, key=len)[1:]:  # parents before children
            group = siblings[node[:-1]]
            if len(group) < 2:
                A[node] = A[node[:-1]]
                continue
            vals = [V[c] for c in group]
            diff = V[node] - ts.mean(vals)
            A[node] = diff / (ts.std_unbiased(vals) + 1e-6) if cfg.params["norm_by_std"] else diff
        per_tree = [ts.segment_runs(t, p, leaf, [A[p[:j]] for j in range(1, len(p) + 1)])
                    for p, leaf in zip(paths, t.leaves)]
        runs.append(per_tree)
        raw.append([A[p] for p in paths])
    return runs, raw
