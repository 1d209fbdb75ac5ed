"""TreeRL's process advantage (Hou et al., ACL 2025, arXiv 2506.11902, §3.2), on any tree of this platform
(EPTree's in methods/eptree.py, as in the paper, or TreePO's segment trees).

With V(s) the mean reward of the leaves below node s (V(root) = the prompt's mean), each segment s of a
leaf gets its global advantage V(s) - V(root) (how good the state is for this prompt) plus its local
advantage V(s) - V(parent(s)) (what this step added), divided by sqrt(|L(s)|), the number of leaves below
s: a segment shared by many leaves is trained once per leaf, so its weight is spread over them.
"""
from __future__ import annotations

import math

from treepo_lab.algo import tree_stats as ts
from treepo_lab.algo.registries import ESTIMATORS
from treepo_lab.registry import Knob


@ESTIMATORS.register(
    "treerl", whiten=False, needs_tree=True, label="treerl",
    knobs={"sqrt_leaves": Knob(True, "true or false (divide by sqrt of the leaves below the segment)",
                               lambda v: isinstance(v, bool), code="sqrt")})
def treerl(trees, rewards, cfg):
    """Per segment: (2 V(s) - V(root) - V(parent)) / sqrt(|L(s)|). raw = the last segment's value."""
    runs, raw = [], []
    for t, rs in zip(trees, rewards):
        paths = ts.paths(t)
        under = ts.leaves_under(paths, rs)
        V = {prefix: ts.mean(vals) for prefix, vals in under.items()}
        per_tree, raw_t = [], []
        for p, leaf in zip(paths, t.leaves):
            advs = []
            for j in range(1, len(p) + 1):
                node, parent = p[:j], p[:j - 1]
                a = (V[node] - V[()]) + (V[node] - V[parent])
                advs.append(a / math.sqrt(len(under[node])) if cfg.params["sqrt_leaves"] else a)
            per_tree.append(ts.segment_runs(t, p, leaf, advs))
            raw_t.append(advs[-1] if advs else 0.0)
        runs.append(per_tree)
        raw.append(raw_t)
    return runs, raw
