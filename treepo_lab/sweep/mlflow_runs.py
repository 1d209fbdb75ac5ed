"""The sweep's MLflow layout: one experiment per sweep, a parent run per study (spec, search space,
status, best parameters or Pareto front, Optuna's figures), and one child run per trial and seed (made
by run_experiment, nested by the mlflow.parentRunId tag, so it works from any process or machine)."""
from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import mlflow
import yaml
from mlflow import MlflowClient
from mlflow.entities import ViewType

from treepo_lab.sweep import study as st
from treepo_lab.sweep.spec import SweepSpec
from treepo_lab.tags import (BEST_PARAMS_TAG, BEST_TRIAL_TAG, ERROR_TAG, FAIL_REASON_ATTR, NOTE_TAG,  # noqa: F401
                              STORAGE_TAG, STUDY_TAG, SWEEP_ROLE_TAG as ROLE_TAG, SWEEP_STATUS_TAG as STATUS_TAG,
                              SWEEP_TAG, SWEEP_TRIALS_TAG, TRIAL_STATE_TAG as STATE_TAG, TRIAL_TAG)
from treepo_lab.track.mlflow_tracker import _experiment_id, check_reachable

log = logging.getLogger(__name__)
# Optuna state -> MLflow run status of its child runs
RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


def experiment(client: MlflowClient, spec: SweepSpec, uri: str) -> str:
    """The sweep's experiment (created with the spec's description, and the tag that opens it as model
    training in the UI; both kept if the user edits them later)."""
    check_reachable(uri)
    return _experiment_id(client, spec.name, uri, spec.description or f"treepo_lab sweep {spec.name}")


def start_parent(client: MlflowClient, spec: SweepSpec, uri: str, storage_url: str) -> str:
    exp_id = experiment(client, spec, uri)
    run = client.create_run(exp_id, run_name=f"{spec.name} (sweep)", tags={
        SWEEP_TAG: spec.name, ROLE_TAG: "parent", STATUS_TAG: "running",
        STUDY_TAG: spec.name, STORAGE_TAG: storage_url,  # where the report finds the study
        NOTE_TAG: spec.description or ""})
    rid = run.info.run_id
    params = {"sweep.experiment": spec.experiment, "sweep.sampler": spec.sampler["name"],
              "sweep.pruner": spec.pruner["name"], "sweep.seeds": str(spec.seeds),
              "sweep.objectives": ", ".join(f"{o.direction} {o.metric}" for o in spec.objectives),
              **{f"space.{p.key}": p.text + (f" when {p.when}" if p.when else "") for p in spec.params}}
    for k, v in params.items():
        client.log_param(rid, k, str(v)[:500])
    client.log_text(rid, yaml.safe_dump(spec.source, sort_keys=False), "sweep/spec.yaml")
    client.log_dict(rid, {p.key: {"grammar": p.text, "distribution": repr(p.distribution), "when": p.when}
                          for p in spec.params}, "sweep/search_space.json")
    return rid


def reopen_parent(client: MlflowClient, rid: str) -> None:
    client.update_run(rid, status="RUNNING")
    client.set_tag(rid, STATUS_TAG, "running")


def trial_runs(client: MlflowClient, exp_id: str, sweep: str, trial: int, only_running: bool = False) -> list:
    flt = f"tags.`{SWEEP_TAG}` = '{sweep}' and tags.`{TRIAL_TAG}` = '{trial}'"
    if only_running:
        flt += " and attributes.status = 'RUNNING'"
    return client.search_runs([exp_id], flt, run_view_type=ViewType.ACTIVE_ONLY, max_results=1000)


def mark_trial(client: MlflowClient, exp_id: str, sweep: str, trial: int, state: str, error: str | None = None,
               killed: bool = False) -> int:
    """Give every child run of a trial the trial's final state (and status where it is still open)."""
    runs = trial_runs(client, exp_id, sweep, trial)
    for r in runs:
        client.set_tag(r.info.run_id, STATE_TAG, state)
        if error:
            client.set_tag(r.info.run_id, ERROR_TAG, error[:8000])
        if r.info.status == "RUNNING":
            client.set_terminated(r.info.run_id, "KILLED" if killed else RUN_STATUS[state])
    return len(runs)


