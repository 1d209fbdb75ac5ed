"""The runs table: one row per finished run x held-out evaluation, the only input of every number in a
findings or comparison report. Written beside each report as runs.csv; `--from-csv runs.csv` reads it back
and re-derives the report exactly (floats are written with round-trip precision).

Columns: run_id, experiment, seed, step, accuracy, tokens (rollout tokens spent so far: decoded + prefill),
cpu_s (process CPU seconds of training so far, children included: independent of who else uses the
machine), wall_s; then sample_accuracy (mean accuracy of k samples at T=1, where evaluated), host,
start_time / end_time (ms since the epoch), `knob:<key>` for every config key whose value differs between the
runs (what tells arms apart, and warm starts apart), and `fires:<metric>` (training steps so far in which
that metric was > 0: whether an intervention actually happened).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from treepo_lab.analysis.runset import RunSet
from treepo_lab.analysis.series import ACCURACY, CPU, DECODED, TOKENS, WALL, Series
from treepo_lab.registry import ConfigError
from treepo_lab.tags import EXPERIMENT_TAG, HOST_TAG, SEED_TAG

REQUIRED = ("run_id", "experiment", "seed", "step", "accuracy", "tokens", "cpu_s", "wall_s")
SAMPLE_ACCURACY = "eval/sample_accuracy"

KNOB, FIRES = "knob:", "fires:"
# params that name or place a run rather than configure what it learns (the seed has its own column)
NOT_KNOBS = ("seed", "name", "tracking.", "trainer.output_dir", "model.path", "warmstart.cache_dir")


def _col(runs: pd.DataFrame, *names: str):
    return next((runs[c] for c in names if c in runs.columns), pd.Series([None] * len(runs), index=runs.index))


def knob_columns(params: pd.DataFrame, keep: tuple[str, ...] = ()) -> list[str]:
    """The param columns whose values differ between the runs (a missing value counts as a value), and those
    of `keep` (keys a finding selects runs by: they must be in the table even where every run agrees)."""
    out = []
    for c in params.columns:
        key = c[len("params."):]
        if not c.startswith("params.") or key.startswith(NOT_KNOBS):
            continue
        if key in keep or params[c].fillna("(unset)").astype(str).nunique() > 1:
            out.append(c)
    return out


def build(data: RunSet, fires: tuple[str, ...] = (), keep: tuple[str, ...] = (),
          series: Series | None = None) -> tuple[pd.DataFrame, list[str]]:
    """(the runs table of the finished runs of `data`, notes on what was left out); `keep`: param keys whose
    column is written whether or not the runs differ in it; `series`: the caller's Series of `data`, if built."""
    runs = data.runs
    notes = []
    if "status" in runs.columns:
        others = runs[runs["status"] != "FINISHED"]
        if len(others):
            notes.append(f"{len(others)} run(s) not FINISHED left out: "
                         + ", ".join(f"{n} ({s})" for n, s in zip(others["run_name"], others["status"])))
        runs = runs[runs["status"] == "FINISHED"]
    series = Series(data) if series is None else series
    knobs = knob_columns(runs, keep)
    rows = []
    for _, r in runs.iterrows():
        rid = r["run_id"]
        steps, acc = series.get(rid, ACCURACY)
        if not len(steps):
            notes.append(f"{r.get('run_name', rid)}: no held-out evaluation logged, left out")
            continue
        base = {"run_id": rid, "experiment": r.get("tags." + EXPERIMENT_TAG), "seed": _seed(r),
                "host": r.get("tags." + HOST_TAG), "start_time": r.get("start_time"), "end_time": r.get("end_time")}
        base.update({KNOB + c[len("params."):]: r[c] for c in knobs})
        cols = {"tokens": _at(series, rid, TOKENS, steps), "cpu_s": _at(series, rid, CPU, steps),
                "wall_s": _at(series, rid, WALL, steps), "sample_accuracy": _at(series, rid, SAMPLE_ACCURACY, steps)}
        cols["tokens"][steps == 0] = 0.0  # the evaluation before training has spent nothing
        fired = {FIRES + m: _fired(series, rid, m, steps) for m in fires}
        for i, s in enumerate(steps):
            rows.append({**base, "step": int(s), "accuracy": float(acc[i]),
                         **{k: v[i] for k, v in cols.items()}, **{k: v[i] for k, v in fired.items()}})
    columns = [*REQUIRED, "sample_accuracy", "host", "start_time", "end_time",
               *(KNOB + c[len("params."):] for c in knobs), *(FIRES + m for m in fires)]
    table = pd.DataFrame(rows, columns=columns)
    return table.sort_values(["experiment", "seed", "run_id", "step"], kind="stable").reset_index(drop=True), notes


