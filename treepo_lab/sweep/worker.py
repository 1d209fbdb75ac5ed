"""A sweep worker: one process that asks the study for trials and runs them until no work is left.

Start as many as you like, on one machine (`treepo-lab sweep --workers N` starts them) or many
(`treepo-lab sweep-worker STUDY --storage postgresql://...`): Optuna hands each trial to exactly one
worker. A trial that raises ends FAIL (the sweep goes on); Ctrl-C / SIGTERM end the running trial FAIL,
its MLflow runs KILLED, and enqueue it again for the next run of the sweep.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
import warnings

import optuna
from mlflow import MlflowClient
from optuna.trial import TrialState

from treepo_lab.sweep import mlflow_runs as mr
from treepo_lab.sweep import storage as sto
from treepo_lab.sweep import study as st
from treepo_lab.sweep.trial import TrialContext, run_trial
from treepo_lab.train import interrupt


def quiet() -> None:
    """Keep other libraries' INFO noise and Optuna's "experimental" warnings out of the progress display
    and the worker logs (`-v` on the command line is the tracking engineer's switch for the rest)."""
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message=".*(No artists with labels|quantiles select the same).*")
    # importance evaluators' notes on their own target sign and on too few trials (the report says it)
    warnings.filterwarnings("ignore", message=".*(computes the importances of params|too small to compute importances).*")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in ("mlflow", "alembic", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)


class Heartbeat(threading.Thread):
    """Optuna's heartbeat for an ask/tell trial on an RDB storage (optimize() would start one)."""

    def __init__(self, storage, trial_id: int, interval_s: float):
        super().__init__(daemon=True)
        self.storage, self.trial_id, self.interval_s = storage, trial_id, interval_s
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            self.storage.record_heartbeat(self.trial_id)
            self.stopped.wait(self.interval_s)


WAIT = "wait"  # no trial to start now, but others are running: one may die and be queued again


def _next_trial(study: optuna.Study, spec, url: str, retry):
    with sto.study_lock(url):
        if sto.is_rdb(url):
            optuna.storages.fail_stale_trials(study)
        # RDB too: Optuna never finds a trial stale whose worker died before its first heartbeat
        sto.reap_dead_workers(study, retry)
        if st.STOP_ATTR in study.user_attrs:
            return None
        trials = study.get_trials(deepcopy=False)
        error = st.failed_at_start(spec, trials, study.user_attrs.get(st.FAILURE_WINDOW_ATTR) or 0)
        if error is not None:
            study.set_user_attr(st.STOP_ATTR, {"reason": f"the first {spec.failure_limit} trials all failed",
                                               "error": error})
            return None
        if not st.work_left(spec, trials):
            return WAIT if any(t.state == TrialState.RUNNING for t in trials) else None
        trial = study.ask()
        if sto.is_rdb(url):  # at once: a trial with no heartbeat yet is never stale to Optuna
            study._storage.record_heartbeat(trial._trial_id)
        trial.set_user_attr(sto.WORKER_ATTR, sto.worker_record())
        for attr in (st.INTERRUPTED_ATTR, st.ERROR_ATTR, sto.FAIL_REASON_ATTR):  # a retry copies its predecessor's
            if trial.user_attrs.get(attr):
                trial.set_user_attr(attr, None)
        return trial


def _on_sigterm(signum, frame):
    raise SystemExit(128 + signum)  # unwinds like Ctrl-C: the running trial is failed and requeued


def work(study_name: str, storage_url: str, worker_index: int = 0, threads: int | None = None,
         tracking_uri: str | None = None) -> int:
    """Run trials until none is left; returns the exit status (130 when interrupted)."""
    quiet()
    if threads:
        import torch

        torch.set_num_threads(threads)
    signal.signal(signal.SIGTERM, _on_sigterm)
    interrupt.install()  # not ignored even if started in the background, and never dropped
    study, spec = st.load_for_worker(study_name, sto.open_storage(storage_url), worker_index)
    uri = tracking_uri or study.user_attrs[st.URI_ATTR]
    retry = sto.CloseRunsAndRetry(spec.max_retry, mr.close_dead_trial(uri, spec.name, spec.name))
    storage = sto.open_storage(storage_url, spec.heartbeat_s, retry)
    study, spec = st.load_for_worker(study_name, storage, worker_index)
    client = MlflowClient(uri)
    ctx = TrialContext(spec, uri, study.user_attrs[st.PARENT_ATTR], mr.experiment(client, spec, uri))
    started = time.time()
    while spec.timeout_s is None or time.time() - started < spec.timeout_s:
        trial = _next_trial(study, spec, storage_url, retry)
        if trial is None:
            return 0
        if trial is WAIT:  # stay to take over a retry (a stale heartbeat, a dead worker's pid)
            time.sleep(min(5.0, spec.heartbeat_s))
            continue
        beat = Heartbeat(storage, trial._trial_id, spec.heartbeat_s) if sto.is_rdb(storage_url) else None
        if beat:
            beat.start()
        try:
            values = run_trial(ctx, trial)
            study.tell(trial, values)
            state, error = TrialState.COMPLETE, None
        except optuna.TrialPruned:
            study.tell(trial, state=TrialState.PRUNED)
            state, error = TrialState.PRUNED, None
        except (KeyboardInterrupt, SystemExit):
            trial.set_user_attr(st.INTERRUPTED_ATTR, True)
            study.tell(trial, state=TrialState.FAIL)
            retry(study, storage.get_trial(trial._trial_id))  # closes its runs KILLED, enqueues it again
            return 130
        except Exception as err:
            error = f"{type(err).__name__}: {err}"
            logging.getLogger(__name__).exception("trial %d failed", trial.number)
            trial.set_user_attr(st.ERROR_ATTR, error[:4000])
            study.tell(trial, state=TrialState.FAIL)
            state = TrialState.FAIL
        finally:
            if beat:
                beat.stopped.set()
        mr.mark_trial(client, ctx.experiment_id, spec.name, trial.number, state.name, error)
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="treepo-lab sweep-worker", description=__doc__.splitlines()[0])
    p.add_argument("study")
    p.add_argument("--storage", required=True, help="journal file path or postgresql://... URL")
    p.add_argument("--tracking-uri", default=None, help="MLflow URI (default: the one the sweep was started with)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--die-with-parent", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.die_with_parent:  # a killed sweep leaves no orphans running trials nobody watches; the trials they
        interrupt.die_with_parent(signal.SIGKILL)  # held are failed and rerun on the next start
    try:
        return work(a.study, a.storage, a.index, a.threads, a.tracking_uri)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
