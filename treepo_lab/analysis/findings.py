"""The paper's findings (analysis/findings.yaml) tested on runs: compute-matched differences with 95%
bootstrap intervals over seeds, a verdict read from the interval, and the seeds a separation would need.

Compute matching: every run's held-out accuracy curve is interpolated at the largest budget that every run
of the two groups reached (rollout tokens = decoded + prefill; wall time), so the comparison never credits a
method for having been given more compute. Time-to-accuracy: the wall time each run of the experiment needs
to reach the reference's final mean accuracy, over the reference's own time to reach it (a ratio of means,
seeds resampled within each group; a run that never reaches it counts as infinitely slow).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from treepo_lab.analysis import stats
from treepo_lab.analysis.groups import Group, Grouping
from treepo_lab.analysis.series import ACCURACY, TOKENS, WALL, Series, at_budgets, first_reach
from treepo_lab.analysis.tables import Table
from treepo_lab.registry import ConfigError

DIRECTIONS = ("higher", "lower")
VERDICTS = ("reproduced", "refuted", "seeds cannot separate")
FIELDS = ("id", "claim", "experiment", "reference", "direction")


@dataclass(frozen=True)
class Finding:
    id: str
    claim: str
    experiment: str
    reference: str
    direction: str  # the claimed sign of experiment - reference: higher | lower


def load_findings(path: str | Path, known_experiments: list[str] | None = None) -> list[Finding]:
    """Parse and check the findings file (one-line errors naming the field, before anything runs)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("findings", str(path), "an existing YAML file (e.g. analysis/findings.yaml)")
    raw = yaml.safe_load(p.read_text()) or {}
    items = raw.get("findings") if isinstance(raw, dict) else None
    if not isinstance(items, list) or not items:
        raise ConfigError("findings", str(path), "a YAML file with a non-empty list under `findings:`")
    out, seen = [], set()
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ConfigError(f"findings[{i}]", item, f"a mapping with keys {', '.join(FIELDS)}")
        for key in FIELDS:
            if not isinstance(item.get(key), str) or not item[key].strip():
                raise ConfigError(f"findings[{i}].{key}", item.get(key), "a non-empty string")
        extra = sorted(set(item) - set(FIELDS))
        if extra:
            raise ConfigError(f"findings[{i}].{extra[0]}", item[extra[0]], f"one of the keys {', '.join(FIELDS)}")
        if item["direction"] not in DIRECTIONS:
            raise ConfigError(f"findings[{i}].direction", item["direction"], f"one of {', '.join(DIRECTIONS)}")
        for key in ("experiment", "reference"):
            if known_experiments is not None and item[key] not in known_experiments:
                raise ConfigError(f"findings[{i}].{key}", item[key], f"a registry experiment: {', '.join(known_experiments)}")
        if item["id"] in seen:
            raise ConfigError(f"findings[{i}].id", item["id"], "an id not used by another finding")
        seen.add(item["id"])
        out.append(Finding(**{k: item[k] for k in FIELDS}))
    return out


def experiments_of(findings: list[Finding]) -> list[str]:
    """Every experiment the findings need, in first-mention order."""
    return list(dict.fromkeys(e for f in findings for e in (f.experiment, f.reference)))


def verdict(diff: stats.Interval, direction: str) -> str:
    """From the 95% interval alone: which side of 0 it lies on, if it excludes 0."""
    if np.isnan(diff.low) or np.isnan(diff.high) or diff.low <= 0 <= diff.high:
        return "seeds cannot separate"
    higher = diff.low > 0
    return "reproduced" if higher == (direction == "higher") else "refuted"


def seeds_needed(diff: stats.Interval) -> float:
    """Seeds per group for the 95% interval to exclude 0, if the observed difference held: the interval's
    half-width shrinks as 1/sqrt(n), so n * (half-width / |difference|)^2 (inf without a difference)."""
    if np.isnan(diff.low) or diff.n < 2:
        return float("nan")
    half = (diff.high - diff.low) / 2
    if diff.mean == 0:
        return float("inf")
    return float(max(2, math.ceil(diff.n * (half / abs(diff.mean)) ** 2)))


