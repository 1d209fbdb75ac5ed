"""Correctness of responses under a time limit: the one way training, evaluation and `rollout` score.

A task's verifier is user code (Math-Verify, a file task's checker): one that raises scores the
response wrong, one that hangs past `timeout_s` too, and both are counted, so a run never stops or
stalls on a bad reward function. Calls run on one worker thread; a call that timed out keeps its
thread busy, so the next call gets a fresh worker.
"""
from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TypeVar

from treepo_lab.rollout.tree import Tree
from treepo_lab.tasks.base import Problem, Task

T = TypeVar("T")


class Scorer:
    def __init__(self, task: Task, decode: Callable[[list[int]], str], timeout_s: float):
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.task, self.decode, self.timeout_s = task, decode, timeout_s
        self.errors = self.timeouts = 0  # running counts (callers log differences)
        self._pool = ThreadPoolExecutor(max_workers=1)

    def correct(self, text: str, problem: Problem) -> bool:
        score = self.call(self.task.score, text, problem, default=None)
        return bool(score is not None and score.correct)

    def call(self, fn: Callable[..., T], *args, default: T) -> T:
        """fn(*args) under the time limit; `default` when it raises or runs past it (counted)."""
        future = self._pool.submit(fn, *args)
        try:
            return future.result(timeout=self.timeout_s)
        except FutureTimeout:
            self.timeouts += 1
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = ThreadPoolExecutor(max_workers=1)
        except Exception:
            self.errors += 1
        return default

    def texts(self, tree: Tree) -> list[str]:
        return [self.decode(tree.response_tokens(lf)) for lf in tree.leaves]

    def score_trees(self, trees: list[Tree], problems: list[Problem]) -> list[list[bool]]:
        """Correctness of every leaf, aligned with tree.leaves."""
        if len(trees) != len(problems):
            raise ValueError(f"{len(trees)} trees but {len(problems)} problems")
        return [[self.correct(text, p) for text in self.texts(t)] for t, p in zip(trees, problems)]

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> Scorer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
