"""Real sweeps on the tiny model into temporary stores: two parallel workers killed with SIGKILL and
resumed (Optuna and MLflow agree on every trial, no trial lost or repeated, every child under the parent),
a failing and a pruned trial, the stop after the first K failures, and Ctrl-C."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow import MlflowClient

from treepo_lab.config import load_config, warmstart_config
from treepo_lab.models.warmstart import warmstart
from treepo_lab.sweep import metrics
from treepo_lab.sweep import mlflow_runs as mr
from treepo_lab.sweep import storage as sto
from treepo_lab.sweep.driver import run_sweep

pytestmark = pytest.mark.slow


def tiny(ws_cache: str, out: Path, **extra) -> dict:
    return {"warmstart.steps": 30, "warmstart.eval_size": 0, "warmstart.batch_size": 16, "warmstart.cache_dir": ws_cache,
            "trainer.steps": 2, "trainer.prompts_per_step": 2, "trainer.mini_batch_prompts": 1, "trainer.warmup_steps": 0,
            "trainer.eval_every": 1, "trainer.save_every": 0, "trainer.output_dir": str(out / "runs"),
            "sampler.width": 4, "sampler.max_depth": 4, "sampler.segment_len": 8, "sampler.fallback_block_size": 8,
            "eval.n_problems": 4, "eval.batch_size": 4, "reward.dynamic_sampling": False, "reward.overlong_buffer": 24,
            "tracking.system_metrics": False, "tracking.log_trees_every": 0, **extra}


@pytest.fixture(scope="module")
def store(tmp_path_factory, ws_cache):
    """One MLflow store (and journal folder) for the module: creating MLflow's tables takes ~10 s here.
    Each test has its own sweep, so its own MLflow experiment and Optuna journal."""
    tmp = tmp_path_factory.mktemp("sweeps")
    over = tiny(ws_cache, tmp)
    # built once here: parallel workers must not race to build the same warm start
    warmstart(warmstart_config(load_config("treepo_fixed_init", [f"{k}={v}" for k, v in over.items()])))
    MlflowClient(f"sqlite:///{tmp}/mlflow.db").search_experiments()
    return tmp, over


@pytest.fixture()
def env(store, monkeypatch):
    tmp, over = store
    monkeypatch.chdir(tmp)
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parent.parent))
    yield tmp, over, f"sqlite:///{tmp}/mlflow.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def write_spec(path: Path, name: str, overrides: dict, grid: dict, **fields) -> Path:
    path.write_text(yaml.safe_dump({"name": name, "description": f"test sweep {name}", "experiment": "treepo_fixed_init",
                                    "overrides": overrides, "grid": grid, "seeds": [0], **fields}, sort_keys=False))
    return path


def journal_study(tmp: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=sto.open_storage(str(tmp / "optuna" / f"{name}.journal")))


def children(client: MlflowClient, name: str):
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parent = [r for r in runs if r.data.tags.get(mr.ROLE_TAG) == "parent"]
    assert len(parent) == 1
    return parent[0], [r for r in runs if r is not parent[0]]


def wait_for(cond, timeout_s: float, what: str):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_two_workers_sigkill_then_resume(env):
    tmp, over, uri = env
    grid = {"sampler.div_policy": "choice(fixed_avg, logprob_weighted_div)", "sampler.branch": "choice(2, 4)"}
    spec = write_spec(tmp / "four.yaml", "four", over, grid)
    cmd = [sys.executable, "-m", "treepo_lab.cli", "sweep", str(spec), "--workers", "2", "--tracking-uri", uri]
    with open(tmp / "first.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    journal = tmp / "optuna" / "four.journal"

    def one_done_one_running():
        if not journal.exists():
            return False
        n = Counter(t.state.name for t in journal_study(tmp, "four").trials)
        return n["COMPLETE"] >= 1 and n["RUNNING"] >= 1
    try:
        wait_for(one_done_one_running, 300, "a complete and a running trial")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the sweep; its workers die with it (PR_SET_PDEATHSIG)
        proc.wait()
    held = [t.user_attrs["worker"]["pid"] for t in journal_study(tmp, "four").trials if t.state.name == "RUNNING"]
    wait_for(lambda: not any(Path(f"/proc/{p}").exists() for p in held), 30, "the workers to die")

    summary = run_sweep(str(spec), [], workers=2, tracking_uri=uri)
    assert summary["status"] == "finished"
    trials = journal_study(tmp, "four").trials
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    points = sorted((t.params["sampler.div_policy"], t.params["sampler.branch"]) for t in complete)
    assert points == sorted((d, b) for d in ("fixed_avg", "logprob_weighted_div") for b in (2, 4))  # none lost or repeated
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert failed and all("is gone" in t.user_attrs["fail_reason"] for t in failed)
    reruns = {t.system_attrs["retry_history"][-1] for t in trials if "retry_history" in t.system_attrs}
    assert reruns == {t.number for t in failed}  # each lost trial ran again, once

    client = MlflowClient(uri)
    parent, kids = children(client, "four")
    assert parent.info.status == "FINISHED" and parent.data.tags[mr.STATUS_TAG] == "finished"
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in kids)
    by_trial = {}
    for r in kids:
        by_trial.setdefault(int(r.data.tags["treepo.trial"]), []).append(r)
    for t in trials:  # the two stores agree on every trial
        for r in by_trial.get(t.number, []):
            assert r.data.tags[mr.STATE_TAG] == t.state.name
            assert r.info.status == ("FINISHED" if t.state.name == "COMPLETE" else "KILLED")
    assert all(len(by_trial[t.number]) == 1 for t in complete)  # no duplicate MLflow run
    assert set(by_trial) <= {t.number for t in trials}
    r = by_trial[complete[0].number][0]
    assert r.info.run_name.startswith(f"t{complete[0].number:02d} div=") and r.info.run_name.endswith(" s0")
    assert r.data.tags["sweep.sampler.branch"] == str(complete[0].params["sampler.branch"])
    missing = [m for m in metrics.LOGGED if m not in r.data.metrics]
    assert not missing, f"metrics.LOGGED names metrics training does not log: {missing}"
    figures = {a.path for a in client.list_artifacts(parent.info.run_id, "sweep/figures")}
    assert {"sweep/figures/history.png", "sweep/figures/history.pdf"} <= figures


def test_failing_and_pruned_trials(env, capsys):
    tmp, over, uri = env
    # the real model is pruned at its first evaluation (accuracy < 0.99); a missing model path fails
    spec = write_spec(tmp / "fp.yaml", "fp", over, {"model.path": [None, str(tmp / "no-such-model")]},
                      pruner={"name": "threshold", "lower": 0.99})
    summary = run_sweep(str(spec), [], workers=1, tracking_uri=uri)
    assert summary["status"] == "finished"
    t0, t1 = sorted(journal_study(tmp, "fp").trials, key=lambda t: t.number)
    assert t0.state.name == "PRUNED" and t1.state.name == "FAIL"
    assert "no-such-model" in t1.user_attrs["error"]
    client = MlflowClient(uri)
    _, kids = children(client, "fp")
    runs = {int(r.data.tags["treepo.trial"]): r for r in kids}
    assert runs[0].info.status == "KILLED" and runs[0].data.tags[mr.STATE_TAG] == "PRUNED"
    assert "pruned at step 0" in runs[0].data.tags["treepo.pruned"] and mr.ERROR_TAG not in runs[0].data.tags
    assert client.get_metric_history(runs[0].info.run_id, "eval/accuracy")  # its curve is kept
    assert runs[1].info.status == "FAILED" and "no-such-model" in runs[1].data.tags[mr.ERROR_TAG]


def test_trials_of_two_ranks_each(env):
    """nproc_per_trial: 2: each trial's run is one torchrun group of 2 ranks; one child run each, under the parent."""
    tmp, over, uri = env
    spec = write_spec(tmp / "ranks.yaml", "ranks", {**over, "trainer.eval_every": 0},
                      {"sampler.branch": [1, 2]}, nproc_per_trial=2)
    summary = run_sweep(str(spec), [], workers=1, tracking_uri=uri)
    assert summary["status"] == "finished"
    assert [t.state.name for t in journal_study(tmp, "ranks").trials] == ["COMPLETE", "COMPLETE"]
    parent, kids = children(MlflowClient(uri), "ranks")
    assert len(kids) == 2 and {r.data.tags["mlflow.parentRunId"] for r in kids} == {parent.info.run_id}
    assert all(r.info.status == "FINISHED" and r.data.tags["treepo.world_size"] == "2" for r in kids)
    values = [t.values[0] for t in journal_study(tmp, "ranks").trials]
    assert values == [MlflowClient(uri).get_run(r.info.run_id).data.metrics["eval/accuracy"]
                      for r in sorted(kids, key=lambda r: int(r.data.tags["treepo.trial"]))]