def _seed(r: pd.Series):
    v = r.get("tags." + SEED_TAG, r.get("params.seed"))
    try:
        return int(v)
    except (TypeError, ValueError):
        return -1


def _at(series: Series, rid: str, key: str, steps: np.ndarray) -> np.ndarray:
    """The value of `key` at each evaluation step (its last value at or before that step); NaN without one."""
    s, v = series.get(rid, key)
    out = np.full(len(steps), np.nan)
    if len(s):
        pos = np.searchsorted(s, steps, side="right") - 1
        out[pos >= 0] = v[pos[pos >= 0]]
    return out


def _fired(series: Series, rid: str, metric: str, steps: np.ndarray) -> np.ndarray:
    s, v = series.get(rid, metric)
    if not len(s):
        return np.full(len(steps), np.nan)  # never logged: unknown, not zero
    cum = np.cumsum(v > 0)
    pos = np.searchsorted(s, steps, side="right") - 1
    return np.where(pos >= 0, cum[np.clip(pos, 0, None)], 0).astype(float)


def write(table: pd.DataFrame, path: Path) -> Path:
    table.to_csv(path, index=False)  # shortest round-trip float text: read back bit for bit (tested)
    return path


def read(path: str | Path) -> pd.DataFrame:
    """A runs table from CSV, checked: a missing file or column is one line naming it."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("--from-csv", str(path), "an existing runs.csv written beside a report")
    try:
        header = pd.read_csv(p, nrows=0).columns
        text = {c: str for c in header if c.startswith(KNOB) or c in ("run_id", "experiment", "host")}
        # only an empty cell is missing: a knob spelled "null" or "None" stays that text
        table = pd.read_csv(p, dtype=text, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise ConfigError("--from-csv", str(path), f"a CSV file ({type(err).__name__})") from None
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise ConfigError("--from-csv", str(path), f"a runs table with the columns {', '.join(REQUIRED)} "
                          f"(missing: {', '.join(missing)})")
    return table


def knobs_of(table: pd.DataFrame) -> list[str]:
    return [c[len(KNOB):] for c in table.columns if c.startswith(KNOB)]


def to_runset(table: pd.DataFrame, name: str, source: str) -> RunSet:
    """The runs table as a RunSet (held-out curves and their costs only), for the figures and tables that
    read a Series: what `--from-csv` rebuilds, and what the findings figure is drawn from either way."""
    keys = {"accuracy": ACCURACY, "tokens": DECODED, "wall_s": WALL, "cpu_s": CPU, "sample_accuracy": SAMPLE_ACCURACY}
    parts = []
    for col, key in keys.items():
        if col in table.columns:
            part = table[["run_id", "step", col]].dropna().rename(columns={col: "value"})
            parts.append(part.assign(key=key))
    metrics = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["run_id", "key", "step", "value"])
    metrics["timestamp"] = metrics["step"].astype("int64")
    metrics = metrics[["run_id", "key", "step", "value", "timestamp"]].astype({"step": "int64", "value": float})
    first = table.groupby("run_id", sort=False).first().reset_index()
    runs = pd.DataFrame({"run_id": first["run_id"], "status": "FINISHED",
                         "run_name": first["experiment"].astype(str) + "-s" + first["seed"].astype(str),
                         "tags." + EXPERIMENT_TAG: first["experiment"], "tags." + SEED_TAG: first["seed"].astype(str)})
    for c in [c for c in first.columns if c.startswith(KNOB)]:
        runs["params." + c[len(KNOB):]] = first[c]
    return RunSet(name, source, runs, metrics, kind="csv")
