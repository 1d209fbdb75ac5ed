"""Tests of one difference between two arms over seeds, as a reviewer reads them: scipy's paired t (the
arms share seeds: same prompt stream, warm start and held-out problems) or Welch's t (they do not), an
exact sign-flip / permutation p-value beside it, Holm's step-down adjustment across the findings of one
report, and the minimum detectable effect at 80% power for the seeds that were run.

Everything here is a thin layer over scipy.stats; the tests compare each function with scipy on fixed inputs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

ALPHA = 0.05
POWER = 0.80
EXACT_LIMIT = 2 ** 16  # sign flips / relabellings enumerated exactly up to this many, sampled above


@dataclass(frozen=True)
class Estimate:
    """Mean difference (experiment - reference) with its two-sided 95% interval (each bound is also the
    one-sided 97.5% bound a superiority or non-inferiority test reads), its standard error and df."""

    diff: float
    low: float
    high: float
    se: float
    df: float
    n: int  # pairs (paired) or the smaller arm (unpaired)
    paired: bool
    p_perm: float  # two-sided exact sign-flip (paired) / permutation (unpaired) p-value of diff = 0

    @property
    def defined(self) -> bool:
        return math.isfinite(self.low) and math.isfinite(self.high)


NAN = float("nan")
UNDEFINED = Estimate(NAN, NAN, NAN, NAN, NAN, 0, False, NAN)


def _finite(x) -> np.ndarray:
    v = np.asarray(x, dtype=float).ravel()
    return v[np.isfinite(v)]


def paired(a, b) -> Estimate:
    """a[i] and b[i] come from the same seed. Pairs with a missing side are dropped."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    n = len(a)
    if n == 0:
        return UNDEFINED
    d = a - b
    if n < 2:
        return Estimate(float(d.mean()), NAN, NAN, NAN, NAN, n, True, NAN)
    if np.all(d == d[0]):  # no spread: scipy's t is undefined; the interval is the point
        v = float(d[0])
        return Estimate(v, v, v, 0.0, n - 1, n, True, 1.0 if v == 0 else 2.0 ** (1 - n))
    res = stats.ttest_rel(a, b)
    ci = res.confidence_interval(1 - ALPHA)
    se = float(d.std(ddof=1) / math.sqrt(n))
    return Estimate(float(d.mean()), float(ci.low), float(ci.high), se, float(n - 1), n, True, sign_flip_p(d))


def welch(a, b) -> Estimate:
    """Independent arms (no shared seeds): Welch's t with Welch-Satterthwaite degrees of freedom."""
    a, b = _finite(a), _finite(b)
    if len(a) == 0 or len(b) == 0:
        return UNDEFINED
    diff = float(a.mean() - b.mean())
    n = min(len(a), len(b))
    if len(a) < 2 or len(b) < 2:
        return Estimate(diff, NAN, NAN, NAN, NAN, n, False, NAN)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    if va + vb == 0:
        return Estimate(diff, diff, diff, 0.0, NAN, n, False, 1.0 if diff == 0 else NAN)
    res = stats.ttest_ind(a, b, equal_var=False)
    ci = res.confidence_interval(1 - ALPHA)
    return Estimate(diff, float(ci.low), float(ci.high), float(math.sqrt(va + vb)), float(res.df), n, False,
                    permutation_p(a, b))


def sign_flip_p(d) -> float:
    """Two-sided p of mean(d) = 0 under random sign flips of the paired differences (exact when 2^n is small)."""
    d = _finite(d)
    res = stats.permutation_test((d,), np.mean, permutation_type="samples", alternative="two-sided",
                                 n_resamples=EXACT_LIMIT, random_state=0)
    return float(res.pvalue)


def permutation_p(a, b) -> float:
    """Two-sided p of mean(a) = mean(b) under relabelling of the pooled runs (exact when small)."""
    res = stats.permutation_test((_finite(a), _finite(b)), lambda x, y: np.mean(x) - np.mean(y),
                                 permutation_type="independent", alternative="two-sided",
                                 n_resamples=EXACT_LIMIT, random_state=0)
    return float(res.pvalue)


def one_sided_p(e: Estimate, threshold: float = 0.0) -> float:
    """p of H0: diff <= threshold against diff > threshold, from the t statistic of the estimate
    (p < 0.025 exactly when the two-sided 95% interval lies above the threshold)."""
    if not e.defined:
        return NAN
    if e.se == 0:
        return 0.0 if e.diff > threshold else 1.0
    return float(stats.t.sf((e.diff - threshold) / e.se, e.df))


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (NaN entries stay NaN and are not counted)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(len(p), np.nan)
    idx = [i for i in np.argsort(p) if np.isfinite(p[i])]
    m, running = len(idx), 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def mde(se: float, df: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """Minimum detectable effect of a two-sided test at level alpha with the given power:
    (t_{1-alpha/2} + t_{power}) x SE, both on df degrees of freedom."""
    if not (math.isfinite(se) and math.isfinite(df)) or df < 1:
        return NAN
    return float((stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)) * se)


def seeds_for(effect: float, e: Estimate, limit: int = 1000) -> float:
    """Seeds per arm at which the observed |effect| becomes the minimum detectable effect, if the spread
    stayed as observed (SE shrinks as 1/sqrt(seeds)); inf above `limit` or without an effect."""
    if not e.defined or e.n < 2:
        return NAN
    if effect == 0:
        return math.inf
    if e.se == 0:
        return float(e.n)
    for n in range(2, limit + 1):
        df = n - 1 if e.paired else 2 * n - 2
        if mde(e.se * math.sqrt(e.n / n), df) <= abs(effect):
            return float(n)
    return math.inf


def log_ratio(a, b, paired_runs: bool = True) -> Estimate:
    """Ratio a/b on the log scale: a t interval of the mean log ratio (paired) or of the difference of mean
    logs (Welch); diff/low/high come back on the ratio scale (geometric mean ratio and its interval).
    Non-positive values drop (with their pair when paired)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    pos = lambda x: np.isfinite(x) & (x > 0)
    if paired_runs:
        ok = pos(a) & pos(b)
        e = paired(np.log(a[ok]), np.log(b[ok]))
    else:
        e = welch(np.log(a[pos(a)]), np.log(b[pos(b)]))
    if e.n == 0:
        return UNDEFINED
    ex = lambda v: float(np.exp(v)) if math.isfinite(v) else NAN
    return Estimate(ex(e.diff), ex(e.low), ex(e.high), e.se, e.df, e.n, e.paired, e.p_perm)
