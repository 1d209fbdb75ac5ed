"""The two endpoints of a comparison between an experiment arm and its reference, from the runs table
(analysis/runs_table.py), and the checks that make it a test of what the finding claims.

Per update: the accuracy difference at equal optimizer steps: the mean over the last quarter of the steps
(the primary endpoint: a plateau read, less noisy than one evaluation) and at the final step. Runs of the
two arms that share (warm-start seed, seed) are paired (same prompt stream, warm start and held-out
problems): a paired t interval with an exact sign-flip p; arms without shared seeds get Welch's t.

Per compute: rollout tokens (decoded + prefill) to reach 50%, 80% and 90% of the reference's gain over the
shared starting accuracy (the evaluation before training), per seed, as a ratio experiment / reference
(a t interval of the mean log ratio over the pairs where both reached it, with k/n reached), and the
tokens and CPU seconds per step ratios. Secondary: accuracy at three pre-declared token budgets (1/3, 2/3
and all of the range every run of both arms covered) and the normalised area under accuracy vs tokens.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from treepo_lab.analysis import inference as inf
from treepo_lab.analysis.runs_table import FIRES, KNOB
from treepo_lab.analysis.series import first_reach

PAIR_KNOB = "warmstart.seed"  # a replicate dimension beside the seed: runs pair on (warm start, seed)
TARGETS = (0.5, 0.8, 0.9)  # shares of the reference's gain for tokens-to-target
BUDGETS = (1 / 3, 2 / 3, 1.0)  # shares of the common token range for the secondary columns
LAST_QUARTER = 0.75  # evaluations at steps >= 0.75 x the final step


@dataclass
class Curve:
    run_id: str
    seed: int
    stratum: str  # the warm-start seed ("" when not varied)
    steps: np.ndarray
    acc: np.ndarray
    tokens: np.ndarray
    cpu: np.ndarray
    fired: dict[str, float]  # metric -> training steps in which it was > 0

    @property
    def key(self) -> tuple[str, int]:
        return (self.stratum, self.seed)

    @property
    def final_step(self) -> int:
        return int(self.steps[-1])

    def plateau(self) -> float:
        return float(self.acc[self.steps >= LAST_QUARTER * self.final_step].mean())

    def start(self) -> float:
        return float(self.acc[0])


def curves(rows: pd.DataFrame) -> list[Curve]:
    out = []
    pair_col = KNOB + PAIR_KNOB
    for rid, g in rows.groupby("run_id", sort=False):
        g = g.sort_values("step")
        stratum = "" if pair_col not in g.columns or pd.isna(g[pair_col].iloc[0]) else str(g[pair_col].iloc[0])
        fired = {c[len(FIRES):]: float(g[c].iloc[-1]) for c in g.columns if c.startswith(FIRES)}
        out.append(Curve(str(rid), int(g["seed"].iloc[0]), stratum, g["step"].to_numpy(int),
                         g["accuracy"].to_numpy(float), g["tokens"].to_numpy(float), g["cpu_s"].to_numpy(float), fired))
    return sorted(out, key=lambda c: c.key)


def stratum_of(cs: list[Curve], stratum: str | None) -> list[Curve]:
    return cs if stratum is None else [c for c in cs if c.stratum == stratum]


@dataclass
class Target:
    share: float
    ratio: inf.Estimate  # tokens to the target, experiment / reference (geometric mean ratio)
    reached: tuple[int, int, int]  # experiment runs that reached it, reference runs, runs per arm


@dataclass
class Endpoints:
    paired: bool
    pairs: int
    last_quarter: inf.Estimate  # the primary per-update endpoint
    final: inf.Estimate
    targets: list[Target]
    tokens_per_step: inf.Estimate  # ratio
    cpu_per_step: inf.Estimate  # ratio
    budgets: list[tuple[float, inf.Estimate]]  # (rollout tokens, accuracy difference there)
    auc: inf.Estimate  # difference of the normalised areas
    start: float
    notes: list[str] = field(default_factory=list)


def _matched(a: list[Curve], b: list[Curve]) -> tuple[bool, list[Curve], list[Curve]]:
    """(paired, a, b): a and b in pair order when at least two (warm start, seed) keys are shared."""
    common = sorted({c.key for c in a} & {c.key for c in b})
    unique = len({c.key for c in a}) == len(a) and len({c.key for c in b}) == len(b)
    if len(common) >= 2 and unique:
        by_a, by_b = {c.key: c for c in a}, {c.key: c for c in b}
        return True, [by_a[k] for k in common], [by_b[k] for k in common]
    return False, a, b


def _diff(paired: bool, x, y) -> inf.Estimate:
    return inf.paired(x, y) if paired else inf.welch(x, y)


def _ratio(paired: bool, x, y) -> inf.Estimate:
    return inf.log_ratio(x, y, paired)


def _at(c: Curve, budget: float) -> float:
    return float(np.interp(budget, c.tokens, c.acc)) if c.tokens[0] <= budget <= c.tokens[-1] else inf.NAN


def _area(c: Curve, top: float) -> float:
    """Mean accuracy over rollout tokens [0, top] (trapezoids on the piecewise-linear curve)."""
    keep = c.tokens <= top
    x = np.append(c.tokens[keep], top)
    y = np.append(c.acc[keep], _at(c, top))
    return float(np.trapezoid(y, x) / top) if top > 0 else inf.NAN


def targets_of(exp: list[Curve], ref: list[Curve]) -> dict[str, list[float]]:
    """Per stratum (warm start): the accuracy levels start + share x (reference plateau - start), where start
    is the mean first evaluation of both arms and the plateau the reference's mean last-quarter accuracy."""
    out = {}
    for s in sorted({c.stratum for c in ref}):
        both = stratum_of(exp, s) + stratum_of(ref, s)
        start = float(np.mean([c.start() for c in both]))
        gain = float(np.mean([c.plateau() for c in stratum_of(ref, s)])) - start
        out[s] = [start + q * gain if gain > 0 else inf.NAN for q in TARGETS]
    return out


