"""Runs -> comparison groups (a strategy, a sweep trial, any key), with the incomplete data sorted out:
failed and killed runs are left out and listed (a pruned sweep trial, KILLED in MLflow, is kept),
runs in progress and pruned trials are kept and marked, a group with one seed is noted.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import pandas as pd

from treepo_lab.analysis.runset import RunSet
from treepo_lab.tags import ERROR_TAG, EXPERIMENT_TAG, SEED_TAG, STRATEGY_TAG, TRIAL_STATE_TAG, TRIAL_TAG

LEFT_OUT = ("FAILED", "KILLED")
IN_PROGRESS = ("RUNNING", "SCHEDULED")
SEED_SUFFIX = re.compile(r"[\s_-]+s\d+$")


@dataclass
class Group:
    label: str
    style_key: str  # what picks the colour and marker (the registry experiment where there is one)
    run_ids: list[str]
    seeds: list[str]
    running: list[str] = field(default_factory=list)  # run ids still in progress
    pruned: list[str] = field(default_factory=list)
    sequential: bool = False  # the sequential-sampling baseline

    @property
    def n(self) -> int:
        return len(self.run_ids)


@dataclass
class Grouping:
    keys: list[str]
    groups: list[Group]
    left_out: pd.DataFrame  # run_name, status, error of failed / killed runs
    notes: list[str] = field(default_factory=list)

    def by_label(self, label: str) -> Group | None:
        return next((g for g in self.groups if g.label == label), None)


def column(runs: pd.DataFrame, key: str) -> str | None:
    """The runs-frame column for a group-by key: tags.X / params.X as written, else tag X, else param X."""
    for c in (key, f"tags.{key}", f"params.{key}"):
        if c in runs.columns:
            return c
    return None


def default_keys(data: RunSet) -> list[str]:
    """A sweep compares its trials; otherwise the strategy tag, unless it merges registry experiments
    (older runs share one strategy tag across experiments), then the registry experiment."""
    runs = data.runs
    if data.kind == "sweep" and "tags.sweep.seed" in runs.columns:
        # a sweep of (point, seed) units (order: shuffled, blocks): a trial is one seed; the arms are its points
        return sorted(c[len("tags."):] for c in runs.columns if c.startswith("tags.sweep.") and c != "tags.sweep.seed")
    if data.kind == "sweep" and column(runs, "tags." + TRIAL_TAG):
        return [TRIAL_TAG]
    strat, exp = column(runs, "tags." + STRATEGY_TAG), column(runs, "tags." + EXPERIMENT_TAG)
    if strat and exp and (runs.groupby(strat)[exp].nunique() > 1).any():
        return [EXPERIMENT_TAG]
    return [STRATEGY_TAG] if strat else [EXPERIMENT_TAG] if exp else ["run_name"]


def _value(row: pd.Series, col: str | None) -> str:
    if col is None:
        return "(none)"
    v = row.get(col)
    return "(none)" if v is None or (isinstance(v, float) and pd.isna(v)) else str(v)


def _label(runs: pd.DataFrame, keys: list[str], cols: list[str | None], values: tuple) -> str:
    if keys == [TRIAL_TAG]:  # a sweep trial reads best as its run name without the seed
        name = str(runs["run_name"].iloc[0])
        stripped = SEED_SUFFIX.sub("", name)
        return stripped if stripped != name else f"t{values[0]}"
    if len(keys) == 1:
        return values[0]
    return " ".join(f"{k.split('.')[-1]}={v}" for k, v in zip(keys, values))


def group_runs(data: RunSet, keys: list[str] | None = None) -> Grouping:
    runs = data.runs
    keys = list(keys or default_keys(data))
    notes: list[str] = []
    if runs.empty:
        return Grouping(keys, [], pd.DataFrame(columns=["run_name", "status", "error"]), ["no runs selected"])
    cols = [column(runs, k) for k in keys]
    for k, c in zip(keys, cols):
        if c is None:
            notes.append(f"group-by key {k!r} is neither a tag nor a param of these runs: all runs share '(none)'")
    # a pruned trial ends KILLED in MLflow but its curve is data: kept, marked pruned
    state = runs["tags." + TRIAL_STATE_TAG] if "tags." + TRIAL_STATE_TAG in runs.columns else pd.Series("", index=runs.index)
    bad = runs["status"].isin(LEFT_OUT) & (state != "PRUNED")
    err = runs["tags." + ERROR_TAG] if "tags." + ERROR_TAG in runs.columns else pd.Series("", index=runs.index)
    left_out = pd.DataFrame({"run_id": runs.loc[bad, "run_id"], "run_name": runs.loc[bad, "run_name"],
                             "status": runs.loc[bad, "status"], "error": err[bad].fillna("")}).reset_index(drop=True)
    kept = runs[~bad]
    values = kept.apply(lambda r: tuple(_value(r, c) for c in cols), axis=1) if not kept.empty else pd.Series([], dtype=object)
    exp_col, seed_col = column(runs, "tags." + EXPERIMENT_TAG), column(runs, "tags." + SEED_TAG) or column(runs, "params.seed")
    state_col, kind_col = column(runs, "tags." + TRIAL_STATE_TAG), column(runs, "params.sampler.kind")
    groups = []
    for vals, idx in kept.groupby(values, sort=False).groups.items():
        g = kept.loc[idx]
        label = _label(g, keys, cols, vals)
        exps = g[exp_col].dropna().unique() if exp_col else []
        style_key = str(exps[0]) if len(exps) == 1 else label
        seeds = [str(s) for s in (g[seed_col] if seed_col else g["run_id"].str[:6])]
        groups.append(Group(
            label=label, style_key=style_key, run_ids=list(g["run_id"]), seeds=seeds,
            running=list(g.loc[g["status"].isin(IN_PROGRESS), "run_id"]),
            pruned=list(g.loc[g[state_col] == "PRUNED", "run_id"]) if state_col else [],
            sequential=bool(kind_col) and (g[kind_col] == "sequential").all()))
    # one style key per group: two groups of one experiment (e.g. trials) fall back to their labels
    seen: dict[str, int] = {}
    for g in groups:
        seen[g.style_key] = seen.get(g.style_key, 0) + 1
    for g in groups:
        if seen[g.style_key] > 1:
            g.style_key = g.label
    groups.sort(key=lambda g: _natural(g.label))
    for g in groups:
        if g.n == 1:
            notes.append(f"group {g.label!r} has one seed: no band or interval, its numbers are a single run")
        if g.running:
            notes.append(f"group {g.label!r}: {len(g.running)} run(s) still in progress (marked *)")
    if len(left_out):
        notes.append(f"{len(left_out)} failed or killed run(s) left out (listed below)")
    return Grouping(keys, groups, left_out, notes)


def _natural(label: str):
    """t2 before t10."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", label)]
