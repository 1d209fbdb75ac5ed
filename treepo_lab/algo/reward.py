"""Reward shaping and DAPO dynamic sampling (TreePO, arXiv 2508.17445).

The score comes from correctness alone (±1 or 0/1), plus DAPO's overlong penalty on the response
length. Dynamic sampling filters on correctness (acc), not on the shaped reward, as the official
trainer does: the overlong penalty can make a prompt's rewards differ while its acc does not.
"""
from __future__ import annotations

from typing import Generic, TypeVar

from treepo_lab.algo.config import RewardConfig
from treepo_lab.algo.scoring import Scorer
from treepo_lab.rollout.tree import Tree
from treepo_lab.tasks.base import Problem, reward_for

T = TypeVar("T")


def overlong_penalty(length: int, max_len: int, buffer: int, factor: float = 1.0) -> float:
    """DAPO soft overlong punishment: 0 up to max_len - buffer, then linear down to -factor at max_len.

    min(-(L - (max_len - buffer)) / buffer * factor, 0); buffer <= 0 turns it off.
    """
    if buffer <= 0:
        return 0.0
    return min(-(length - (max_len - buffer)) / buffer * factor, 0.0)


def shape_reward(correct: bool, length: int, cfg: RewardConfig, max_len: int) -> float:
    return reward_for(correct, cfg.scale) + overlong_penalty(
        length, max_len, cfg.overlong_buffer, cfg.overlong_penalty_factor)


def tree_rewards(trees: list[Tree], correct: list[list[bool]], cfg: RewardConfig, max_len: int) -> list[list[float]]:
    """Shaped reward per leaf (aligned with tree.leaves); the length is the leaf's response tokens."""
    _check_aligned(trees, correct)
    return [[shape_reward(bool(c), sum(t.segment_lengths(lf)), cfg, max_len) for c, lf in zip(cs, t.leaves)]
            for t, cs in zip(trees, correct)]


def score_leaves(trees: list[Tree], problems: list[Problem], scorer: Scorer, cfg: RewardConfig,
                 max_len: int) -> tuple[list[list[bool]], list[list[float]]]:
    """Correctness (time-limited) and shaped reward of every leaf, also written onto the leaves (and the
    problem onto its tree) for the logged / written trees. What training and `treepo-lab rollout` use."""
    correct = scorer.score_trees(trees, problems)
    rewards = tree_rewards(trees, correct, cfg, max_len)
    for t, p, cs, rs in zip(trees, problems, correct, rewards):
        t.prompt_text, t.answer = p.prompt, p.answer
        for leaf, c, r in zip(t.leaves, cs, rs):
            leaf.correct, leaf.reward = bool(c), float(r)
    return correct, rewards


def filter_groups(trees: list[Tree], correct: list[list[bool]]) -> tuple[list[int], int]:
    """DAPO group filter: keep prompt t if its leaves' acc is not constant, or it has exactly 1 leaf.

    (std(acc) > 0 is the same as "not all equal". A tree without leaves has nothing to learn from
    and is dropped.) Returns (kept prompt indices in order, number dropped).
    """
    _check_aligned(trees, correct)
    kept = [t for t, cs in enumerate(correct) if len(cs) == 1 or len({bool(c) for c in cs}) > 1]
    return kept, len(trees) - len(kept)


class GroupAccumulator(Generic[T]):
    """Collects kept prompt groups over generation rounds until `target` prompts are kept.

    The trainer's loop:  acc = GroupAccumulator(n, cfg.max_resample_rounds)
                         while not acc.done: acc.add(items, trees, correct)   # one generation round
                         batch = acc.take()
    `items` are whatever the trainer carries per prompt (e.g. (tree, rewards)). A round that
    overshoots is truncated by order in take(), like the official trainer. When the round limit is
    reached first, take() returns the (fewer) prompts kept so far; `exhausted` tells the trainer so.
    """

    def __init__(self, target: int, max_rounds: int = 0):
        self.target, self.max_rounds = target, max_rounds
        self.kept: list[T] = []
        self.rounds = 0
        self.dropped = 0

    def add(self, items: list[T], trees: list[Tree], correct: list[list[bool]]) -> list[int]:
        if len(items) != len(trees):
            raise ValueError("one item per tree")
        idx, dropped = filter_groups(trees, correct)
        self.kept.extend(items[i] for i in idx)
        self.rounds += 1
        self.dropped += dropped
        return idx

    def add_all(self, items: list[T]) -> None:
        """A round without filtering (dynamic sampling off)."""
        self.kept.extend(items)
        self.rounds += 1

    @property
    def exhausted(self) -> bool:
        return self.max_rounds > 0 and self.rounds >= self.max_rounds

    @property
    def done(self) -> bool:
        return len(self.kept) >= self.target or self.exhausted

    def take(self) -> list[T]:
        return self.kept[: self.target]

    def metrics(self) -> dict[str, float]:
        return {"dynamic_sampling/rounds": float(self.rounds), "dynamic_sampling/dropped_prompts": float(self.dropped),
                "dynamic_sampling/kept_prompts": float(min(len(self.kept), self.target))}


def _check_aligned(trees: list[Tree], correct: list[list[bool]]) -> None:
    if len(correct) != len(trees) or any(len(c) != len(t.leaves) for c, t in zip(correct, trees)):
        raise ValueError("correctness must be a list per tree with one flag per leaf (aligned with tree.leaves)")
