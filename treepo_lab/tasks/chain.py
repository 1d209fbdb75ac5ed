"""The harder embedded task: longer arithmetic chains solved by one of two methods chosen at the start.

    prompt:   "Q: 17+5-9+3-8=?\n"
    in order: "A: In order.\nStep 1: 17+5=22.\nStep 2: 22-9=13.\nStep 3: 13+3=16.\nStep 4: 16-8=8.\n"
              "The answer is \\boxed{8}"
    grouped:  "A: Grouped.\nAdd: 17+5=22, 22+3=25.\nSub: 9+8=17.\nThen 25-17=8.\nThe answer is \\boxed{8}"

Why it separates sampling strategies where `arith` does not: the first ~14 tokens (the method line) decide
most of the outcome. The warm start (models/warmstart.py) writes most demonstrations with the grouped
method, and a share `flaw_rate` of the grouped ones whose subtraction list has >= 2 terms drop the last
term (a systematic habit, so greedy decoding inherits it). Greedy decoding picks "Grouped" and is right
only where the habit does not bite; at temperature 1 about a third of samples take the reliable in-order
method, so most prompts get both right and wrong samples. RL must find and credit an *early* decision
(the method) or fix a *middle* one (the Sub line) across ~90-110 response tokens: how a sampler spends
its branches over the first segments, and how the advantage credits shared prefixes, changes what is
learned per rollout token. (Measured numbers: README, "The harder task".)

The held-out slice is arith's (a keyed hash of the expression), so no training sample is ever evaluated.
"""
from __future__ import annotations

import numpy as np

from treepo_lab.registry import ConfigError
from treepo_lab.tasks.arith import ArithTask, Chain
from treepo_lab.tasks.base import TASKS, Problem
from treepo_lab.tasks.check import AnswerCheck

METHODS = ("in_order", "grouped")


def in_order_text(chain: Chain) -> str:
    values = chain.partials()
    lines = ["A: In order."]
    for i, (op, b) in enumerate(zip(chain.ops, chain.operands[1:])):
        lines.append(f"Step {i + 1}: {values[i]}{op}{b}={values[i + 1]}.")
    lines.append(f"The answer is \\boxed{{{values[-1]}}}")
    return "\n".join(lines)


def _running(terms: list[int]) -> tuple[str, int]:
    """'9+8=17' style running sum of `terms` (one term: just it; none: 0)."""
    if not terms:
        return "0", 0
    parts, total = [], terms[0]
    for b in terms[1:]:
        parts.append(f"{total}+{b}={total + b}")
        total += b
    return (", ".join(parts) if parts else str(total)), total


def grouped_text(chain: Chain, flawed: bool = False) -> str:
    """Sum the added terms, sum the subtracted ones, subtract once. `flawed` drops the last subtracted
    term (the warm start's habit; it only applies where there are >= 2 of them)."""
    plus = [chain.operands[0]] + [b for o, b in zip(chain.ops, chain.operands[1:]) if o == "+"]
    minus = [b for o, b in zip(chain.ops, chain.operands[1:]) if o == "-"]
    if flawed and len(minus) >= 2:
        minus = minus[:-1]
    plus_text, p = _running(plus)
    minus_text, m = _running(minus)
    return "\n".join(["A: Grouped.", f"Add: {plus_text}.", f"Sub: {minus_text}.", f"Then {p}-{m}={p - m}.",
                      f"The answer is \\boxed{{{p - m}}}"])


def can_flaw(chain: Chain) -> bool:
    return chain.ops.count("-") >= 2


class ChainTask(ArithTask):
    """Arith's chains (drawn the same way, running values never negative), a different solution format."""

    name = "chain"

    def demonstration(self, problem: Problem, method: str = "in_order", flawed: bool = False) -> str:
        chain = Chain.parse(problem.id)
        return in_order_text(chain) if method == "in_order" else grouped_text(chain, flawed)

    def warm_demonstration(self, problem: Problem, grouped_share: float, flaw_rate: float,
                           rng: np.random.Generator) -> str:
        """One warm-start target: grouped with probability `grouped_share`, then flawed with `flaw_rate`
        where the flaw can bite (two draws every time, so the stream of problems does not depend on them)."""
        grouped, flaw = rng.random() < grouped_share, rng.random() < flaw_rate
        if not grouped:
            return self.demonstration(problem)
        return self.demonstration(problem, "grouped", flawed=flaw and can_flaw(Chain.parse(problem.id)))


@TASKS.register("chain")
def _build_chain(cfg, check: AnswerCheck) -> ChainTask:
    if cfg.difficulty < 2:  # also checked by TaskConfig.validate; here for a task built from a bare config
        raise ConfigError("task.difficulty", cfg.difficulty, "an integer >= 2 for task.name=chain")
    return ChainTask(cfg.difficulty, cfg.operand_max, cfg.held_out_size, cfg.seed, check=check)
