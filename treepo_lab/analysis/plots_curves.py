"""Curves over training: held-out accuracy per step with a 95% bootstrap band over seeds, the
compute-matched views (accuracy at common token and wall-time budgets) and training dynamics.

Each function returns the written files (PNG + PDF) and appends what it could not draw to `notes`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from treepo_lab.analysis import stats
from treepo_lab.analysis.groups import Grouping
from treepo_lab.analysis.series import ACCURACY, CPU, TOKENS, WALL, Series, at_budgets, common_budgets
from treepo_lab.analysis.style import StrategyStyles, figure, save

DYNAMICS = (("response_length/mean", "response length (tokens)"), ("actor/entropy", "entropy (nats)"),
            ("actor/pg_clipfrac", "clip fraction"))


def legend(fig, axes) -> None:
    """One legend for the whole figure, below the panels, without duplicates."""
    seen = {}
    for ax in np.ravel(axes):
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    if seen:
        per_row = 2 if fig.get_size_inches()[0] < 4 else 4  # a single-column figure fits two entries a row
        fig.legend(seen.values(), seen.keys(), loc="outside lower center", ncols=min(per_row, len(seen)),
                   handlelength=1.8, columnspacing=1.0)


def no_data(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what}", ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def draw_band(ax, x, mat, styles: StrategyStyles, key: str, label: str, markevery=None) -> None:
    mean, lo, hi, _ = stats.band(mat)
    ok = np.isfinite(mean)
    if not ok.any():
        return
    kw = styles.kw(key)
    ax.plot(x[ok], mean[ok], label=label, markevery=markevery if markevery else max(1, ok.sum() // 8), **kw)
    banded = ok & np.isfinite(lo)
    if banded.any():
        ax.fill_between(x[banded], lo[banded], hi[banded], color=kw["color"], alpha=0.2, linewidth=0)


def _label(g) -> str:
    return g.label + ("*" if g.running else "")


def step_bands(ax, series: Series, grouping: Grouping, styles: StrategyStyles, key: str, ylabel: str,
               notes: list[str], section: str) -> None:
    """One band per group of `key` against the training step; a note and an empty panel where no run has it."""
    drawn = 0
    for g in grouping.groups:
        steps, mat = series.matrix(g, key)
        if len(steps):
            draw_band(ax, steps, mat, styles, g.style_key, _label(g))
            drawn += 1
    if not drawn:
        notes.append(f"{section}: no run logged {key}")
        no_data(ax, key)
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)


def accuracy_vs_step(series: Series, grouping: Grouping, styles: StrategyStyles, out: Path, notes: list[str],
                     key: str = ACCURACY) -> list[Path]:
    fig, axes = figure(1, 2.6)
    ax = axes[0, 0]
    step_bands(ax, series, grouping, styles, key, "held-out accuracy", notes, "accuracy vs step")
    ax.set_title("mean over seeds, 95% bootstrap band")
    legend(fig, axes)
    return save(fig, out / "accuracy_vs_step")


def _matched(ax, series, grouping, styles, x_key: str) -> int:
    curves = {g.label: [series.paired(r, ACCURACY, x_key) for r in g.run_ids] for g in grouping.groups}
    budgets = common_budgets([c for cs in curves.values() for c in cs])
    drawn = 0
    for g in grouping.groups:
        if not len(budgets) or not any(len(x) for x, _ in curves[g.label]):
            continue
        draw_band(ax, budgets, at_budgets(curves[g.label], budgets), styles, g.style_key, _label(g), markevery=4)
        drawn += 1
    return drawn


def compute_matched(series: Series, grouping: Grouping, styles: StrategyStyles, out: Path, notes: list[str]) -> list[Path]:
    fig, axes = figure(2, 2.5, ncols=2)
    # process CPU seconds where the runs logged them: wall time also counts whoever else used the machine
    cpu = any(series.has(r, CPU) for g in grouping.groups for r in g.run_ids)
    time_key, time_label = (CPU, "training CPU time (s)") if cpu else (WALL, "wall time (s)")
    for ax, x_key, xlabel in ((axes[0, 0], TOKENS, "rollout tokens (decoded + prefill)"),
                              (axes[0, 1], time_key, time_label)):
        if not _matched(ax, series, grouping, styles, x_key):
            notes.append(f"compute-matched view: no run has both {ACCURACY} and {x_key}")
            no_data(ax, f"{ACCURACY} with {x_key}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("held-out accuracy")
    axes[0, 0].ticklabel_format(axis="x", style="sci", scilimits=(0, 3))
    axes[0, 0].set_title("at common token budgets")
    axes[0, 1].set_title("at common CPU-time budgets" if cpu else "at common wall-time budgets")
    legend(fig, axes)
    return save(fig, out / "compute_matched")


def dynamics(series: Series, grouping: Grouping, styles: StrategyStyles, out: Path, notes: list[str]) -> list[Path]:
    fig, axes = figure(2, 2.4, ncols=3)
    for ax, (key, ylabel) in zip(axes[0], DYNAMICS):
        step_bands(ax, series, grouping, styles, key, ylabel, notes, "training dynamics")
    legend(fig, axes)
    return save(fig, out / "training_dynamics")