def matched(series: Series, runs_a: list[str], runs_b: list[str], x_key: str) -> tuple[float, np.ndarray, np.ndarray]:
    """(budget, accuracy of each run of a at it, the same for b): the largest budget every run reached."""
    curves_a = [series.paired(r, ACCURACY, x_key) for r in runs_a]
    curves_b = [series.paired(r, ACCURACY, x_key) for r in runs_b]
    ends = [x.max() for x, _ in curves_a + curves_b if len(x)]
    if not ends or any(not len(x) for x, _ in curves_a + curves_b):
        return float("nan"), np.array([]), np.array([])
    budget = np.array([min(ends)])
    return float(budget[0]), at_budgets(curves_a, budget)[:, 0], at_budgets(curves_b, budget)[:, 0]


def time_ratio(series: Series, runs_a: list[str], runs_b: list[str], n_boot: int = 2000,
               seed: int = 0) -> tuple[stats.Interval, float]:
    """(wall time for a's seed-mean accuracy curve to reach b's final mean accuracy / b's mean training wall
    time, with its interval; that level). The seed-mean curve, not each run: one 200-problem evaluation is
    noisy, and half of b's own runs end below b's mean. Seeds are resampled within each group; a resample
    whose mean curve never reaches the level gives an infinite ratio."""
    nan = float("nan")
    level = float(np.nanmean([series.last(r, ACCURACY) for r in runs_b])) if runs_b else nan
    curves = [series.paired(r, ACCURACY, WALL) for r in runs_a]
    ends_b = np.array([series.last(r, WALL) for r in runs_b])
    if np.isnan(level) or not curves or any(not len(x) for x, _ in curves) or np.isnan(ends_b).any():
        return stats.Interval(nan, nan, nan, 0), level
    grid = np.linspace(0.0, min(x.max() for x, _ in curves), 200)
    acc = at_budgets(curves, grid)  # seeds x grid

    def ratio(rows_a, rows_b) -> float:
        t = first_reach(grid, np.nanmean(acc[rows_a], axis=0), level)
        return np.inf if np.isnan(t) else t / ends_b[rows_b].mean()

    point = ratio(np.arange(len(runs_a)), np.arange(len(runs_b)))
    if len(runs_a) < 2 or len(runs_b) < 2:
        return stats.Interval(point, nan, nan, min(len(runs_a), len(runs_b))), level
    rng = np.random.default_rng(seed)
    boots = np.sort([ratio(rng.integers(0, len(runs_a), len(runs_a)), rng.integers(0, len(runs_b), len(runs_b)))
                     for _ in range(n_boot)])
    # order statistics, not interpolation: an infinite ratio (never reached) must stay infinite, not NaN
    lo, hi = boots[int(0.025 * (n_boot - 1))], boots[int(math.ceil(0.975 * (n_boot - 1)))]
    return stats.Interval(float(point), float(lo), float(hi), min(len(runs_a), len(runs_b))), level


@dataclass
class FindingResult:
    finding: Finding
    seeds: tuple[int, int]  # runs of experiment, reference
    tokens_budget: float
    at_tokens: stats.Interval  # accuracy difference at equal rollout tokens (the verdict's interval)
    wall_budget: float
    at_wall: stats.Interval  # accuracy difference at equal wall time
    time_ratio: stats.Interval  # wall time to the reference's final accuracy, experiment / reference
    level: float
    verdict: str
    seeds_needed: float
    missing: str = ""  # why the finding has no estimate (an experiment without finished runs)


def _finished(g: Group | None) -> Group | None:
    if g is None:
        return None
    done = [i for i, r in enumerate(g.run_ids) if r not in g.running]
    if not done:
        return None
    return dataclasses.replace(g, run_ids=[g.run_ids[i] for i in done], seeds=[g.seeds[i] for i in done], running=[])


