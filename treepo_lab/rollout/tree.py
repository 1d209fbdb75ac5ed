"""Rollout trees: segment nodes, leaves (trajectories) and their JSON form.

One `Tree` per prompt. A `Node` is one generated segment (at most `l` tokens); its parent is the
node it continues (`None` = the prompt, depth 0). A `Leaf` is a finished trajectory: its response is
the concatenation of the tokens of the nodes on `node_path` (root side first).

`group_path` is what subgroup advantages key on: the ancestor ids whose subgroups a leaf belongs to.
It equals `node_path` except after a misaligned fallback cut (a cut inside a segment), where the
partial copy of the cut segment keeps the id of the segment it was cut from (the official semantics:
the path attaches to node ceil(cut / l)).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import ClassVar


class FinishReason:
    """Why a path stopped, with the official priorities (higher = better finished; the fallback
    candidate policies weight by them). The official `finished_with_unclosed_answer` (6) and
    `unfinished` (1) occur only in its offline step-model path, never in training rollouts."""

    FINISHED = "finished"  # boxed answer
    EOS = "early_stopped_by_eos"
    MAX_DEPTH = "finished_with_max_infer_steps"
    MAX_LENGTH = "finished_with_max_output_tokens"
    REPETITION = "early_stopped_by_repetition"
    # not a leaf: the node where a path shorter than min_len was dropped (no priority, never a candidate)
    DROPPED_SHORT = "dropped_short"
    # not a leaf: a new branch dropped by a pruning rule (methods/latr.py), too similar to a sibling
    PRUNED = "pruned_similar"

    PRIORITY: ClassVar[dict[str, int]] = {
        FINISHED: 7,
        EOS: 5,
        MAX_DEPTH: 4,
        MAX_LENGTH: 3,
        REPETITION: 2,
    }


@dataclass
class Node:
    node_id: int  # unique within one rollout call (across all trees)
    parent_id: int | None  # None: child of the prompt (root)
    depth: int  # 1 for the first segment
    step: int  # sampler step that generated it (can exceed depth after fallback)
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    entropies: list[float] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None  # set when a path ended at this node
    from_fallback: bool = False  # first node of a path restarted by fallback
    group_id: int | None = None  # subgroup identity (see module doc); None means node_id

    @property
    def gid(self) -> int:
        return self.node_id if self.group_id is None else self.group_id


@dataclass
class Leaf:
    node_path: list[int]  # node ids from depth 1 to the last segment
    finish_reason: str
    fallback_count: int = 0  # fallback restarts on the way to this leaf
    # filled by the trainer (inspectability): reward, correctness, advantages
    reward: float | None = None
    correct: bool | None = None
    raw_advantage: float | None = None
    advantage: float | None = None
    estimator: str | None = None


@dataclass
class Tree:
    prompt_ids: list[int]
    prompt_text: str = ""
    answer: str | None = None
    nodes: dict[int, Node] = field(default_factory=dict)
    leaves: list[Leaf] = field(default_factory=list)
    meta: dict = field(default_factory=dict)  # model path, sampling params, seed, ...

    def add(self, node: Node) -> Node:
        self.nodes[node.node_id] = node
        return node

    def path_to(self, node_id: int | None) -> list[int]:
        """Node ids from depth 1 down to `node_id`."""
        path = []
        while node_id is not None:
            path.append(node_id)
            node_id = self.nodes[node_id].parent_id
        return path[::-1]

    def tokens_to(self, node_id: int | None) -> list[int]:
        """Response tokens from the prompt down to `node_id` included ([] for None)."""
        return [t for nid in self.path_to(node_id) for t in self.nodes[nid].tokens]

    def split(self, node_id: int, at: int, new_id: int, decode) -> Node:
        """Cut node `node_id` after its first `at` tokens (0 < at < len): the node keeps the head, a new
        child `new_id` takes the tail with its log-probs, entropies and finish reason, and inherits the
        node's children; leaf paths through the node gain the new id. For a loop that forks inside a
        segment: the fork becomes a node boundary, so subgroups and tree packing see the shared head."""
        x = self.nodes[node_id]
        if not 0 < at < len(x.tokens):
            raise ValueError(f"split at {at} of a node of {len(x.tokens)} tokens")
        for n in self.nodes.values():
            if n.parent_id == node_id:
                n.parent_id = new_id
        tail = self.add(Node(new_id, node_id, x.depth + 1, x.step, x.tokens[at:], x.logprobs[at:], x.entropies[at:],
                             decode(x.tokens[at:]), finish_reason=x.finish_reason))
        x.tokens, x.logprobs, x.entropies = x.tokens[:at], x.logprobs[:at], x.entropies[:at]
        x.text, x.finish_reason = decode(x.tokens), None
        for leaf in self.leaves:
            if node_id in leaf.node_path:
                k = leaf.node_path.index(node_id)
                leaf.node_path.insert(k + 1, new_id)
        for n in self.nodes.values():  # every node below the cut is one segment deeper
            n.depth = len(self.path_to(n.node_id))
        return tail

    def response_tokens(self, leaf: Leaf) -> list[int]:
        return [t for nid in leaf.node_path for t in self.nodes[nid].tokens]

    def response_logprobs(self, leaf: Leaf) -> list[float]:
        return [x for nid in leaf.node_path for x in self.nodes[nid].logprobs]

    def response_entropies(self, leaf: Leaf) -> list[float]:
        return [x for nid in leaf.node_path for x in self.nodes[nid].entropies]

    def group_path(self, leaf: Leaf) -> list[int]:
        return [self.nodes[nid].gid for nid in leaf.node_path]

    def segment_lengths(self, leaf: Leaf) -> list[int]:
        return [len(self.nodes[nid].tokens) for nid in leaf.node_path]

    # ---- JSON ---------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        sampler = self.meta.get("sampler", {})
        # what produced each leaf, repeated per leaf so a leaf read on its own is self-describing
        origin = {"model_path": self.meta.get("model_path"), "seed": self.meta.get("seed"),
                  **{k: sampler.get(k) for k in ("temperature", "top_p", "top_k")}}
        return {
            "prompt_ids": self.prompt_ids,
            "prompt_text": self.prompt_text,
            "answer": self.answer,
            "meta": self.meta,
            "nodes": [asdict(n) for n in self.nodes.values()],
            "leaves": [
                {**asdict(lf), "response_ids": self.response_tokens(lf), "group_path": self.group_path(lf),
                 "full_ids": self.prompt_ids + self.response_tokens(lf), **origin}
                for lf in self.leaves
            ],
        }

    @classmethod
    def from_dict(cls, d: dict) -> Tree:
        tree = cls(prompt_ids=list(d["prompt_ids"]), prompt_text=d.get("prompt_text", ""),
                   answer=d.get("answer"), meta=dict(d.get("meta", {})))
        for nd in d["nodes"]:
            tree.add(Node(**nd))
        leaf_fields = set(Leaf.__dataclass_fields__)
        tree.leaves = [Leaf(**{k: v for k, v in ld.items() if k in leaf_fields}) for ld in d["leaves"]]
        return tree


def trees_to_json(trees: list[Tree], path) -> None:
    with open(path, "w") as f:
        json.dump([t.to_dict() for t in trees], f)


def trees_from_json(path) -> list[Tree]:
    with open(path) as f:
        return [Tree.from_dict(d) for d in json.load(f)]
