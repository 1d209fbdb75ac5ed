"""Bootstrap intervals and the probability of improvement against exact enumeration: with n seeds the
bootstrap distribution of the mean is the n^n equally likely resamples, so every quantity the Monte Carlo
code estimates has an exact value to compare with."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from treepo_lab.analysis import stats


def exact_means(v):
    v = np.asarray(v, dtype=float)
    return np.array([v[list(idx)].mean() for idx in itertools.product(range(len(v)), repeat=len(v))])


def exact_quantiles(means, level=0.95):
    a = (1 - level) / 2
    return np.quantile(means, [a, 1 - a], method="inverted_cdf")  # the quantile of a discrete distribution


@pytest.mark.parametrize("values", [[0.2, 0.5, 0.4], [0.1, 0.3, 0.35, 0.6], [0.5, 0.5, 0.7, 0.2, 0.9]])
def test_mean_interval_matches_enumeration(values):
    iv = stats.mean_interval(values, n_boot=40000, seed=1)
    lo, hi = exact_quantiles(exact_means(values))
    assert iv.mean == pytest.approx(np.mean(values))
    # Monte Carlo quantiles sit on or between neighbouring atoms of the exact distribution
    atoms = np.unique(exact_means(values))
    step = np.max(np.diff(atoms)) if len(atoms) > 1 else 0
    assert abs(iv.low - lo) <= step + 1e-9 and abs(iv.high - hi) <= step + 1e-9
    assert iv.low <= iv.mean <= iv.high and iv.n == len(values)


@pytest.mark.parametrize("a,b", [([0.6, 0.7, 0.65], [0.5, 0.55, 0.7]), ([0.3, 0.4], [0.35, 0.2, 0.5]),
                                 ([0.8, 0.8, 0.8], [0.1, 0.2, 0.3])])
def test_probability_of_improvement_and_difference_match_enumeration(a, b):
    ma, mb = exact_means(a), exact_means(b)
    d = (ma[:, None] - mb[None, :]).ravel()  # every pair of resamples, equally likely
    p_exact = np.mean(d > 0) + 0.5 * np.mean(d == 0)
    c = stats.compare(a, b, n_boot=60000, seed=2)
    assert c.p_improve == pytest.approx(p_exact, abs=0.01)
    lo, hi = exact_quantiles(d)
    spread = np.ptp(d)
    assert abs(c.diff.low - lo) <= 0.03 * spread + 1e-9 and abs(c.diff.high - hi) <= 0.03 * spread + 1e-9
    assert c.diff.mean == pytest.approx(np.mean(a) - np.mean(b))
    lower = stats.compare(a, b, n_boot=60000, seed=2, higher_is_better=False)
    assert lower.p_improve == pytest.approx(1 - p_exact, abs=0.01)


def test_separation_and_overlap():
    far = stats.compare([0.9, 0.91, 0.92], [0.1, 0.11, 0.12])
    assert far.separated and far.p_improve == 1.0
    near = stats.compare([0.5, 0.6], [0.55, 0.58])
    assert not near.separated
    assert stats.mean_interval([0.5, 0.6]).overlaps(stats.mean_interval([0.55, 0.58]))
    assert not stats.mean_interval([0.9, 0.91]).overlaps(stats.mean_interval([0.1, 0.11]))


def test_one_seed_and_missing_values_give_no_interval():
    one = stats.mean_interval([0.4, float("nan")])
    assert one.mean == 0.4 and np.isnan(one.low) and one.n == 1 and "1 seed" in one.fmt()
    assert np.isnan(stats.mean_interval([]).mean)
    c = stats.compare([0.4], [0.3])
    assert c.diff.mean == pytest.approx(0.1) and np.isnan(c.diff.low) and np.isnan(c.p_improve)
    assert np.isnan(stats.compare([], [0.3]).diff.mean)


def test_band_over_seeds_per_step():
    mat = np.array([[0.1, 0.2, np.nan], [0.3, 0.4, 0.5]])
    mean, lo, hi, count = stats.band(mat, n_boot=20000)
    assert np.allclose(mean, [0.2, 0.3, 0.5]) and list(count) == [2, 2, 1]
    for j in range(2):  # two seeds: the exact bootstrap means are {x0, mean, x1} with weights 1/4, 1/2, 1/4
        lo_e, hi_e = exact_quantiles(exact_means(mat[:, j]))
        assert lo[j] == pytest.approx(lo_e, abs=1e-9) and hi[j] == pytest.approx(hi_e, abs=1e-9)
    assert np.isnan(lo[2]) and np.isnan(hi[2])  # one seed at that step: no band
