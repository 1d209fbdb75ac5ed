"""The task protocol: where prompts come from and how a response is scored.

A task samples training problems, keeps a fixed held-out split for evaluation, and scores a response
text against a problem with its answer check (`task.check`, see `check.py`). Tasks are registered by
name in `TASKS` as builder(TaskConfig, AnswerCheck) and built by `treepo_lab.tasks.build.build_task`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from treepo_lab.algo.config import REWARD_SCALES
from treepo_lab.registry import ConfigError, Registry
from treepo_lab.tasks.check import AnswerCheck

# name -> builder(TaskConfig, AnswerCheck) -> Task, with its facts (nothing else lists task names):
#   check(cfg, prefix): the rules of the task's own knobs, run by treepo_lab/config.py's validate
#   embedded: the embedded tiny model is warm-started on it (models/warmstart.py)
#   warmstart_unused: warm-start knobs its demonstrations never read (left out of the cache key)
#   warmstart_task_keys: task fields beyond name, difficulty and operand_max its demonstrations depend on
#   names_difficulty: the default MLflow experiment is named "<task>_d<difficulty>" (track/naming.py)
TASKS: Registry = Registry("task")


def embedded_tasks() -> list[str]:
    return [n for n in TASKS.names() if TASKS.info(n).get("embedded")]


@dataclass(frozen=True)
class Problem:
    id: str  # stable identifier (unique within a task)
    prompt: str  # the text given to the model
    answer: str  # the reference answer (what the task's answer check compares a response with)


@dataclass(frozen=True)
class Score:
    reward: float
    correct: bool


def reward_for(correct: bool, reward_scale: str = "pm1") -> float:
    """+1/-1 as in the released TreePO reward, or 1/0 with "01"."""
    if reward_scale == "pm1":
        return 1.0 if correct else -1.0
    if reward_scale == "01":
        return 1.0 if correct else 0.0
    raise ConfigError("reward.scale", reward_scale, f"one of {', '.join(REWARD_SCALES)}")


def score_with(check: AnswerCheck, response: str, problem: Problem, reward_scale: str = "pm1") -> Score:
    """Score a response with a task's answer check (a user's check function may raise: the caller counts it)."""
    correct = check.correct(response, problem.answer)
    return Score(reward_for(correct, reward_scale), correct)


def unknown_characters(problems: list[Problem], known) -> dict[str, list[str]]:
    """Characters of prompts and answers for which `known(char)` is False -> ids of the problems using them."""
    by_char: dict[str, list[str]] = {}
    for p in problems:
        for c in sorted(set(p.prompt) | set(p.answer)):
            by_char.setdefault(c, []).append(p.id)
    return {c: ids for c, ids in by_char.items() if not known(c)}


@runtime_checkable
class Task(Protocol):
    name: str
    check: AnswerCheck  # extract + compare (maj@k votes on check.extract; check.equal decides)
    warnings: list[str]  # found while loading (e.g. string answers under Math-Verify): shown before training

    def sample(self, n: int, rng: np.random.Generator) -> list[Problem]:
        """`n` training problems (never from the held-out split)."""
        ...

    def score(self, response: str, problem: Problem) -> Score:
        """Reward and correctness of one response text (the decoded response, prompt excluded)."""
        ...

    def held_out(self) -> list[Problem]:
        """The fixed evaluation split (same problems on every call, in every process)."""
        ...

    def all_problems(self) -> list[Problem]:
        """Every problem (file tasks), or the held-out split and the longest ones (generated tasks)."""
        ...
