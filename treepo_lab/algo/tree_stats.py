"""Tree statistics the advantage estimators share, torch-free (so an estimator registered in
treepo_lab/methods/ can be imported by a config check without torch).

A leaf's *path* is its tuple of subgroup ids (`tree.group_path`); a node is a path prefix; its value is
the mean over its children (leaves ending there are virtual children, `End`), bottom-up.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

from treepo_lab.rollout.tree import Tree

Runs = list[tuple[float, int]]  # (advantage value, number of tokens it covers), in response order
Path = tuple[int, ...]


def outcome_runs(trees: list[Tree], values: list[list[float]]) -> list[list[Runs]]:
    """One run per leaf: the scalar broadcast over the whole response."""
    return [[[(v, sum(t.segment_lengths(lf)))] for v, lf in zip(vals, t.leaves)] for t, vals in zip(trees, values)]


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def std_unbiased(xs: list[float]) -> float:
    m = mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def paths(tree: Tree) -> list[Path]:
    return [tuple(tree.group_path(lf)) for lf in tree.leaves]


@dataclass(frozen=True)
class End:
    """Leaf `i` as a virtual child of the node it ends at.

    So a node's value is always the mean of its children, even when a leaf ends at a node that
    other leaves continue through (possible with group ids reused after a misaligned fallback).
    """

    i: int


def children(paths: list[Path]) -> dict[Path, list]:
    """prefix -> its children: child prefixes (first-seen order) and an `End` per leaf ending there."""
    kids: dict[Path, list] = {(): []}
    for i, p in enumerate(paths):
        for k in range(1, len(p) + 1):
            if p[:k] not in kids:
                kids[p[:k]] = []
                kids[p[: k - 1]].append(p[:k])
        kids[p].append(End(i))
    return kids


def node_values(kids: dict[Path, list], leaf_values: list[float]) -> dict[Path, float]:
    """V bottom-up: a node's value is the mean of its children's values (a leaf: its own value)."""
    V: dict[Path, float] = {}
    for node in sorted(kids, key=len, reverse=True):
        vals = [leaf_values[c.i] if isinstance(c, End) else V[c] for c in kids[node]]
        V[node] = mean(vals) if vals else 0.0  # only an empty tree's root has no children
    return V


def leaves_under(paths: list[Path], rs: list[float]) -> dict[Path, list[float]]:
    """prefix (root = ()) -> the rewards of the leaves whose path passes through it."""
    under: dict[Path, list[float]] = defaultdict(list)
    for p, r in zip(paths, rs):
        for k in range(len(p) + 1):
            under[p[:k]].append(r)
    return under


def leaf_mean_values(paths: list[Path], rs: list[float]) -> dict[Path, float]:
    """V(node) = the mean reward of the leaves below it: the Monte Carlo value estimate of the state
    after that segment (V(()) = the prompt's mean), as TreeRL, TreeRPO and SPO-tree define it."""
    return {prefix: mean(vals) for prefix, vals in leaves_under(paths, rs).items()}


def segment_runs(tree: Tree, path: Path, leaf, values: list[float]) -> Runs:
    """One run per segment of `leaf` (path = its group path): value j covers segment j's tokens."""
    assert len(values) == len(path)
    return list(zip(values, tree.segment_lengths(leaf)))
