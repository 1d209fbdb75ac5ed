"""The embedded synthetic task: chained integer arithmetic with a verbose, verifiable chain of thought.

    prompt:   "Q: 17+5-9=?\n"
    response: "A: Step 1: 17+5=22.\nStep 2: 22-9=13.\nThe answer is \\boxed{13}"   (then EOS)

Responses are ~55-65 characters (= tokens with the char tokenizer) at 2 steps and ~20 more per step,
long enough that segment-wise branching has several segments to work with, short enough that the
warm start learns the arithmetic in a few CPU minutes. `steps` (the difficulty) is the number of operations;
operands are drawn from 1..operand_max, and intermediate results never go negative (a `-` whose
operand would exceed the running value is drawn smaller, or becomes a `+` at 0).

Held-out split: a problem is held out iff a keyed hash of its expression falls in a fixed 1/16 slice.
The slice does not depend on any seed, so no training sample (any seed, warm start included) is ever a
held-out problem; the seed only picks which held-out problems form the evaluation set.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import numpy as np

from treepo_lab.registry import ConfigError
from treepo_lab.tasks.base import TASKS, Problem, Score, score_with
from treepo_lab.tasks.check import AnswerCheck
from treepo_lab.tasks.config import CheckConfig

HELD_OUT_SLICES = 16  # 1 in 16 expressions is reserved for evaluation
_TERM = re.compile(r"([+-])(\d+)")


@dataclass(frozen=True)
class Chain:
    operands: tuple[int, ...]
    ops: tuple[str, ...]  # len(ops) == len(operands) - 1

    @property
    def expression(self) -> str:
        return str(self.operands[0]) + "".join(f"{o}{b}" for o, b in zip(self.ops, self.operands[1:]))

    def partials(self) -> list[int]:
        """Running values: the first operand, then the result after each step."""
        values = [self.operands[0]]
        for op, b in zip(self.ops, self.operands[1:]):
            values.append(values[-1] + b if op == "+" else values[-1] - b)
        return values

    @staticmethod
    def parse(expression: str) -> Chain:
        head = re.match(r"\d+", expression)
        terms = _TERM.findall(expression[head.end():])
        return Chain((int(head.group()), *(int(b) for _, b in terms)), tuple(o for o, _ in terms))


def prompt_text(chain: Chain) -> str:
    return f"Q: {chain.expression}=?\n"


def solution_text(chain: Chain, boxed: int | None = None) -> str:
    """The chain of thought for `chain`; `boxed` overrides the boxed value (the warm start's flaw)."""
    values = chain.partials()
    lines = []
    for i, (op, b) in enumerate(zip(chain.ops, chain.operands[1:])):
        lines.append(f"{'A: ' if i == 0 else ''}Step {i + 1}: {values[i]}{op}{b}={values[i + 1]}.")
    lines.append(f"The answer is \\boxed{{{values[-1] if boxed is None else boxed}}}")
    return "\n".join(lines)


def is_held_out(expression: str) -> bool:
    digest = hashlib.blake2b(expression.encode(), digest_size=8, key=b"treepo-heldout").digest()
    return int.from_bytes(digest, "little") % HELD_OUT_SLICES == 0


class ArithTask:
    name = "arith"

    def __init__(self, steps: int = 2, operand_max: int = 29, held_out_size: int = 1000, seed: int = 0,
                 reward_scale: str = "pm1", check: AnswerCheck | None = None):
        if steps < 1:
            raise ConfigError("task.difficulty", steps, "an integer >= 1 (number of operations)")
        if operand_max < 2:
            raise ConfigError("task.operand_max", operand_max, "an integer >= 2")
        self.steps, self.operand_max, self.seed, self.reward_scale = steps, operand_max, seed, reward_scale
        self.check = check or AnswerCheck(CheckConfig())  # the last \boxed{} integer (Math-Verify's defaults)
        self.warnings: list[str] = []
        self._held_out = self._draw_held_out(held_out_size)

    def sample_chain(self, rng: np.random.Generator) -> Chain:
        operands = [int(rng.integers(1, self.operand_max + 1))]
        ops = []
        value = operands[0]
        for i in range(self.steps):
            op = self._draw_op(i, rng)
            if op == "-" and value < 1:
                op = "+"  # keep every running value >= 0: the tiny model never sees a minus sign
            high = self.operand_max if op == "+" else min(self.operand_max, value)
            b = int(rng.integers(1, high + 1))
            value = value + b if op == "+" else value - b
            ops.append(op)
            operands.append(b)
        return Chain(tuple(operands), tuple(ops))

    def _draw_op(self, i: int, rng: np.random.Generator) -> str:
        """The operator of step i (0-based), + or - with equal odds (one draw; a subclass may fix some)."""
        return "+" if rng.random() < 0.5 else "-"

    def problem(self, chain: Chain) -> Problem:
        return Problem(id=chain.expression, prompt=prompt_text(chain), answer=str(chain.partials()[-1]))

    def sample(self, n: int, rng: np.random.Generator) -> list[Problem]:
        out = []
        while len(out) < n:
            chain = self.sample_chain(rng)
            if not is_held_out(chain.expression):
                out.append(self.problem(chain))
        return out

    def _draw_held_out(self, size: int) -> list[Problem]:
        if size < 1:
            raise ConfigError("task.held_out_size", size, "an integer >= 1")
        rng = np.random.default_rng([self.seed, 0xE7A1])
        seen: dict[str, Problem] = {}
        # Unique held-out problems. A small problem space runs out, which must be an error, not a loop:
        # give up after many draws in a row found nothing new (about 16 are needed while plenty remain).
        misses = 0
        while misses < 5000:
            chain = self.sample_chain(rng)
            misses += 1
            if chain.expression not in seen and is_held_out(chain.expression):
                seen[chain.expression] = self.problem(chain)
                misses = 0
                if len(seen) == size:
                    return list(seen.values())
        raise ConfigError("task.held_out_size", size,
                          f"at most about {len(seen)} for difficulty={self.steps}, operand_max={self.operand_max}")

    def held_out(self) -> list[Problem]:
        return list(self._held_out)

    def all_problems(self) -> list[Problem]:
        """The held-out split and the longest prompt the task can draw (for the preflight's checks)."""
        longest = Chain((self.operand_max,) * (self.steps + 1), ("+",) * self.steps)
        return [*self._held_out, self.problem(longest)]

    def score(self, response: str, problem: Problem) -> Score:
        return score_with(self.check, response, problem, self.reward_scale)

    def demonstration(self, problem: Problem, boxed: int | None = None) -> str:
        """The correct chain of thought for `problem` (or one boxing `boxed`): the warm start's target."""
        return solution_text(Chain.parse(problem.id), boxed)

    def warm_demonstration(self, problem: Problem, ws, rng: np.random.Generator) -> str:
        """One warm-start target (`ws`: the warmstart config): a share `ws.flaw_rate` of the chains ending in
        `ws.flaw_op` box the value before the last operation."""
        chain = Chain.parse(problem.id)
        if chain.ops[-1] == ws.flaw_op and rng.random() < ws.flaw_rate:
            return self.demonstration(problem, boxed=chain.partials()[-2])
        return self.demonstration(problem)


def check_chain_knobs(cfg, prefix: str = "task") -> None:
    """The knobs every embedded chain task reads (a `check` fact of arith, chain and chain_mid)."""
    if not isinstance(cfg.difficulty, int) or cfg.difficulty < 1:
        raise ConfigError(f"{prefix}.difficulty", cfg.difficulty, "an integer >= 1 (number of operations)")
    if not isinstance(cfg.operand_max, int) or cfg.operand_max < 2:
        raise ConfigError(f"{prefix}.operand_max", cfg.operand_max, "an integer >= 2")


# facts (tasks/base.py): the embedded model is warm-started on it; the warm-start knobs it does not read stay
# out of the cache key; the experiment is named after its difficulty
@TASKS.register("arith", embedded=True, warmstart_unused=("grouped_share", "step_flaw_rate"), names_difficulty=True,
                check=check_chain_knobs)
def _build_arith(cfg, check: AnswerCheck) -> ArithTask:
    return ArithTask(cfg.difficulty, cfg.operand_max, cfg.held_out_size, cfg.seed, check=check)
