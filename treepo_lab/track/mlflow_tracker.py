"""The MLflow tracker the trainer logs through: one MLflow run per training run.

    with Tracker.start(cfg, cfg.tracking, experiment="default", seed=0, engine="hf", device="cpu") as tr:
        tr.log_metrics({"critic/score/mean": 0.4, "eval/pass@8": 0.7}, step=1)

Leaving the `with` block normally ends the run FINISHED; an exception ends it FAILED; Ctrl-C or
SIGTERM end it KILLED. A crashed run must never look FINISHED in the UI, which is also why a SIGTERM
handler is installed while the run is active (the default action would leave it RUNNING forever).

The run is started with MLflow's fluent API (so nesting under a sweep's parent run, system metrics and
MLflow's own source/user tags work as documented); everything else goes through an `MlflowClient`
with the explicit run id, so logging does not depend on which run is "active".
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from treepo_lab.track.tree_drawing import tree_html
from treepo_lab.tags import (DEVICE_TAG, ENGINE_TAG, ERROR_TAG, EXPERIMENT_TAG, HOST_TAG, SEED_TAG, SWEEP_TAG,
                              TRIAL_TAG, VERSION_TAG, WORLD_SIZE_TAG)
from treepo_lab.track.artifacts import compact_json, compact_tree, eval_sample_rows
from treepo_lab.track.config import TrackingConfig
from treepo_lab.track.held_signals import held
from treepo_lab.track.metric_names import with_headline
from treepo_lab.track.naming import (default_experiment_name, experiment_description, git_commit, lab_version,
                                     plain_config, run_description, run_params, sanitize_key)
from treepo_lab.track.null import NULL_TRACKER, NullTracker
from treepo_lab.track.strategy import strategy_tags
from treepo_lab.validated import ensure_valid

if TYPE_CHECKING:
    from typing_extensions import Self

log = logging.getLogger(__name__)

# Older tracking servers reject param values over 500 characters (newer ones allow 6000); the full
# config is always in the config.yaml artifact, so truncating a long list here loses nothing.
PARAM_VALUE_MAX = 500
PARAMS_PER_BATCH = 100  # MLflow's limit for params + tags in one log_batch
METRICS_PER_BATCH = 1000  # MLflow's limit for metrics in one log_batch
# MLflow 3's UI reads this experiment tag to open an experiment as model training (runs, charts)
# rather than GenAI development (traces); the values are those of the UI's ExperimentKind enum.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
EVAL_TABLE = "eval_samples.json"


class TrackingError(RuntimeError):
    """The tracking backend cannot be used (unreachable server, deleted experiment, ...)."""


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast, before any training, if an http(s) tracking server does not answer.

    MLflow's own client retries with backoff for minutes before it gives up, and only when the first
    metric is logged; a short GET of the server's /health gives a clear error now instead.
    File and database stores need no check: MLflow creates them on first use.
    """
    if not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s).close()
    except urllib.error.HTTPError:
        return  # something answered (e.g. an auth proxy): MLflow reports its own, clearer error
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise TrackingError(
            f"MLflow tracking server {uri} is not reachable ({reason}). Start it (mlflow server "
            f"--backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000) or point "
            f"tracking.tracking_uri / MLFLOW_TRACKING_URI elsewhere (e.g. sqlite:///mlflow.db)."
        ) from e


def _artifact_location(uri: str, experiment: str) -> str | None:
    """Artifacts of a SQLite store live beside the database file. MLflow's default is ./mlruns of
    whichever directory the first run happened to start in; None keeps the server's default."""
    if not uri.startswith("sqlite:///") or ":memory:" in uri:
        return None
    db = Path(uri[len("sqlite:///"):])
    return (db.parent / "mlartifacts" / re.sub(r"[^A-Za-z0-9_.-]", "_", experiment)).as_uri()