def evaluate(findings: list[Finding], series: Series, grouping: Grouping) -> list[FindingResult]:
    out = []
    nan = float("nan")
    none = stats.Interval(nan, nan, nan, 0)
    for f in findings:
        a, b = grouping.by_label(f.experiment), grouping.by_label(f.reference)
        # a run still in progress has a truncated curve: it would pull the matched budget down to where it is
        a, b = (_finished(g) for g in (a, b))
        if a is None or b is None:
            gone = ", ".join(e for e, g in ((f.experiment, a), (f.reference, b)) if g is None)
            out.append(FindingResult(f, (a.n if a else 0, b.n if b else 0), nan, none, nan, none, none, nan,
                                     "seeds cannot separate", nan, f"no finished runs of {gone}"))
            continue
        tb, acc_a, acc_b = matched(series, a.run_ids, b.run_ids, TOKENS)
        wb, wall_a, wall_b = matched(series, a.run_ids, b.run_ids, WALL)
        at_tokens = stats.compare(acc_a, acc_b).diff if len(acc_a) else none
        at_wall = stats.compare(wall_a, wall_b).diff if len(wall_a) else none
        ratio, level = time_ratio(series, a.run_ids, b.run_ids)
        out.append(FindingResult(f, (a.n, b.n), tb, at_tokens, wb, at_wall, ratio, level,
                                 verdict(at_tokens, f.direction), seeds_needed(at_tokens)))
    return out


def _pp(i: stats.Interval) -> str:
    """A difference of accuracies in percentage points with its interval."""
    if np.isnan(i.mean):
        return "n/a"
    if np.isnan(i.low):
        return f"{100 * i.mean:+.1f}"
    return f"{100 * i.mean:+.1f} [{100 * i.low:+.1f}, {100 * i.high:+.1f}]"


def _ratio(i: stats.Interval) -> str:
    f = lambda v: "never" if v == np.inf else f"{v:.2f}"
    if np.isnan(i.mean):
        return "n/a"
    return f(i.mean) if np.isnan(i.low) else f"{f(i.mean)} [{f(i.low)}, {f(i.high)}]"


FINDINGS_COLUMNS = ["finding", "paper's claim", "experiment vs reference", "seeds",
                    "Δ acc. at equal rollout tokens (pp) [95% CI]",
                    "Δ acc. at equal wall time (pp) [95% CI]", "wall time to ref. final acc. / ref. wall time [95% CI]",
                    "verdict"]


def findings_table(results: list[FindingResult]) -> Table:
    rows = []
    for r in results:
        f = r.finding
        claim = f"{f.claim} ({'experiment > reference' if f.direction == 'higher' else 'experiment < reference'})"
        rows.append([f.id, claim, f"{f.experiment} vs {f.reference}", f"{r.seeds[0]}/{r.seeds[1]}", _pp(r.at_tokens),
                     _pp(r.at_wall), _ratio(r.time_ratio), r.verdict + (f" ({r.missing})" if r.missing else "")])
    return Table(FINDINGS_COLUMNS, rows, "Verdict from the interval at equal rollout tokens: reproduced = it excludes 0 on "
                 "the claimed side, refuted = on the other side, otherwise the seeds cannot separate. Time ratio: wall time for "
                 "the experiment's seed-mean accuracy to reach the reference's final mean accuracy, over the reference's "
                 "training wall time (< 1: sooner; never: not within the experiment's own training).")


def power_table(results: list[FindingResult]) -> Table:
    rows = []
    for r in results:
        n = r.seeds_needed
        need = "n/a" if np.isnan(n) else ("no difference observed" if n == np.inf else f"{int(n)}")
        have = min(r.seeds)
        advice = ("separated" if r.verdict != "seeds cannot separate" else
                  "n/a" if np.isnan(n) else "more seeds would not help (no effect)" if n == np.inf or n > 200 else
                  f"add {max(0, int(n) - have)} seed(s) per experiment")
        rows.append([r.finding.id, _pp(r.at_tokens), str(have), need, advice])
    return Table(["finding", "Δ at equal tokens (pp)", "seeds now", "seeds needed for 95%", "advice"], rows,
                 "Seeds needed = n x (half-width of the 95% bootstrap interval / |observed difference|)^2: the interval "
                 "narrows as 1/sqrt(seeds), so this is the count at which the observed effect, if real, excludes 0.")
