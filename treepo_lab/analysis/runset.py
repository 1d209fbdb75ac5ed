"""MLflow runs as tidy pandas frames: one row per run x metric x step, full histories, params and
tags joined; each run's history cached on disk and refetched only when the run changed.

    data = load(sweep="demo")                        # or experiment=, filter_string=, run_ids=
    data.runs       # one row per run: run_id, run_name, status, start/end, params.*, tags.*
    data.metrics    # run_id, key, step, value, timestamp (long format)
    data.tidy()     # metrics joined with the run columns (what `treepo-lab export` writes)

The cache key of a run is its status, end time and the newest (timestamp, step) among its latest
metric values, all of which search_runs returns anyway; a run that logs anything new, or ends,
gets a new key. Histories come from MlflowClient.get_metric_history, a few threads at a time.
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Run

from treepo_lab.analysis.selection import Selected, select_runs
from treepo_lab.registry import ConfigError
from treepo_lab.track.config import TrackingConfig

METRIC_COLUMNS = ["run_id", "key", "step", "value", "timestamp"]
FETCH_THREADS = 8  # history requests are I/O bound (SQLite reads, HTTP round trips)
CACHE_VERSION = 1


def default_cache_dir() -> Path:
    root = os.environ.get("TREEPO_CACHE_DIR") or Path.home() / ".cache" / "treepo_lab"
    return Path(root) / "analysis"


def run_key(run: Run) -> str:
    """Changes whenever the run logs a metric or changes state."""
    latest = run.data._metric_objs  # the latest value of every key, with its timestamp and step
    newest = max(((m.timestamp, m.step) for m in latest), default=(0, 0))
    return f"v{CACHE_VERSION}|{run.info.status}|{run.info.end_time}|{newest}|{len(latest)}"


class HistoryCache:
    """One parquet file of metric history per run under <dir>/<store hash>/<run id>.parquet."""

    def __init__(self, directory: Path | str | None, tracking_uri: str):
        self.enabled = directory is not False
        base = Path(directory) if directory else default_cache_dir()
        self.dir = base / hashlib.sha1(tracking_uri.encode()).hexdigest()[:12]
        self.hits = self.misses = 0

    def _paths(self, run_id: str) -> tuple[Path, Path]:
        return self.dir / f"{run_id}.parquet", self.dir / f"{run_id}.key"

    def get(self, run: Run) -> pd.DataFrame | None:
        if not self.enabled:
            return None
        data, key = self._paths(run.info.run_id)
        try:
            if key.read_text() == run_key(run):
                frame = pd.read_parquet(data)
                self.hits += 1
                return frame
        except (OSError, ValueError):  # absent, or half-written by a killed process: refetch
            pass
        return None

    def put(self, run: Run, frame: pd.DataFrame) -> None:
        if not self.enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        data, key = self._paths(run.info.run_id)
        tmp = data.with_suffix(f".tmp{os.getpid()}")
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, data)  # the key is written last: a crash between the two only costs a refetch
        key.write_text(run_key(run))


def fetch_history(client: MlflowClient, run: Run) -> pd.DataFrame:
    rows = []
    for key in sorted(run.data.metrics):
        for m in client.get_metric_history(run.info.run_id, key):
            rows.append((run.info.run_id, key, int(m.step), float(m.value), int(m.timestamp)))
    frame = pd.DataFrame(rows, columns=METRIC_COLUMNS)
    return frame.astype({"step": "int64", "value": "float64", "timestamp": "int64"})


def run_row(run: Run) -> dict:
    info = run.info
    row = {"run_id": info.run_id, "run_name": info.run_name, "experiment_id": info.experiment_id,
           "status": info.status, "start_time": info.start_time, "end_time": info.end_time}
    row.update({f"params.{k}": v for k, v in run.data.params.items()})
    row.update({f"tags.{k}": v for k, v in run.data.tags.items()})
    return row


@dataclass
class RunSet:
    name: str
    tracking_uri: str
    runs: pd.DataFrame
    metrics: pd.DataFrame
    parent: Run | None = None
    kind: str = "runs"
    notes: list[str] = field(default_factory=list)
    cache_hits: int = 0

    def tidy(self, keys: list[str] | None = None) -> pd.DataFrame:
        """Long format: one row per run x metric x step with every param and tag column joined."""
        m = self.metrics if keys is None else self.metrics[self.metrics["key"].isin(keys)]
        return m.merge(self.runs, on="run_id", how="left")

    def history(self, key: str) -> pd.DataFrame:
        """step x run_id matrix of one metric (NaN where a run has no value at that step)."""
        m = self.metrics[self.metrics["key"] == key]
        if m.empty:
            return pd.DataFrame()
        # the last value logged at a step wins (a resumed run can log a step twice)
        return m.sort_values("timestamp").pivot_table(index="step", columns="run_id", values="value", aggfunc="last")

    def keys(self) -> set[str]:
        return set(self.metrics["key"].unique())

    def subset(self, run_ids) -> RunSet:
        ids = set(run_ids)
        return RunSet(self.name, self.tracking_uri, self.runs[self.runs["run_id"].isin(ids)].reset_index(drop=True),
                      self.metrics[self.metrics["run_id"].isin(ids)].reset_index(drop=True), self.parent, self.kind,
                      list(self.notes), self.cache_hits)


def resolve_uri(tracking_uri: str | None) -> str:
    """As training resolves it: the given URI, else $MLFLOW_TRACKING_URI, else ./mlflow.db. A SQLite
    file that does not exist is an error (MLflow would silently create an empty store)."""
    uri = TrackingConfig(tracking_uri=tracking_uri).resolved_uri()
    if uri.startswith("sqlite:///") and ":memory:" not in uri and not Path(uri[len("sqlite:///"):]).is_file():
        raise ConfigError("--tracking-uri", uri, "an existing MLflow store (no such SQLite file)")
    return uri


def load(*, sweep: str | None = None, experiment: str | None = None, filter_string: str | None = None,
         run_ids: list[str] | None = None, tracking_uri: str | None = None,
         cache_dir: Path | str | None | bool = None, progress=None) -> RunSet:
    """Load the selected runs; `cache_dir=False` turns the on-disk cache off. `progress(done, total)`
    is called as run histories arrive."""
    uri = resolve_uri(tracking_uri)
    client = MlflowClient(uri)
    sel: Selected = select_runs(client, sweep=sweep, experiment=experiment, filter_string=filter_string,
                                run_ids=run_ids)
    cache = HistoryCache(cache_dir, uri)
    frames: dict[str, pd.DataFrame] = {}
    todo = []
    for run in sel.runs:
        hit = cache.get(run)
        if hit is None:
            todo.append(run)
        else:
            frames[run.info.run_id] = hit
    done = len(frames)
    if progress:
        progress(done, len(sel.runs))
    with ThreadPoolExecutor(FETCH_THREADS) as pool:
        for run, frame in zip(todo, pool.map(lambda r: fetch_history(client, r), todo)):
            cache.put(run, frame)
            frames[run.info.run_id] = frame
            done += 1
            if progress:
                progress(done, len(sel.runs))
    runs = pd.DataFrame([run_row(r) for r in sel.runs], columns=None if sel.runs else ["run_id", "run_name", "status"])
    parts = [frames[r.info.run_id] for r in sel.runs if not frames[r.info.run_id].empty]
    metrics = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        {"run_id": pd.Series(dtype=str), "key": pd.Series(dtype=str), "step": pd.Series(dtype="int64"),
         "value": pd.Series(dtype=float), "timestamp": pd.Series(dtype="int64")})
    return RunSet(sel.name, uri, runs, metrics, sel.parent, sel.kind, list(sel.notes), cache.hits)


def export(data: RunSet, path: Path | str, fmt: str | None = None) -> Path:
    """Write the tidy long frame as CSV or Parquet (by `fmt`, else by the file's suffix)."""
    path = Path(path)
    fmt = (fmt or path.suffix.lstrip(".") or "csv").lower()
    if fmt not in ("csv", "parquet"):
        raise ConfigError("--format", fmt, "csv or parquet")
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = data.tidy()
    if fmt == "csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return path



def store_name(uri: str) -> str:
    """The store as a report may name it: relative to the working directory where it lies below it, else its
    scheme and file name; never an absolute or temporary path, never a password."""
    scheme, _, rest = uri.partition("://")
    if scheme == "sqlite" and rest.startswith("/"):
        path = Path(rest[1:])
        try:
            return f"sqlite:///{path.resolve().relative_to(Path.cwd().resolve())}"
        except ValueError:
            return f"sqlite:///.../{path.name}"
    if scheme in ("file", ""):
        return f"{scheme or 'file'}:///.../{Path(rest or uri).name}"
    host = rest.rsplit("@", 1)[-1].split("/", 1)[0]  # user:password@host/db -> host
    return f"{scheme}://{host}"