def _experiment_id(client: MlflowClient, name: str, uri: str, description: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            exp_id = client.create_experiment(name, artifact_location=_artifact_location(uri, name))
        except MlflowException:  # another worker created it between our lookup and create
            exp_id = None
        exp = client.get_experiment_by_name(name) if exp_id is None else client.get_experiment(exp_id)
        if exp is None:
            raise TrackingError(f"could not create MLflow experiment {name!r} in {uri}")
    if exp.lifecycle_stage == "deleted":
        raise TrackingError(f"MLflow experiment {name!r} is deleted in {uri}: restore it "
                            f"(mlflow experiments restore --experiment-id {exp.experiment_id}) "
                            f"or set tracking.experiment_name")
    # the UI opens an experiment without this tag as a GenAI (traces) experiment; a description the
    # user edited in the UI is kept
    wanted = {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND, "mlflow.note.content": description}
    for key, value in wanted.items():
        if key not in exp.tags:
            client.set_experiment_tag(exp.experiment_id, key, value)
    return exp.experiment_id


def _status_for(exc: BaseException | None) -> str:
    if exc is None:
        return "FINISHED"
    # Ctrl-C, SIGTERM (our handler raises SystemExit), generator close: stopped, not broken
    return "FAILED" if isinstance(exc, Exception) else "KILLED"


# ----------------------------------------------------------------------------------------- trackers

class Tracker:
    """One active MLflow run. Build it with `Tracker.start`; use it as a context manager."""

    def __init__(self, run_id: str, run_name: str, experiment_id: str, tracking_uri: str,
                 experiment_name: str | None = None):
        self.run_id, self.run_name = run_id, run_name
        self.experiment_id, self.experiment_name, self.tracking_uri = experiment_id, experiment_name, tracking_uri
        self.client = MlflowClient(tracking_uri)
        self._ended = False
        self._sigterm_installed, self._prev_sigterm = False, None
        # () -> the error another rank of a distributed run left, or None: SIGTERM (torchrun stopping the
        # ranks after one failed) then ends the run FAILED with it rather than KILLED
        self.peer_error = None
        # on resume: metric -> last step already logged. The steps between the last checkpoint and a
        # crash are recomputed exactly, so their points are in MLflow already: one point per step.
        self._logged_up_to: dict[str, int] = {}

    @classmethod
    def start(cls, cfg_dict_resolved: Any, tracking_cfg: TrackingConfig, experiment: str, seed: int,
              engine: str, device: str, sweep_id: str | None = None, trial: int | None = None,
              parent_run_id: str | None = None, resume_run_id: str | None = None,
              overrides: list[str] | None = None, world_size: int = 1,
              peer_error=None) -> Tracker | NullTracker:
        """Start (or resume, by run id) the run and log params, tags and config.yaml.

        `experiment` is the registry experiment's name (tag `treepo.experiment`, start of the run name).
        The MLflow experiment is tracking.experiment_name, else $MLFLOW_EXPERIMENT_NAME, else `sweep_id`
        for a sweep trial, else one per task and model (`naming.default_experiment_name`), so runs a
        user compares share one. Returns NULL_TRACKER when tracking is disabled. `peer_error` (ranks):
        what a SIGTERM from torchrun means, the error another rank left (the run then ends FAILED with it).
        """
        if not tracking_cfg.enabled:
            return NULL_TRACKER
        ensure_valid(tracking_cfg)
        uri = tracking_cfg.resolved_uri()
        check_reachable(uri)
        # The fluent API (start_run) reads the global URI; this also exports MLFLOW_TRACKING_URI so
        # subprocesses log to the same place.
        mlflow.set_tracking_uri(uri)
        client = MlflowClient(uri)
        cfg = plain_config(cfg_dict_resolved)
        exp_name = (tracking_cfg.experiment_name or os.environ.get("MLFLOW_EXPERIMENT_NAME") or sweep_id
                    or default_experiment_name(cfg))
        exp_id = _experiment_id(client, exp_name, uri, experiment_description(exp_name, cfg))

        run_name = tracking_cfg.run_name or "-".join(
            [experiment] + ([f"t{trial}"] if trial is not None else []) + [f"s{seed}", time.strftime("%m%d-%H%M%S")])
        commit = git_commit()
        tags = {
            EXPERIMENT_TAG: experiment, SEED_TAG: str(seed),
            ENGINE_TAG: str(engine), DEVICE_TAG: str(device), VERSION_TAG: lab_version(),
            WORLD_SIZE_TAG: str(world_size), HOST_TAG: socket.gethostname(),
            **({"mlflow.source.git.commit": commit} if commit != "unknown" else {}),
            **({SWEEP_TAG: str(sweep_id)} if sweep_id is not None else {}),
            **({TRIAL_TAG: str(trial)} if trial is not None else {}),
            **strategy_tags(cfg),
            **({} if resume_run_id else {"mlflow.note.content": run_description(cfg, overrides)}),
            **{str(k): str(v) for k, v in tracking_cfg.tags.items()},
        }

        system_metrics = tracking_cfg.system_metrics
        if system_metrics and importlib.util.find_spec("psutil") is None:
            # mlflow.start_run raises without psutil; a missing optional extra must not stop training
            log.warning("system metrics off: psutil is not installed (pip install psutil)")
            system_metrics = False
        active = mlflow.active_run()
        # a SIGTERM while the run is created waits for our handler: torchrun stops rank 0 with one when
        # another rank dies, which can be while the run is being created (it stayed RUNNING)
        with held() as after:
            run = mlflow.start_run(
                run_id=resume_run_id, experiment_id=None if resume_run_id else exp_id,
                run_name=None if resume_run_id else run_name,
                # nested under the given parent, or under a run this process already has open (a sweep)
                nested=parent_run_id is not None or active is not None,
                parent_run_id=None if resume_run_id else parent_run_id,
                log_system_metrics=system_metrics,
            )
            tracker = cls(run.info.run_id, run.info.run_name, run.info.experiment_id, uri)
            tracker.peer_error = peer_error
            if after:
                tracker._prev_sigterm, after[signal.SIGTERM] = after[signal.SIGTERM], tracker._on_sigterm
                tracker._sigterm_installed = True
        try:
            tracker.experiment_name = client.get_experiment(run.info.experiment_id).name
            if resume_run_id:
                tracker._logged_up_to = tracker._last_steps()
                if ERROR_TAG in run.data.tags:  # the error of the attempt this run resumes from
                    client.delete_tag(run.info.run_id, ERROR_TAG)
            tracker.set_tags(tags)
            tracker.log_params(run_params(cfg), resume=resume_run_id is not None)
            # a resumed run keeps its first config.yaml; the resumed one is logged beside it
            name = f"config.resumed-{time.strftime('%m%d-%H%M%S')}.yaml" if resume_run_id else "config.yaml"
            # via JSON so a Path or Enum left in a config becomes a string instead of a YAML error
            tracker.log_text(yaml.safe_dump(json.loads(json.dumps(cfg, default=str)), sort_keys=False), name)
        except BaseException as e:
            tracker.finish(e)
            raise
        log.info("MLflow run %s (%s) in experiment %r at %s", tracker.run_name, tracker.run_id, exp_name, uri)
        return tracker

    def run_url(self, ui_url: str = "http://127.0.0.1:5000") -> str:
        """Where this run opens in the MLflow UI served at `ui_url` (for a tracking server, itself)."""
        base = self.tracking_uri if self.tracking_uri.startswith(("http://", "https://")) else ui_url
        return f"{base.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.run_id}"

    # -- logging

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        """Log one step of metrics; keys are sanitised, None values skipped, NaN/inf kept as is."""
        ts = int(time.time() * 1000)
        entries = []
        for key, value in with_headline(dict(metrics)).items():
            if value is None:
                continue
            try:
                value = float(value)  # numpy and 1-element torch scalars too
            except (TypeError, ValueError) as e:
                raise TypeError(f"metric {key!r} is not a number: {value!r}") from e
            key = sanitize_key(key)
            if int(step) > self._logged_up_to.get(key, -1):
                entries.append(Metric(key, value, ts, int(step)))
        for i in range(0, len(entries), METRICS_PER_BATCH):
            self._call(self.client.log_batch, self.run_id, metrics=entries[i:i + METRICS_PER_BATCH])
        self._logged_up_to.update((m.key, m.step) for m in entries)  # an eval at a training step: no 2nd point

    def _last_steps(self) -> dict[str, int]:
        run = self.client.get_run(self.run_id)
        return {k: max((m.step for m in self.client.get_metric_history(self.run_id, k)), default=-1)
                for k in run.data.metrics if not k.startswith("system/")}

    def _call(self, fn, *args, **kwargs):
        """A client call; a tracking server that stopped answering is a TrackingError naming it (MLflow
        itself raises only after minutes of retries, with a message about a request)."""
        try:
            with held():
                return fn(*args, **kwargs)
        except (MlflowException, OSError) as e:  # requests' errors are OSErrors
            if not self.tracking_uri.startswith(("http://", "https://")):
                raise
            reason = " ".join(str(e).split())[:300]
            raise TrackingError(f"MLflow tracking server {self.tracking_uri} stopped answering ({reason})") from e

    def log_params(self, params: Mapping[str, Any], resume: bool = False) -> None:
        """Log params in chunks of 100. On resume, params that already exist are skipped (MLflow
        params are immutable); a changed value is reported as a warning, not an error."""
        new = {sanitize_key(k): _clip(str(v)) for k, v in params.items()}
        if resume:
            old = self.client.get_run(self.run_id).data.params
            changed = sorted(k for k in new if k in old and old[k] != new[k])
            if changed:
                log.warning("resumed run %s: params changed and not re-logged: %s", self.run_id, changed)
            new = {k: v for k, v in new.items() if k not in old}
        items = [Param(k, v) for k, v in new.items()]
        for i in range(0, len(items), PARAMS_PER_BATCH):
            self._call(self.client.log_batch, self.run_id, params=items[i:i + PARAMS_PER_BATCH])

    def set_tag(self, key: str, value: Any) -> None:
        self._call(self.client.set_tag, self.run_id, key, str(value))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        items = [RunTag(k, str(v)[:8000]) for k, v in tags.items()]
        for i in range(0, len(items), PARAMS_PER_BATCH):
            self._call(self.client.log_batch, self.run_id, tags=items[i:i + PARAMS_PER_BATCH])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._call(self.client.log_artifact, self.run_id, str(path), artifact_path)

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        """JSON or YAML by the file's suffix (e.g. trees/step_000100.json, config.yaml)."""
        self._call(self.client.log_dict, self.run_id, obj, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        self._call(self.client.log_text, self.run_id, text, artifact_file)

    def log_trees(self, trees: list[dict], step: int) -> None:
        """Sample rollout trees (`Tree.to_dict()` each): trees/stepNNNNNN.json in the compact form
        (decoded text of every node and leaf) and trees/stepNNNNNN.html, a drawing the artifact view shows."""
        compact = [compact_tree(t) for t in trees]
        self.log_text(compact_json(compact), f"trees/step{step:06d}.json")
        self.log_text(tree_html(compact, title=f"{self.run_name}: rollout trees at step {step}"),
                      f"trees/step{step:06d}.html")

    def log_eval_samples(self, records: list[dict], step: int) -> None:
        """Evaluation samples as one MLflow table (eval_samples.json, a `step` column; rows appended
        at every evaluation), which the UI's artifact view and Evaluation tab filter and sort."""
        if records:
            self._call(self.client.log_table, self.run_id, data=eval_sample_rows(records, step), artifact_file=EVAL_TABLE)

    # -- ending

    def end(self, status: str = "FINISHED") -> None:
        """End the run with FINISHED | FAILED | KILLED. Idempotent."""
        if self._ended:
            return
        self._ended = True
        self._restore_sigterm()
        try:
            active = mlflow.active_run()
            with held():
                if active is not None and active.info.run_id == self.run_id:
                    mlflow.end_run(status)  # also stops the system-metrics thread
                else:  # ended out of order or from another thread: only mark it
                    self.client.set_terminated(self.run_id, status)
        except (MlflowException, OSError):  # the server is gone: ending must not mask why we stop
            if not self.tracking_uri.startswith(("http://", "https://")):
                raise
            log.warning("could not mark MLflow run %s %s: %s stopped answering", self.run_id, status, self.tracking_uri)

    def finish(self, exc: BaseException | None = None) -> None:
        """End the run with the status an exception (or its absence) calls for."""
        if exc is not None and not self._ended:
            try:  # the error, in the runs table, without opening logs
                self.set_tag(ERROR_TAG, f"{type(exc).__name__}: {exc}"[:8000])
            except Exception:  # never let bookkeeping mask the original exception
                log.exception("could not record the error on run %s", self.run_id)
        self.end(_status_for(exc))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.finish(exc)
        return False

    # -- SIGTERM (sent by schedulers, `kill`, docker stop): end KILLED, then exit

    def _restore_sigterm(self) -> None:
        if self._sigterm_installed and threading.current_thread() is threading.main_thread():
            # None means "set outside Python": the closest thing to restore is the default action
            prev = self._prev_sigterm
            signal.signal(signal.SIGTERM, prev if prev is not None else signal.SIG_DFL)
            self._sigterm_installed = False

    def _on_sigterm(self, signum, frame) -> None:
        prev = self._prev_sigterm
        peer = self.peer_error() if self.peer_error is not None else None
        try:
            if peer is not None:
                self.finish(peer)
            else:
                self.end("KILLED")
        except Exception:  # e.g. the store was mid-write: let __exit__ retry after the stack unwinds
            self._ended = False
            log.warning("could not mark run %s KILLED from the SIGTERM handler", self.run_id, exc_info=True)
        if callable(prev):  # an outer handler (e.g. the sweep's parent run) gets its turn
            prev(signum, frame)
        # SystemExit unwinds `with` blocks and finally clauses (which the default action would not)
        raise SystemExit(128 + signum)


def _clip(value: str) -> str:
    return value if len(value) <= PARAM_VALUE_MAX else value[:PARAM_VALUE_MAX - 3] + "..."