def compare(exp: list[Curve], ref: list[Curve]) -> Endpoints:
    paired, a, b = _matched(exp, ref)
    notes = []
    lq = _diff(paired, [c.plateau() for c in a], [c.plateau() for c in b])
    final = _diff(paired, [c.acc[-1] for c in a], [c.acc[-1] for c in b])
    levels = targets_of(exp, ref)
    if any(np.isnan(v).all() for v in levels.values()):
        notes.append("the reference did not improve on the starting accuracy: no tokens-to-target")
    targets = []
    for i, q in enumerate(TARGETS):
        ta, tb = (np.array([first_reach(c.tokens, c.acc, levels.get(c.stratum, [inf.NAN] * 3)[i]) for c in arm])
                  for arm in (a, b))
        targets.append(Target(q, _ratio(paired, ta, tb), (int(np.isfinite(ta).sum()), int(np.isfinite(tb).sum()),
                                                          len(a))))
    tps = _ratio(paired, [c.tokens[-1] / c.final_step for c in a], [c.tokens[-1] / c.final_step for c in b])
    cps = _ratio(paired, [c.cpu[-1] / c.final_step for c in a], [c.cpu[-1] / c.final_step for c in b])
    common = min(c.tokens[-1] for c in a + b)
    budgets = [(f * common, _diff(paired, [_at(c, f * common) for c in a], [_at(c, f * common) for c in b]))
               for f in BUDGETS]
    auc = _diff(paired, [_area(c, common) for c in a], [_area(c, common) for c in b])
    start = float(np.mean([c.start() for c in a + b]))
    return Endpoints(paired, len(a) if paired else min(len(a), len(b)), lq, final, targets, tps, cps, budgets, auc,
                     start, notes)


def arm_knobs(rows: pd.DataFrame) -> dict[str, set[str]]:
    """knob -> the values the arm's runs take (the pairing knob left out: it is a replicate, not a setting)."""
    out = {}
    for c in rows.columns:
        if c.startswith(KNOB) and c != KNOB + PAIR_KNOB:
            out[c[len(KNOB):]] = set(rows.groupby("run_id")[c].first().fillna("(unset)").astype(str))
    return out


def differing(a: dict[str, set[str]], b: dict[str, set[str]]) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k, {"(unset)"}) != b.get(k, {"(unset)"}))


def overlapping_pairs(table: pd.DataFrame) -> int:
    """Pairs of runs of different experiments that trained at the same time on the same host: their wall
    times share the machine's load (CPU seconds do not)."""
    cols = {"host", "start_time", "end_time"}
    if not cols <= set(table.columns):
        return 0
    runs = table.groupby("run_id").first().dropna(subset=list(cols))
    n = 0
    for _, g in runs.groupby("host"):
        s, e, x = g["start_time"].to_numpy(float), g["end_time"].to_numpy(float), g["experiment"].to_numpy()
        for i in range(len(g)):
            n += int(((s[i] < e[i + 1:]) & (s[i + 1:] < e[i]) & (x[i] != x[i + 1:])).sum())
    return n
