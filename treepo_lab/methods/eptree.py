"""TreeRL's EPTree rollout (Hou et al., "TreeRL: LLM Reinforcement Learning with On-Policy Tree Search",
ACL 2025, arXiv 2506.11902, §3.1): entropy-guided forking inside existing chains.

Per prompt, M chains are sampled to their end. Then for L rounds, in each chain's tree the N tokens with
the highest entropy of their next-token distribution become forking points, and T new continuations are
sampled from each: a fork at token i keeps the tokens before i and samples token i afresh, so the new
branches disagree with the chain where the policy was least sure. A prompt ends with M (1 + L N T)
leaves, which must equal sampler.width.

In this platform's tree a fork is a node boundary: the chain's segment is split at i (Tree.split), and the
branches are children of its head, so subgroup advantages and tree packing see the shared prefix. Paths
continue in l-token segments through the engine's KV forking; a fork's context is prefilled once for its T
branches (the engine groups identical fresh contexts). A path ends by the stop rules or at d*l tokens.
"""
from __future__ import annotations

from treepo_lab.registry import ConfigError, Knob, int_at_least
from treepo_lab.rollout.sampler import SAMPLERS, PathState, RolloutResult, SegmentSampler
from treepo_lab.rollout.tree import FinishReason, Tree


def leaves_per_chain(knobs: dict) -> int:
    return 1 + knobs["rounds"] * knobs["forks"] * knobs["branches"]


def _check(cfg, knobs: dict) -> None:
    per_chain = leaves_per_chain(knobs)
    if cfg.width % per_chain:
        raise ConfigError("sampler.width", cfg.width,
                          f"a multiple of 1 + rounds*forks*branches = {per_chain} with sampler.kind=eptree "
                          "(M chains of that many leaves each)")


@SAMPLERS.register(
    "eptree", tree=True, needs_entropies=True, label="eptree", dims=("shape",), check=_check,
    knobs={"forks": Knob(2, "an integer >= 1 (N: forking points per chain per round)", int_at_least(1), code="N"),
           "rounds": Knob(1, "an integer >= 1 (L: forking rounds)", int_at_least(1), code="L"),
           "branches": Knob(2, "an integer >= 1 (T: new branches per forking point)", int_at_least(1), code="T")})
class EPTreeSampler(SegmentSampler):
    kind = "eptree"

    def rollout(self, prompts: list[list[int]], step: int = 0, total_steps: int = 1,
                seed: int | None = None, keys: list[int] | None = None) -> RolloutResult:
        trees, stats, _, _ = self._begin(prompts, step, total_steps, seed, keys)
        chains = self.cfg.width // leaves_per_chain(self.knobs)

        def loop():
            self._grow([PathState(r, None, [], live=False) for r in range(len(trees)) for _ in range(chains)],
                       trees, stats)
            for _ in range(self.knobs["rounds"]):
                self._grow([p for r, tree in enumerate(trees) for p in self._forks(r, tree)], trees, stats)

        return self._run(trees, stats, loop)

    def _grow(self, queue: list[PathState], trees: list[Tree], stats) -> None:
        """Continue every path one segment per step (one child each) until all have finished."""
        while queue:
            stats.steps += 1
            active, _ = self._step(queue, trees, stats)
            queue = [PathState(r, p.last, p.response, live=True) for r in sorted(active) for p in active[r]]

    def _depth(self, node, response_len: int) -> int:
        # a forked path's segments do not start at multiples of l: the depth rule counts l-token units,
        # so every path may grow to d*l tokens (identical to the segment count on the chains)
        return response_len // self.cfg.segment_len

    def _forks(self, root: int, tree: Tree) -> list[PathState]:
        """T paths from each of the top-N entropy tokens of every chain's tree (ties: the earlier node)."""
        out = []
        for chain in [nid for nid, n in tree.nodes.items() if n.parent_id is None]:
            points = sorted(self._candidates(tree, chain), key=lambda c: (-c[0], c[1], c[2]))[: self.knobs["forks"]]
            for head in self._cut(tree, sorted((nid, i) for _, nid, i in points)):
                response = tree.tokens_to(head)
                out += [PathState(root, head, response, live=False) for _ in range(self.knobs["branches"])]
        return out

    @staticmethod
    def _candidates(tree: Tree, chain: int):
        """(entropy, node, index) of every token below `chain` that a fork may resample: not the chain's
        first token (a fork there would be a new chain), not a point already forked at."""
        children: dict[int | None, int] = {}
        for n in tree.nodes.values():
            children[n.parent_id] = children.get(n.parent_id, 0) + 1
        for nid, n in tree.nodes.items():
            if n.finish_reason in (FinishReason.DROPPED_SHORT, FinishReason.PRUNED):
                continue
            if tree.path_to(nid)[0] != chain:
                continue
            for i, h in enumerate(n.entropies):
                at_start = i == 0 and (nid == chain or children.get(n.parent_id, 0) > 1)
                if not at_start:
                    yield h, nid, i

    def _cut(self, tree: Tree, points: list[tuple[int, int]]) -> list[int | None]:
        """Split nodes at the chosen points (ascending per node, so later cuts fall in the tail) and
        return, per point, the node that ends just before it: the branches' parent."""
        heads, node, base = [], None, 0
        for nid, i in points:
            if nid != node:
                node, cur, base = nid, nid, 0
            if i == base:  # the node's first token: the branches are the node's siblings
                heads.append(tree.nodes[cur].parent_id)
                continue
            tail = tree.split(cur, i - base, self._new_id(), self.decode)
            heads.append(cur)
            cur, base = tail.node_id, i
        return heads
