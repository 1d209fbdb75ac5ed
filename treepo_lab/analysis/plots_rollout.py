"""Rollout figures: efficiency against the sequential baseline, tree shape, and the Pareto front of
final accuracy against rollout compute."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from treepo_lab.analysis import stats
from treepo_lab.analysis.groups import Group, Grouping
from treepo_lab.analysis.plots_curves import _label, legend, no_data, step_bands
from treepo_lab.analysis.series import ACCURACY, TOKENS, Series
from treepo_lab.analysis.style import StrategyStyles, figure, save

SAVING = "rollout/token_saving"  # against independent sampling of the same leaves
SAVING_SEQ = "rollout/token_saving_vs_sequential"  # against the sequential sampler on the same engine
TRAJ_PS = "rollout/traj_per_s"
TOKEN_PS = "rollout/tokens_per_s"
DEPTH_RE = re.compile(r"^tree/depth-(\d+)_ratio$")
FINISH_RE = re.compile(r"^tree/finish/(.+)_ratio$")


def per_run(series: Series, g: Group, key: str, how: str = "mean") -> np.ndarray:
    f = {"mean": series.mean, "last": series.last, "best": series.best}[how]
    return np.array([f(r, key) for r in g.run_ids], dtype=float)


def _bars(ax, grouping, styles, values: dict[str, stats.Interval], scale: float = 1.0) -> None:
    labels = [g.label for g in grouping.groups]
    for i, g in enumerate(grouping.groups):
        iv = values[g.label]
        if np.isnan(iv.mean):
            continue
        kw = styles.kw(g.style_key)
        ax.bar(i, iv.mean / scale, color=kw["color"], label=_label(g), width=0.7)
        if not np.isnan(iv.low):
            ax.errorbar(i, iv.mean / scale, yerr=[[(iv.mean - iv.low) / scale], [(iv.high - iv.mean) / scale]],
                        color="0.15", capsize=2, linewidth=0.8)
    ax.set_xticks(range(len(labels)), [""] * len(labels))
    ax.grid(axis="x", visible=False)


def efficiency(series: Series, grouping: Grouping, styles: StrategyStyles, out: Path, notes: list[str],
               baseline: Group | None) -> list[Path]:
    fig, axes = figure(2, 2.6, ncols=4)
    panels = ((SAVING, "token saving vs\nindependent sampling", False),
              (SAVING_SEQ, "token saving vs\nsequential sampling", False),
              (TRAJ_PS, "TrajPS", True), (TOKEN_PS, "TokenPS", True))
    for ax, (key, title, as_ratio) in zip(axes[0], panels):
        values = {g.label: stats.mean_interval(per_run(series, g, key)) for g in grouping.groups}
        if all(np.isnan(v.mean) for v in values.values()):
            notes.append(f"rollout efficiency: no run logged {key}")
            no_data(ax, key)
            ax.set_title(title)
            continue
        scale, suffix = 1.0, ""
        if as_ratio:
            base = values.get(baseline.label) if baseline is not None else None
            if base is not None and base.mean > 0:
                scale, suffix = base.mean, f" / {baseline.label}"
                ax.axhline(1.0, color="0.3", linewidth=0.7, linestyle="--")
            else:
                suffix = " (per s)"
        _bars(ax, grouping, styles, values, scale)
        ax.set_title(title + (f"\nratio{suffix}" if as_ratio and scale != 1.0 else suffix))
    if baseline is None:
        notes.append("rollout efficiency: no sequential-sampling group, TrajPS and TokenPS shown as absolute rates")
    legend(fig, axes)
    return save(fig, out / "rollout_efficiency")


def _ratio_keys(keys: set[str], pattern: re.Pattern) -> list[tuple[str, str]]:
    found = [(k, pattern.match(k).group(1)) for k in keys if pattern.match(k)]
    return sorted(found, key=lambda kv: int(kv[1]) if kv[1].isdigit() else kv[1])


def tree_shape(series: Series, grouping: Grouping, styles: StrategyStyles, out: Path, notes: list[str],
               keys: set[str]) -> list[Path]:
    fig, axes = figure(2, 4.6, nrows=2, ncols=2)
    ax = axes[0, 0]  # depth histogram: grouped bars
    depths = _ratio_keys(keys, DEPTH_RE)
    n = max(len(grouping.groups), 1)
    for i, g in enumerate(grouping.groups):
        means = [np.nanmean(per_run(series, g, k)) if g.run_ids else np.nan for k, _ in depths]
        xs = np.arange(len(depths)) + (i - (n - 1) / 2) * 0.8 / n
        ax.bar(xs, means, width=0.8 / n, color=styles.color(g.style_key), label=_label(g))
    if depths:
        ax.set_xticks(range(len(depths)), [d for _, d in depths])
    else:
        notes.append("tree shape: no tree/depth-k_ratio metrics")
        no_data(ax, "depth ratios")
    ax.set_xlabel("leaf depth (segments)")
    ax.set_ylabel("share of leaves")
    for ax, key, ylabel in ((axes[0, 1], "tree/children_per_active_path/mean", "branches per active path"),
                            (axes[1, 0], "train/prompt_fallback_ratio", "prompts with fallback")):
        step_bands(ax, series, grouping, styles, key, ylabel, notes, "tree shape")
    ax = axes[1, 1]  # finish reasons: stacked bars, one per group, greys so strategy colours stay unique
    reasons = _ratio_keys(keys, FINISH_RE)
    shades = [str(v) for v in np.linspace(0.15, 0.9, max(len(reasons), 1))]
    hatches = ["", "//", "..", "xx", "\\\\", "--", "++", "oo"]
    bottom = np.zeros(len(grouping.groups))
    for j, (k, reason) in enumerate(reasons):
        vals = np.array([np.nanmean(per_run(series, g, k)) if g.run_ids else 0.0 for g in grouping.groups])
        vals = np.nan_to_num(vals)
        ax.bar(range(len(grouping.groups)), vals, bottom=bottom, color=shades[j], hatch=hatches[j % len(hatches)],
               edgecolor="white", linewidth=0.3, label=reason.replace("_", " "))
        bottom += vals
    if reasons:
        ax.set_xticks(range(len(grouping.groups)), [g.label for g in grouping.groups], rotation=30, ha="right")
        ax.legend(fontsize=5, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    else:
        notes.append("tree shape: no tree/finish/*_ratio metrics")
        no_data(ax, "finish reasons")
    ax.set_ylabel("share of leaves")
    ax.set_title("finish reasons")
    # the figure legend names the groups only (finish reasons have their own, inside the panel)
    legend(fig, axes[:1])
    return save(fig, out / "tree_shape")


def pareto_points(series: Series, grouping: Grouping) -> list[dict]:
    """Per group: final accuracy and final rollout tokens (means over seeds) and whether it is on the front."""
    pts = []
    for g in grouping.groups:
        acc, tok = per_run(series, g, ACCURACY, "last"), per_run(series, g, TOKENS, "last")
        a, t = stats.mean_interval(acc), stats.mean_interval(tok)
        if not (np.isnan(a.mean) or np.isnan(t.mean)):
            pts.append({"group": g, "acc": a, "tokens": t})
    for p in pts:  # dominated: another point at least as good on both and strictly better on one
        p["front"] = not any(q["acc"].mean >= p["acc"].mean and q["tokens"].mean <= p["tokens"].mean
                             and (q["acc"].mean > p["acc"].mean or q["tokens"].mean < p["tokens"].mean) for q in pts)
    return pts


def pareto(series: Series, grouping: Grouping, styles: StrategyStyles, out: Path, notes: list[str]) -> list[Path]:
    fig, axes = figure(1, 2.8)
    ax = axes[0, 0]
    pts = pareto_points(series, grouping)
    if not pts:
        notes.append(f"Pareto front: no run has both {ACCURACY} and rollout token counters")
        no_data(ax, "accuracy and compute")
    for p in pts:
        g, a, t = p["group"], p["acc"], p["tokens"]
        kw = styles.kw(g.style_key)
        err = dict(xerr=None if np.isnan(t.low) else [[t.mean - t.low], [t.high - t.mean]],
                   yerr=None if np.isnan(a.low) else [[a.mean - a.low], [a.high - a.mean]])
        ax.errorbar(t.mean, a.mean, **err, color=kw["color"], marker=kw["marker"], markersize=6 if p["front"] else 4,
                    markeredgecolor="black" if p["front"] else kw["color"], markeredgewidth=1.2 if p["front"] else 0.5,
                    linewidth=0.7, capsize=1.5, label=_label(g))
    front = sorted((p for p in pts if p["front"]), key=lambda p: p["tokens"].mean)
    if len(front) > 1:
        ax.step([p["tokens"].mean for p in front], [p["acc"].mean for p in front], where="post", color="0.2",
                linewidth=0.8, linestyle="--", zorder=0, label="Pareto front")
    ax.set_xlabel("rollout tokens (decoded + prefill)")
    ax.set_ylabel("final held-out accuracy")
    ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 3))
    ax.set_title("front: black edge (higher accuracy, fewer tokens)")
    legend(fig, axes)
    return save(fig, out / "pareto")
