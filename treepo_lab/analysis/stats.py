"""Intervals over seeds: percentile bootstrap of the mean, of a difference of means, and the
probability that one group's mean beats another's.

Seeds are the unit of resampling (a run's metric is one observation). With n seeds there are n^n
equally likely resamples; the Monte Carlo estimates below converge to those exact values (the tests
compare against full enumeration). One seed gives no interval (NaN), never a zero-width one.
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass

import numpy as np

N_BOOT = 10000
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    n: int

    def overlaps(self, other: Interval) -> bool:
        if np.isnan([self.low, self.high, other.low, other.high]).any():
            return True  # no interval: nothing is separated
        return self.low <= other.high and other.low <= self.high

    def fmt(self, pct: bool = True) -> str:
        f = (lambda v: f"{100 * v:.1f}") if pct else (lambda v: f"{v:.3g}")
        if np.isnan(self.mean):
            return "n/a"
        if np.isnan(self.low):
            return f"{f(self.mean)} (1 seed)" if self.n == 1 else f(self.mean)
        return f"{f(self.mean)} [{f(self.low)}, {f(self.high)}]"


def _resampled_means(x: np.ndarray, rng: np.random.Generator, n_boot: int) -> np.ndarray:
    """Bootstrap means along axis 0 of x (seeds x ...); NaN entries (a seed without the value,
    e.g. a run still in progress) are ignored by nanmean."""
    idx = rng.integers(0, x.shape[0], size=(n_boot, x.shape[0]))
    with np.errstate(invalid="ignore"), _quiet():
        return np.nanmean(x[idx], axis=1)


@contextlib.contextmanager
def _quiet():
    """Silence numpy's 'mean of empty slice' for all-NaN columns (they stay NaN, which is the answer)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def _clean(values) -> np.ndarray:
    v = np.asarray(values, dtype=float).ravel()
    return v[np.isfinite(v)]


def mean_interval(values, level: float = LEVEL, n_boot: int = N_BOOT, seed: int = 0) -> Interval:
    """Mean over seeds with its percentile bootstrap interval."""
    v = _clean(values)
    if len(v) == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0)
    if len(v) == 1:
        return Interval(float(v[0]), float("nan"), float("nan"), 1)
    means = _resampled_means(v, np.random.default_rng(seed), n_boot)
    a = (1 - level) / 2
    lo, hi = np.quantile(means, [a, 1 - a])
    return Interval(float(v.mean()), float(lo), float(hi), len(v))


def band(matrix, level: float = LEVEL, n_boot: int = 2000, seed: int = 0):
    """Per column of a seeds x steps matrix (NaN = missing): mean, low, high, count. Columns with
    fewer than two values get NaN bounds (no band from one seed)."""
    m = np.asarray(matrix, dtype=float)
    count = np.isfinite(m).sum(axis=0)
    with _quiet():
        mean = np.nanmean(m, axis=0)
    lo = np.full(m.shape[1], np.nan)
    hi = np.full(m.shape[1], np.nan)
    if m.shape[0] >= 2:
        means = _resampled_means(m, np.random.default_rng(seed), n_boot)
        a = (1 - level) / 2
        with _quiet():
            q = np.nanquantile(means, [a, 1 - a], axis=0)
        ok = count >= 2
        lo[ok], hi[ok] = q[0][ok], q[1][ok]
    return mean, lo, hi, count


@dataclass(frozen=True)
class Comparison:
    diff: Interval  # mean(a) - mean(b) with its interval
    p_improve: float  # P(mean(a) > mean(b)) under the bootstrap, ties counted half

    @property
    def separated(self) -> bool:
        return not (np.isnan(self.diff.low) or self.diff.low <= 0 <= self.diff.high)


def compare(a, b, level: float = LEVEL, n_boot: int = N_BOOT, seed: int = 0, higher_is_better: bool = True) -> Comparison:
    """Group a against group b (e.g. a strategy against the baseline): seeds resampled independently
    within each group. Needs at least one value in each; the interval needs two in at least one."""
    va, vb = _clean(a), _clean(b)
    if len(va) == 0 or len(vb) == 0:
        nan = float("nan")
        return Comparison(Interval(nan, nan, nan, 0), nan)
    rng = np.random.default_rng(seed)
    ma, mb = _resampled_means(va, rng, n_boot), _resampled_means(vb, rng, n_boot)
    d = ma - mb
    sign = 1.0 if higher_is_better else -1.0
    p = float(np.mean(sign * d > 0) + 0.5 * np.mean(d == 0))
    diff_mean = float(va.mean() - vb.mean())
    if len(va) < 2 and len(vb) < 2:
        return Comparison(Interval(diff_mean, float("nan"), float("nan"), 1), float("nan"))
    al = (1 - level) / 2
    lo, hi = np.quantile(d, [al, 1 - al])
    return Comparison(Interval(diff_mean, float(lo), float(hi), min(len(va), len(vb))), p)