def reconcile(client: MlflowClient, exp_id: str, sweep: str, trials) -> list[int]:
    """Finished trials whose child runs do not carry their final state yet: a worker killed between telling
    Optuna and tagging MLflow leaves them so. Optuna's state is the truth; returns the trials fixed."""
    final = {t.number: t.state.name for t in trials if t.state.name in RUN_STATUS}
    runs = client.search_runs([exp_id], f"tags.`{SWEEP_TAG}` = '{sweep}'", run_view_type=ViewType.ACTIVE_ONLY,
                              max_results=50000)
    stale = sorted({int(r.data.tags[TRIAL_TAG]) for r in runs if TRIAL_TAG in r.data.tags
                    and int(r.data.tags[TRIAL_TAG]) in final
                    and r.data.tags.get(STATE_TAG) != final[int(r.data.tags[TRIAL_TAG])]})
    for number in stale:
        mark_trial(client, exp_id, sweep, number, final[number])
    return stale


def close_dead_trial(uri: str, exp_name: str, sweep: str):
    """The storage's retry callback: a dead worker's runs end KILLED, their trial FAIL."""
    def on_failed(trial) -> None:
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(exp_name)
        if exp is not None:
            reason = trial.user_attrs.get(FAIL_REASON_ATTR, "worker lost (no heartbeat)")
            mark_trial(client, exp.experiment_id, sweep, trial.number, "FAIL", reason, killed=True)
    return on_failed


def _figures(study, spec: SweepSpec, out: Path) -> list[Path]:
    """Optuna's matplotlib figures (no plotly needed), PNG + PDF; a figure Optuna cannot draw yet
    (too few trials, one parameter) is left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as ovm

    plots = {"history": ovm.plot_optimization_history, "importances": ovm.plot_param_importances,
             "parallel_coordinates": ovm.plot_parallel_coordinate}
    if spec.multi_objective:
        plots = {"pareto_front": ovm.plot_pareto_front, "parallel_coordinates": ovm.plot_parallel_coordinate}
    written = []
    for name, fn in plots.items():
        try:
            kw = {"target": lambda t: t.values[0], "target_name": spec.objectives[0].metric} \
                if spec.multi_objective and name != "pareto_front" else {}
            if spec.multi_objective and name == "pareto_front":
                kw = {"target_names": [o.metric for o in spec.objectives]}
            ax = fn(study, **kw)
            fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
            fig.set_size_inches(8, 5)
            fig.tight_layout()
            for ext in ("png", "pdf"):
                fig.savefig(out / f"{name}.{ext}", dpi=120)
                written.append(out / f"{name}.{ext}")
            plt.close(fig)
        except Exception as err:  # e.g. importances with fewer than two completed trials
            log.info("figure %s skipped: %s", name, err)
            plt.close("all")
    return written


def finish_parent(client: MlflowClient, rid: str, study, spec: SweepSpec, status: str) -> dict:
    """Status, trial counts, best parameters or Pareto front, figures. `status`: finished | interrupted |
    stopped (first trials all failed) | ended-with-workers-left."""
    trials = study.get_trials(deepcopy=False)
    n = st.counts(trials)
    front = [st.trial_summary(t, spec) for t in st.best(study, spec)]
    summary = {"status": status, "trials": dict(n), "best" if not spec.multi_objective else "pareto_front": front}
    ts = [f"{k.lower()}={v}" for k, v in sorted(n.items())]
    client.set_tag(rid, STATUS_TAG, status)
    client.set_tag(rid, SWEEP_TRIALS_TAG, " ".join(ts))
    for state in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING"):
        client.log_metric(rid, f"sweep/n_{state.lower()}", n.get(state, 0))
    if front and not spec.multi_objective:
        client.set_tag(rid, BEST_TRIAL_TAG, str(front[0]["trial"]))
        client.set_tag(rid, BEST_PARAMS_TAG, json.dumps(front[0]["params"], default=str)[:8000])
        client.log_metric(rid, "sweep/best_value", front[0]["values"][spec.objectives[0].metric])
    client.log_dict(rid, summary, "sweep/summary.json")
    client.log_dict(rid, [st.trial_summary(t, spec) for t in trials], "sweep/trials.json")
    with tempfile.TemporaryDirectory() as tmp:
        for path in _figures(study, spec, Path(tmp)):
            client.log_artifact(rid, str(path), "sweep/figures")
    client.set_terminated(rid, {"finished": "FINISHED", "interrupted": "KILLED"}.get(status, "FAILED"))
    return summary


def active_run_id() -> str | None:
    run = mlflow.active_run()
    return run.info.run_id if run else None
