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

`chain_mid` (ChainMidTask, below) moves the decision into a middle segment: one method, and a habit at
step `task.decisive_step` that the warm start writes in a share `warmstart.step_flaw_rate` of its
demonstrations, so the leaves below an early node still differ in outcome.

The held-out slice is arith's (a keyed hash of the expression), so no training sample is ever evaluated.
"""
from __future__ import annotations

import numpy as np

from treepo_lab.registry import ConfigError
from treepo_lab.tasks.arith import ArithTask, Chain, check_chain_knobs
from treepo_lab.tasks.base import TASKS, Problem
from treepo_lab.tasks.check import AnswerCheck

METHODS = ("in_order", "grouped")


def in_order_text(chain: Chain, misread: int | None = None) -> str:
    """Step by step. `misread` (1-based, chain_mid's flaw): if that step subtracts, its sign is misread as a
    plus ("Step 3: 32+4=36." for 32-4) and the later steps go on from the wrong value (so the answer is too
    large by twice that operand, and no running value is ever negative)."""
    value, lines = chain.operands[0], ["A: In order."]
    for i, (op, b) in enumerate(zip(chain.ops, chain.operands[1:])):
        if i + 1 == misread:
            op = "+"
        lines.append(f"Step {i + 1}: {value}{op}{b}={value + b if op == '+' else value - b}.")
        value = value + b if op == "+" else value - b
    lines.append(f"The answer is \\boxed{{{value}}}")
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

    def warm_demonstration(self, problem: Problem, ws, rng: np.random.Generator) -> str:
        """One warm-start target: grouped with probability `ws.grouped_share`, then flawed with `ws.flaw_rate`
        where the flaw can bite (two draws every time, so the stream of problems does not depend on them)."""
        grouped, flaw = rng.random() < ws.grouped_share, rng.random() < ws.flaw_rate
        if not grouped:
            return self.demonstration(problem)
        return self.demonstration(problem, "grouped", flawed=flaw and can_flaw(Chain.parse(problem.id)))


def _check_chain(cfg, prefix: str = "task") -> None:
    check_chain_knobs(cfg, prefix)
    if cfg.difficulty < 2:
        raise ConfigError(f"{prefix}.difficulty", cfg.difficulty, "an integer >= 2 for task.name=chain (the "
                          "warm start's flaw needs 2 subtractions)")


@TASKS.register("chain", embedded=True, warmstart_unused=("step_flaw_rate",), names_difficulty=True, check=_check_chain)
def _build_chain(cfg, check: AnswerCheck) -> ChainTask:
    return ChainTask(cfg.difficulty, cfg.operand_max, cfg.held_out_size, cfg.seed, check=check)


def can_skip(chain: Chain, step: int) -> bool:
    """chain_mid's flaw bites at `step` (1-based) iff that step subtracts (always, unless the running value was 0)."""
    return chain.ops[step - 1] == "-"


class ChainMidTask(ArithTask):
    """`chain_mid`: the decision sits in a middle segment, after a shared correct prefix.

        prompt:  "Q: 17+13+2-4+10=?\n"     (operation `decisive_step`, default 3, always subtracts)
        right:   "A: In order.\nStep 1: 17+13=30.\nStep 2: 30+2=32.\nStep 3: 32-4=28.\nStep 4: 28+10=38.\n"
                 "The answer is \\boxed{38}"
        flawed:  "A: In order.\nStep 1: 17+13=30.\nStep 2: 30+2=32.\nStep 3: 32+4=36.\nStep 4: 36+10=46.\n"
                 "The answer is \\boxed{46}"

    One method (in order) and one habit: a share `warmstart.step_flaw_rate` of the warm start's
    demonstrations misread the minus of step `decisive_step` as a plus (and compute that sum right) and
    carry the wrong value on. The decision is one token, the operator the model copies from the prompt;
    the arithmetic around it stays what the model does reliably (a first version that forgot the
    subtraction, "32-4=32.", made the digits themselves uncertain: a third of its T=1 samples were
    off by one). With difficulty=4 and the default 8x16 segments, responses are 96-109 tokens (7 segments);
    the operator of step 3 falls at tokens 48-63, in segment 4 (step 2: segment 3), every time. Everything
    before it is the same whichever way the step goes, so the leaves under one early node still mix right
    and wrong answers (on `chain` the method line, in segment 1, decides most of the outcome). Measured
    (warm start: greedy 4.5%, T=1 38.4%; mixed subgroups at depth >= 1: 0.54 vs chain's 0.20): README, "The harder
    task"; benchmarks/subgroups.py.
    """

    name = "chain_mid"

    def __init__(self, steps: int = 4, operand_max: int = 19, held_out_size: int = 1000, seed: int = 0,
                 decisive_step: int = 3, reward_scale: str = "pm1", check: AnswerCheck | None = None):
        if not isinstance(decisive_step, int) or not 1 <= decisive_step <= steps:
            raise ConfigError("task.decisive_step", decisive_step,
                              f"an integer in [1, task.difficulty={steps}] for task.name=chain_mid")
        self.decisive_step = decisive_step  # before the held-out problems are drawn (sample_chain reads it)
        super().__init__(steps, operand_max, held_out_size, seed, reward_scale, check)

    def _draw_op(self, i: int, rng: np.random.Generator) -> str:
        op = super()._draw_op(i, rng)  # the same draws as arith's, then the decisive step fixed
        return "-" if i + 1 == self.decisive_step else op

    def demonstration(self, problem: Problem, flawed: bool = False) -> str:
        chain = Chain.parse(problem.id)
        return in_order_text(chain, misread=self.decisive_step if flawed else None)

    def warm_demonstration(self, problem: Problem, ws, rng: np.random.Generator) -> str:
        """One warm-start target: flawed with probability `ws.step_flaw_rate` (one draw every time)."""
        return self.demonstration(problem, flawed=rng.random() < ws.step_flaw_rate)


def _check_chain_mid(cfg, prefix: str = "task") -> None:
    check_chain_knobs(cfg, prefix)
    step = cfg.decisive_step
    if not isinstance(step, int) or isinstance(step, bool) or not 1 <= step <= cfg.difficulty:
        raise ConfigError(f"{prefix}.decisive_step", step,
                          f"an integer in [1, {prefix}.difficulty={cfg.difficulty}] for task.name=chain_mid")


# its decisive step changes the demonstrations: part of the warm start's cache key
@TASKS.register("chain_mid", embedded=True, warmstart_unused=("flaw_rate", "flaw_op", "grouped_share"),
                warmstart_task_keys=("decisive_step",), check=_check_chain_mid)
def _build_chain_mid(cfg, check: AnswerCheck) -> ChainMidTask:
    return ChainMidTask(cfg.difficulty, cfg.operand_max, cfg.held_out_size, cfg.seed, cfg.decisive_step, check=check)