def test_first_trials_all_failing_stop_the_sweep(env, capsys):
    tmp, over, uri = env
    spec = write_spec(tmp / "bad.yaml", "bad", over, {"model.path": [str(tmp / f"missing-{i}") for i in range(4)]},
                      failure_limit=2)
    summary = run_sweep(str(spec), [], workers=1, tracking_uri=uri)
    out = capsys.readouterr().out
    assert summary["status"] == "stopped"
    assert out.count("missing-0") == 1 and "the first 2 trials all failed" in out
    states = Counter(t.state.name for t in journal_study(tmp, "bad").trials)
    assert states == {"FAIL": 2, "WAITING": 2}


def test_ctrl_c_kills_running_trials_in_mlflow(env):
    tmp, over, uri = env
    spec = write_spec(tmp / "int.yaml", "int", {**over, "trainer.steps": 200}, {"sampler.branch": "choice(2)"})
    cmd = [sys.executable, "-m", "treepo_lab.cli", "sweep", str(spec), "--tracking-uri", uri]
    with open(tmp / "int.log", "w") as log:  # started as `cmd &` in a script would be: SIGINT ignored on entry
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    client = MlflowClient(uri)

    def child_running():
        exp = client.get_experiment_by_name("int")
        return exp is not None and any(r.info.status == "RUNNING" and mr.ROLE_TAG not in r.data.tags
                                       for r in client.search_runs([exp.experiment_id]))
    try:
        wait_for(child_running, 300, "a running child run")
        time.sleep(2)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=180) == 130
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    parent, kids = children(client, "int")
    assert parent.info.status == "KILLED" and parent.data.tags[mr.STATUS_TAG] == "interrupted"
    assert [r.info.status for r in kids] == ["KILLED"] and kids[0].data.tags[mr.STATE_TAG] == "FAIL"
    trials = sorted(journal_study(tmp, "int").trials, key=lambda t: t.number)
    assert [t.state.name for t in trials] == ["FAIL", "WAITING"]  # interrupted, and queued for the next run
    assert trials[0].user_attrs["interrupted"] and trials[1].params == trials[0].params
