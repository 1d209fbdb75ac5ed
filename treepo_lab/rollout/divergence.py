"""Divergence: how many children each active path gets at the next step (TREEPO_SPEC.md §1.5).

Two questions per root and step. The budget control says how many requests the root gets in total
("branching budget transfer": finished siblings donate their b children to the survivors, capped so
that the tree never exceeds w leaves, floored so every active path continues). The allocation policy
(registry `DIV_POLICIES`) splits that total over the active paths. The initial branching b0 and the
softmax temperature schedule live here too.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

from treepo_lab.registry import Registry

FIXED_BUDGET_CONTROLS = ("by_fixed_div", "by_infer_step_token_budget")
_RANDOM_DIV = re.compile(r"by_random_div_(\d+)to(\d+)")


def parse_random_div(name: str) -> tuple[int, int] | None:
    """(m, n) of `by_random_div_{m}to{n}`, or None for any other name."""
    match = _RANDOM_DIV.fullmatch(str(name))
    return (int(match.group(1)), int(match.group(2))) if match else None


# ---- budget ----------------------------------------------------------------------------------------

def branch_factor(cfg, rng: np.random.Generator, n_prompts: int) -> int:
    """The b of this root and step: fixed, drawn per root per step (by_random_div), or for the token
    budget the per-prompt share of the step budget in segments (used for fallback copies)."""
    mn = parse_random_div(cfg.budget_control)
    if mn is not None:
        return int(rng.integers(mn[0], mn[1] + 1))
    if cfg.budget_control == "by_infer_step_token_budget":
        return max(1, cfg.step_token_budget // (n_prompts * cfg.segment_len))
    return cfg.branch


def initial_branching(cfg, rng: np.random.Generator, n_prompts: int) -> int:
    """b0 for one prompt, never more than w.

    An explicit init_div_range ("More Init Divergence", UniformInt[m, n] per prompt; upstream dead code,
    B1) wins over the budget control; by_random_div draws per prompt too (upstream: one draw per batch).
    """
    if cfg.init_div_range is not None:
        m, n = cfg.init_div_range
        b0 = int(rng.integers(m, n + 1))
    elif cfg.budget_control == "by_infer_step_token_budget":
        b0 = cfg.step_token_budget // cfg.segment_len // n_prompts
    else:
        b0 = branch_factor(cfg, rng, n_prompts)
    return min(max(1, b0), cfg.width)


def step_total(cfg, finished: int, finished_now: int, n_active: int, b: int, n_roots_active: int) -> int:
    """Requests for one root at the next step.

    finished = f (leaves so far, this step included), finished_now = fin (leaves of this step),
    n_active = k. Budget transfer: min(max(w - f, 0), b * (fin + k)); the token budget reads
    step_token_budget as tokens per step shared by the roots still active. Then at least k.
    """
    remaining = max(cfg.width - finished, 0)
    if cfg.budget_control == "by_infer_step_token_budget":
        total = min(remaining, (cfg.step_token_budget // n_roots_active) // cfg.segment_len)
    else:
        total = min(remaining, b * (finished_now + n_active))
    return max(total, n_active)


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


@DIV_POLICIES.register("fixed_avg")
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
DIV_POLICIES.register("logprob_weighted_div")(_weighted(_cumulative, -1.0))
DIV_POLICIES.register("inverse_logprob_weighted_div")(_weighted(_cumulative, +1.0))
DIV_POLICIES.register("norm_logprob_weighted_div")(_weighted(_response_mean, -1.0))
DIV_POLICIES.register("norm_inv_logprob_weighted_div")(_weighted(_response_mean, +1.0))
DIV_POLICIES.register("node_logprob_weighted_div")(_weighted(_segment_mean, -1.0))
DIV_POLICIES.register("inverse_node_logprob_weighted_div")(_weighted(_segment_mean, +1.0))
# ours: the true entropy of the next-token distribution measures local uncertainty directly (the
# abstract's "leverages local uncertainty", which upstream only approximates with sampled log-probs)
DIV_POLICIES.register("entropy_weighted_div")(_weighted(_segment_entropy, +1.0))


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
    return TEMP_SCHEDULES.get(sched.kind, "div_temp_schedule.kind")(progress, sched, cfg.div_temperature)
