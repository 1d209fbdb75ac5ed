"""A worker killed between telling Optuna and tagging MLflow: the next sweep start gives the trial's child
runs their final state (Optuna is the truth), so the two stores agree again."""
from __future__ import annotations

import optuna
from mlflow import MlflowClient

from treepo_lab.sweep import mlflow_runs as mr


def test_reconcile_gives_stale_child_runs_the_trials_final_state(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("s", artifact_location=str(tmp_path / "art"))
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    runs = {}
    for state in ("COMPLETE", "FAIL", "RUNNING"):
        trial = study.ask()
        run = client.create_run(exp, tags={mr.SWEEP_TAG: "s", mr.TRIAL_TAG: str(trial.number),
                                           mr.STATE_TAG: "RUNNING"})
        runs[trial.number] = run.info.run_id
        if state == "COMPLETE":
            study.tell(trial, 0.5)
        elif state == "FAIL":
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
    assert mr.reconcile(client, exp, "s", study.trials) == [0, 1]
    got = {n: client.get_run(rid) for n, rid in runs.items()}
    assert (got[0].data.tags[mr.STATE_TAG], got[0].info.status) == ("COMPLETE", "FINISHED")
    assert (got[1].data.tags[mr.STATE_TAG], got[1].info.status) == ("FAIL", "FAILED")
    assert (got[2].data.tags[mr.STATE_TAG], got[2].info.status) == ("RUNNING", "RUNNING")  # still running: untouched
    assert mr.reconcile(client, exp, "s", study.trials) == []  # nothing left to fix
