"""A LATR-style lookahead pruning rule on TreePO's tree sampler (after Xing et al., "Lookahead Tree-Based
Rollouts for Enhanced Trajectory-Level Exploration in Reinforcement Learning with Verifiable Rewards",
arXiv 2510.24302): a new branch is kept only if its continuation differs from its siblings'.

The lookahead is the branch's next segment (l tokens, generated anyway). When siblings (paths forked
from one node at the last step) have generated it, a branch whose segment has a token similarity of at
least `similarity` with an earlier kept sibling's is dropped: its node stays in the tree, unscored and
never a leaf (finish reason pruned_similar), and its budget goes back to the prompt, which the budget
transfer and fallback spend on paths that did diverge. Similarity of token sequences a and b:
1 - levenshtein(a, b) / max(len a, len b) (1 = identical). Only active branches are pruned; a
branch that finished stays a leaf. The first sibling is always kept.
"""
from __future__ import annotations

from treepo_lab.registry import Knob, number_in
from treepo_lab.rollout.sampler import SAMPLERS, TreeSampler
from treepo_lab.rollout.tree import FinishReason


def similarity(a: list[int], b: list[int]) -> float:
    """1 - token edit distance / the longer length."""
    if not a and not b:
        return 1.0
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return 1.0 - prev[-1] / max(len(a), len(b))


@SAMPLERS.register(
    "latr", tree=True, label="latr", dims=("init_div", "shape", "branching", "budget", "fallback"),
    knobs={"similarity": Knob(0.8, "a number in (0, 1] (prune a branch at least this similar to a sibling)",
                              number_in(0, 1), code="sim")})
class LatrSampler(TreeSampler):
    kind = "latr"

    def _step(self, queue, trees, stats):
        active, finished_now = super()._step(queue, trees, stats)
        for root, paths in active.items():
            kept: dict[int | None, list[list[int]]] = {}  # parent node -> the segments of its kept children
            survivors = []
            for p in paths:
                node = trees[root].nodes[p.last]
                seen = kept.setdefault(node.parent_id, [])
                if any(similarity(node.tokens, s) >= self.knobs["similarity"] for s in seen):
                    node.finish_reason = FinishReason.PRUNED
                    stats.pruned += 1
                    continue
                seen.append(node.tokens)
                survivors.append(p)
            active[root] = survivors
        return {r: ps for r, ps in active.items() if ps}, finished_now
