"""Where a study lives, and what happens to a trial whose worker is gone.

One machine: Optuna's journal file (JournalFileBackend; SQLite is unsafe for parallel writers) beside the
MLflow store. A journal has no heartbeat, so every running trial records its worker (host, pid, process
start time); a worker starting or asking for its next trial fails any trial of this host whose process is
gone and enqueues its parameters again (Optuna's RetryFailedTrialCallback, the same path as below).
Many machines: an RDB URL (PostgreSQL) with Optuna's heartbeat; Optuna fails a trial whose heartbeat
stopped and the same callback retries it (a worker of this host that died before its first heartbeat is
found by its pid, as with a journal).
"""
from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import psutil
from filelock import FileLock
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from treepo_lab.registry import ConfigError
from treepo_lab.tags import FAIL_REASON_ATTR, WORKER_ATTR  # noqa: F401 (sto.WORKER_ATTR)

RDB_SCHEMES = ("postgresql", "mysql")


def is_rdb(url: str) -> bool:
    return url.split(":", 1)[0].split("+", 1)[0] in RDB_SCHEMES


def default_storage(tracking_uri: str, study: str) -> str:
    """The journal beside the MLflow store: <dir of mlflow.db>/optuna/<study>.journal (else ./optuna/)."""
    base = Path.cwd()
    if tracking_uri.startswith("sqlite:///"):
        base = Path(tracking_uri[len("sqlite:///"):]).parent
    elif tracking_uri.startswith("file://"):
        base = Path(tracking_uri[len("file://"):]).parent
    return str((base / "optuna" / f"{study}.journal").resolve())


def journal_path(url: str) -> Path:
    return Path(url[len("journal://"):] if url.startswith("journal://") else url).resolve()


def check_url(url: str) -> None:
    if url.startswith("sqlite:"):
        raise ConfigError("--storage", url, "a journal file path (one machine) or postgresql://... (many machines): "
                          "SQLite is unsafe with parallel writers")
    if "://" in url and not (is_rdb(url) or url.startswith("journal://")):
        raise ConfigError("--storage", url, "a journal file path, journal:///path, or postgresql://user@host:port/db")


class CloseRunsAndRetry(RetryHeartbeatStaleTrialCallback):
    """Retry a trial whose worker died (same parameters, a new trial number), after `on_failed` has
    closed what the dead worker left open (its MLflow runs)."""

    def __init__(self, max_retry: int, on_failed: Callable[[FrozenTrial], None] | None = None):
        super().__init__(max_retry=max_retry)
        self.on_failed = on_failed

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self.on_failed is not None:
            self.on_failed(trial)
        super().__call__(study, trial)


def open_storage(url: str, heartbeat_s: int = 30, retry: CloseRunsAndRetry | None = None):
    check_url(url)
    if is_rdb(url):
        return optuna.storages.RDBStorage(
            url, heartbeat_interval=heartbeat_s, grace_period=2 * heartbeat_s, failed_trial_callback=retry,
            engine_kwargs={"pool_pre_ping": True})
    path = journal_path(url)
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def study_lock(url: str):
    """Serialises "is there work left? then ask" between the workers of one machine (journal storages),
    so N workers never start more than n_trials. Across machines (RDB) there is no shared lock."""
    if is_rdb(url):
        return contextlib.nullcontext()
    return FileLock(str(journal_path(url)) + ".ask.lock")  # Optuna itself uses <journal>.lock


def worker_record() -> dict:
    me = psutil.Process()
    return {"host": socket.gethostname(), "pid": os.getpid(), "created": me.create_time(), "start": time.time()}


def worker_gone(rec: dict | None) -> bool:
    """True only when we can tell: a process of this host that no longer exists (or a reused pid)."""
    if not rec or rec.get("host") != socket.gethostname():
        return False
    try:
        return abs(psutil.Process(int(rec["pid"])).create_time() - float(rec["created"])) > 1.0
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return True
    except (psutil.AccessDenied, KeyError, ValueError):
        return False


def reap_dead_workers(study: optuna.Study, retry: CloseRunsAndRetry) -> list[int]:
    """Fail (and retry) every RUNNING trial of this host whose worker is gone; call under study_lock."""
    reaped = []
    storage = study._storage
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        rec = t.user_attrs.get(WORKER_ATTR)
        if not worker_gone(rec):
            continue
        storage.set_trial_user_attr(t._trial_id, FAIL_REASON_ATTR,
                                    f"worker {rec['host']}:{rec['pid']} is gone (killed?); rerun as a new trial")
        try:
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        except RuntimeError:  # another process finished it in between
            continue
        retry(study, storage.get_trial(t._trial_id))
        reaped.append(t.number)
    return reaped
