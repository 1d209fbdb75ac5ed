"""Per-run metric series and the group-level views built from them: seeds x steps matrices, metric
pairs (accuracy at the compute spent so far), interpolation at common budgets, first crossing of an
accuracy level.
"""
from __future__ import annotations

import numpy as np

from treepo_lab.analysis.groups import Group
from treepo_lab.analysis.runset import RunSet

ACCURACY = "eval/accuracy"
DECODED = "cumulative/rollout/decoded_tokens"
PREFILL = "cumulative/rollout/prefill_tokens"
WALL = "time/wall_s"
CPU = "time/cpu_s"  # process CPU seconds of training, children included: what load on the machine does not change
TOKENS = "tokens"  # derived: decoded + prefill, the rollout compute actually spent


class Series:
    """(run_id, key) -> (steps, values) sorted by step, the last value of a step winning."""

    def __init__(self, data: RunSet):
        self._s: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
        m = data.metrics.sort_values(["run_id", "key", "step", "timestamp"])
        m = m.drop_duplicates(["run_id", "key", "step"], keep="last")
        for (rid, key), g in m.groupby(["run_id", "key"], sort=False):
            self._s[(rid, key)] = (g["step"].to_numpy(), g["value"].to_numpy(dtype=float))

    def get(self, run_id: str, key: str) -> tuple[np.ndarray, np.ndarray]:
        if key == TOKENS:
            return self.tokens(run_id)
        return self._s.get((run_id, key), (np.array([], dtype=int), np.array([])))

    def has(self, run_id: str, key: str) -> bool:
        if key == TOKENS:
            return self.has(run_id, DECODED)
        return (run_id, key) in self._s

    def tokens(self, run_id: str) -> tuple[np.ndarray, np.ndarray]:
        s, d = self.get(run_id, DECODED)
        sp, p = self.get(run_id, PREFILL)
        if len(sp) == len(s) and np.array_equal(sp, s):
            return s, d + p
        return s, d  # no prefill counter: decoded tokens only

    def last(self, run_id: str, key: str) -> float:
        _, v = self.get(run_id, key)
        v = v[np.isfinite(v)]
        return float(v[-1]) if len(v) else float("nan")

    def best(self, run_id: str, key: str) -> float:
        _, v = self.get(run_id, key)
        v = v[np.isfinite(v)]
        return float(v.max()) if len(v) else float("nan")

    def mean(self, run_id: str, key: str) -> float:
        _, v = self.get(run_id, key)
        v = v[np.isfinite(v)]
        return float(v.mean()) if len(v) else float("nan")

    def matrix(self, group: Group, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, seeds x steps) over the union of the group's steps; NaN where a run has none."""
        per = [self.get(r, key) for r in group.run_ids]
        steps = np.unique(np.concatenate([s for s, _ in per])) if per else np.array([], dtype=int)
        mat = np.full((len(per), len(steps)), np.nan)
        for i, (s, v) in enumerate(per):
            mat[i, np.searchsorted(steps, s)] = v
        return steps, mat

    def paired(self, run_id: str, y_key: str, x_key: str) -> tuple[np.ndarray, np.ndarray]:
        """y against x at the steps y was logged, x taken at the same step (or the last step before)."""
        sy, y = self.get(run_id, y_key)
        sx, x = self.get(run_id, x_key)
        if not len(sy) or not len(sx):
            return np.array([]), np.array([])
        pos = np.searchsorted(sx, sy, side="right") - 1
        ok = pos >= 0
        xs, ys = x[pos[ok]], y[ok]
        # step 0 (an evaluation before training) has spent nothing yet
        zero = (sy[ok] == 0) & (sx[0] > 0)
        xs = np.where(zero, 0.0, xs)
        order = np.argsort(xs, kind="stable")
        return xs[order], ys[order]


def common_budgets(curves: list[tuple[np.ndarray, np.ndarray]], n: int = 25) -> np.ndarray:
    """Budgets every curve reaches (the overlap of their x ranges); the union where they do not overlap."""
    curves = [(x, y) for x, y in curves if len(x)]
    if not curves:
        return np.array([])
    lo, hi = max(x.min() for x, _ in curves), min(x.max() for x, _ in curves)
    if hi <= lo:
        lo, hi = min(x.min() for x, _ in curves), max(x.max() for x, _ in curves)
    return np.linspace(lo, hi, n) if hi > lo else np.array([lo])


def at_budgets(curves: list[tuple[np.ndarray, np.ndarray]], budgets: np.ndarray) -> np.ndarray:
    """seeds x budgets: each run's curve linearly interpolated, NaN outside the range it covered."""
    out = np.full((len(curves), len(budgets)), np.nan)
    for i, (x, y) in enumerate(curves):
        if len(x) == 0:
            continue
        inside = (budgets >= x.min()) & (budgets <= x.max())
        out[i, inside] = np.interp(budgets[inside], x, y)
    return out


def first_reach(x: np.ndarray, y: np.ndarray, level: float) -> float:
    """The smallest x at which the piecewise-linear curve (x, y) reaches `level`; NaN if it never does."""
    if len(x) == 0:
        return float("nan")
    if y[0] >= level:
        return float(x[0])
    for i in range(1, len(x)):
        if y[i] >= level > y[i - 1]:
            return float(x[i - 1] + (level - y[i - 1]) * (x[i] - x[i - 1]) / (y[i] - y[i - 1]))
    return float("nan")
