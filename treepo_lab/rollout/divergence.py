"""Divergence: how many children each active path gets at the next step (TreePO, arXiv 2508.17445).

Two questions per root and step. The budget control says how many requests the root gets in total
("branching budget transfer": finished siblings donate their b children to the survivors, capped so
that the tree never exceeds w leaves, floored so every active path continues). The allocation policy
(registry `DIV_POLICIES`) splits that total over the active paths. The budget controls (registry
`BUDGETS`), the initial branching b0 (registry `INIT_DIVS`) and the softmax temperature schedule
(registry `TEMP_SCHEDULES`) live here too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from treepo_lab.registry import Registry

# ---- budget ----------------------------------------------------------------------------------------

# name -> budget control (`sampler.budget.kind`): b per root and step, b0 without an init_div draw,
# and the requests of one root at the next step
BUDGETS: Registry = Registry("budget control")


class FixedDiv:
    """`by_fixed_div`: b = sampler.branch at every step, b0 = b."""

    def branch(self, cfg, rng: np.random.Generator, n_prompts: int) -> int:
        return cfg.branch

    def initial(self, cfg, rng: np.random.Generator, n_prompts: int) -> int:
        return self.branch(cfg, rng, n_prompts)

    def total(self, cfg, remaining: int, finished_now: int, n_active: int, b: int, n_roots_active: int) -> int:
        """Budget transfer: finished siblings donate their b children, capped at the missing leaves."""
        return min(remaining, b * (finished_now + n_active))


class RandomDiv(FixedDiv):
    """`by_random_div_{min}to{max}`: b ~ UniformInt[min, max], drawn per root per step (and per fallback
    candidate); b0 is drawn per prompt too (upstream: one draw per batch)."""

    def branch(self, cfg, rng: np.random.Generator, n_prompts: int) -> int:
        return int(rng.integers(cfg.budget.min, cfg.budget.max + 1))


class StepTokenBudget(FixedDiv):
    """`by_infer_step_token_budget`: `budget.tokens` per step shared by the roots still active; b (for
    fallback copies) is the per-prompt share in segments."""

    def branch(self, cfg, rng: np.random.Generator, n_prompts: int) -> int:
        return max(1, cfg.budget.tokens // (n_prompts * cfg.segment_len))

    def initial(self, cfg, rng: np.random.Generator, n_prompts: int) -> int:
        return cfg.budget.tokens // cfg.segment_len // n_prompts

    def total(self, cfg, remaining: int, finished_now: int, n_active: int, b: int, n_roots_active: int) -> int:
        return min(remaining, (cfg.budget.tokens // n_roots_active) // cfg.segment_len)


BUDGETS.register("fixed_div")(FixedDiv())
BUDGETS.register("random_div")(RandomDiv())
BUDGETS.register("step_token_budget")(StepTokenBudget())


def budget(cfg) -> FixedDiv:
    return BUDGETS.get(cfg.budget.kind, "sampler.budget.kind")


def branch_factor(cfg, rng: np.random.Generator, n_prompts: int) -> int:
    """The b of this root and step (also the copies per fallback candidate)."""
    return budget(cfg).branch(cfg, rng, n_prompts)


# name -> fn(cfg, rng, n_prompts) -> b0 for one prompt (`sampler.init_div.kind`)
INIT_DIVS: Registry = Registry("initial divergence")


@INIT_DIVS.register("fixed")
def init_fixed(cfg, rng: np.random.Generator, n_prompts: int) -> int:
    """b0 as the budget control gives it."""
    return budget(cfg).initial(cfg, rng, n_prompts)


@INIT_DIVS.register("random")
def init_random(cfg, rng: np.random.Generator, n_prompts: int) -> int:
    """"More Init Divergence": b0 ~ UniformInt[min, max] per prompt (upstream dead code, B1 fixed)."""
    return int(rng.integers(cfg.init_div.min, cfg.init_div.max + 1))


def initial_branching(cfg, rng: np.random.Generator, n_prompts: int) -> int:
    """b0 for one prompt, at least 1 and never more than w."""
    b0 = INIT_DIVS.get(cfg.init_div.kind, "sampler.init_div.kind")(cfg, rng, n_prompts)
    return min(max(1, b0), cfg.width)


def step_total(cfg, finished: int, finished_now: int, n_active: int, b: int, n_roots_active: int) -> int:
    """Requests for one root at the next step: the budget's total, then at least k = n_active.

    finished = f (leaves so far, this step included), finished_now = fin (leaves of this step); the
    total never exceeds the w - f missing leaves.
    """
    remaining = max(cfg.width - finished, 0)
    return max(budget(cfg).total(cfg, remaining, finished_now, n_active, b, n_roots_active), n_active)


# ---- allocation --------------------------------------------------------------------------------------

@dataclass
class ActivePath:
    """What an allocation policy may look at for one active path."""

    logprobs: list[float]  # sampled-token log-probs over the whole response so far
    last_logprobs: list[float]  # ... over the segment just generated
    last_entropies: list[float] = field(default_factory=list)  # next-token entropies over that segment


def largest_remainder(weights, total: int) -> list[int]:
    """Integer allocation: every path gets 1, the remaining total-k goes by largest remainder of
    weight * (total-k); ties go to the earlier path. (0.7, 0.2, 0.1), 8 -> (5, 2, 1)."""
    k = len(weights)
    w = np.asarray(weights, dtype=float)
    w = w / w.sum()
    rest = total - k
    quotas = w * rest
    alloc = [1 + math.floor(q) for q in quotas]
    left = total - sum(alloc)
    # rounding hides float noise such as 3.4999999 vs 3.5 so that ties break by index, as intended
    order = sorted(range(k), key=lambda i: (-round(quotas[i] - math.floor(quotas[i]), 9), i))
    for i in order[:left]:
        alloc[i] += 1
    return alloc


def softmax_shifted(scores, sign: float, temperature: float) -> np.ndarray:
    """softmax over i of sign * (S_i - min S) / T (the shift only guards against overflow)."""
    s = np.asarray(scores, dtype=float)
    z = sign * (s - s.min()) / temperature
    z = z - z.max()
    e = np.exp(z)
    return e / e.sum()


# name -> policy(paths, total, temperature) -> children per path (each >= 1, summing to total)
DIV_POLICIES: Registry = Registry("divergence policy")


@DIV_POLICIES.register("fixed_avg", label="")
def fixed_avg(paths: list[ActivePath], total: int, temperature: float) -> list[int]:
    """Even split: total // k each, the last path also takes the remainder, at least 1 each."""
    k = len(paths)
    alloc = [max(1, total // k)] * k
    alloc[-1] = max(1, total // k + total % k)
    return alloc


def _weighted(score, sign: float):
    def policy(paths: list[ActivePath], total: int, temperature: float) -> list[int]:
        return largest_remainder(softmax_shifted([score(p) for p in paths], sign, temperature), total)

    return policy


def _mean(xs) -> float:
    return float(np.mean(xs)) if len(xs) else 0.0


def _cumulative(p: ActivePath) -> float:
    return float(np.sum(p.logprobs))


def _response_mean(p: ActivePath) -> float:
    return _mean(p.logprobs)


def _segment_mean(p: ActivePath) -> float:
    return _mean(p.last_logprobs)


def _segment_entropy(p: ActivePath) -> float:
    if not p.last_entropies:
        raise RuntimeError("div_policy=entropy_weighted_div needs an engine that reports entropies")
    return _mean(p.last_entropies)


# sign -1: lower probability -> more branches ("low prob encourage"); +1: higher probability -> more
DIV_POLICIES.register("logprob_weighted_div", label="lp")(_weighted(_cumulative, -1.0))
DIV_POLICIES.register("inverse_logprob_weighted_div", label="ilp")(_weighted(_cumulative, +1.0))
DIV_POLICIES.register("norm_logprob_weighted_div", label="nlp")(_weighted(_response_mean, -1.0))
DIV_POLICIES.register("norm_inv_logprob_weighted_div", label="nilp")(_weighted(_response_mean, +1.0))
DIV_POLICIES.register("node_logprob_weighted_div", label="lowp")(_weighted(_segment_mean, -1.0))
DIV_POLICIES.register("inverse_node_logprob_weighted_div", label="highp")(_weighted(_segment_mean, +1.0))
# ours: the true entropy of the next-token distribution measures local uncertainty directly (the
# abstract's "leverages local uncertainty", which upstream only approximates with sampled log-probs)
DIV_POLICIES.register("entropy_weighted_div", label="entropy", needs_entropies=True)(_weighted(_segment_entropy, +1.0))


# ---- temperature schedule ------------------------------------------------------------------------------

# name -> schedule(progress s/S in [0, 1], DivTempSchedule, constant T) -> T
TEMP_SCHEDULES: Registry = Registry("divergence temperature schedule")


@TEMP_SCHEDULES.register("constant")
def _constant(progress: float, sched, constant: float) -> float:
    return constant


@TEMP_SCHEDULES.register("sinusoid_descending")
def _descending(progress: float, sched, constant: float) -> float:
    """max_temp at the start, min_temp at the end."""
    mid, half = (sched.min_temp + sched.max_temp) / 2, (sched.max_temp - sched.min_temp) / 2
    return mid + half * math.sin(math.pi * progress + math.pi / 2)


@TEMP_SCHEDULES.register("sinusoid_ascending")
def _ascending(progress: float, sched, constant: float) -> float:
    """min_temp at the start, max_temp at the end."""
    mid, half = (sched.min_temp + sched.max_temp) / 2, (sched.max_temp - sched.min_temp) / 2
    return mid + half * math.sin(math.pi * progress - math.pi / 2)


def div_temperature(cfg, step: int, total_steps: int) -> float:
    """The log-prob softmax temperature at training step `step` of `total_steps`."""
    progress = min(max(step / max(total_steps, 1), 0.0), 1.0)
    sched = cfg.div_temp_schedule
    return TEMP_SCHEDULES.get(sched.kind, "sampler.div_temp_schedule.kind")(progress, sched, cfg.div_temperature)
