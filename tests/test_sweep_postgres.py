"""The many-machines path: an Optuna RDB storage on a throwaway PostgreSQL 15 cluster and an `mlflow server`,
both on 127.0.0.1; the sweep's worker plus a `sweep-worker` that joins it. The joined worker is SIGKILLed while
it holds a trial: its heartbeat stops, the other worker fails and retries the trial, and every grid point
completes once."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.request
from collections import Counter
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow import MlflowClient
from test_sweep import store, tiny, wait_for  # noqa: F401  (store: the module's warm start)

from treepo_lab.sweep import mlflow_runs as mr
from treepo_lab.sweep import storage as sto

PG = Path("/usr/lib/postgresql/15/bin")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (PG / "initdb").exists() or shutil.which("runuser") is None,
                                 reason="PostgreSQL 15 binaries (/usr/lib/postgresql/15/bin) or runuser not installed")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_postgres(*cmd, **kw):
    return subprocess.run(["runuser", "-u", "postgres", "--", *map(str, cmd)], check=True, capture_output=True, **kw)


@pytest.fixture()
def postgres():
    root = Path(tempfile.mkdtemp(prefix="treepo-pg-", dir="/tmp"))
    shutil.chown(root, "postgres")
    port = free_port()
    as_postgres(PG / "initdb", "-D", root / "data", "-A", "trust", "-U", "postgres", "--no-sync")
    as_postgres(PG / "pg_ctl", "-D", root / "data", "-l", root / "log", "-w", "-o",
                f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
    try:
        as_postgres(PG / "createdb", "-h", "127.0.0.1", "-p", port, "optuna")
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/optuna"
    finally:
        as_postgres(PG / "pg_ctl", "-D", root / "data", "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture()
def mlflow_server(tmp_path):
    port = free_port()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
                             "--artifacts-destination", str(tmp_path / "artifacts")],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "server.log", "w"),
                            start_new_session=True)
    uri = f"http://127.0.0.1:{port}"

    def up():
        try:
            return urllib.request.urlopen(uri + "/health", timeout=2).status == 200
        except OSError:
            return False
    try:
        wait_for(up, 120, "mlflow server")
        yield uri
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # uvicorn drains slowly; nothing of it is needed any more
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_postgres_and_tracking_server_with_two_workers(store, postgres, mlflow_server, tmp_path, monkeypatch):  # noqa: F811
    _, over = store
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parent.parent))
    spec = tmp_path / "pg.yaml"
    spec.write_text(yaml.safe_dump({"name": "pg", "experiment": "treepo_fixed_init", "overrides": {**over, "trainer.steps": 3},
                                    "grid": {"sampler.branch": "choice(2, 3, 4)"}, "heartbeat_s": 1}, sort_keys=False))
    cli = [sys.executable, "-m", "treepo_lab.cli"]
    sweep = subprocess.Popen(cli + ["sweep", str(spec), "--storage", postgres, "--tracking-uri", mlflow_server],
                             stdout=open(tmp_path / "sweep.log", "w"), stderr=subprocess.STDOUT)
    storage = sto.open_storage(postgres)

    def study_ready():
        try:
            return bool(optuna.load_study(study_name="pg", storage=storage).user_attrs.get("parent_run_id"))
        except KeyError:
            return False
    joined = None
    try:
        wait_for(study_ready, 120, "the study")
        joined = subprocess.Popen(cli + ["sweep-worker", "pg", "--storage", postgres, "--threads", "1"],
                                  stdout=open(tmp_path / "worker.log", "w"), stderr=subprocess.STDOUT)

        def joined_holds_a_trial():
            trials = optuna.load_study(study_name="pg", storage=storage).trials
            return any(t.state.name == "RUNNING" and t.user_attrs.get("worker", {}).get("pid") == joined.pid for t in trials)
        wait_for(joined_holds_a_trial, 180, "the joined worker to run a trial")
        joined.kill()  # no heartbeat from now on
        assert sweep.wait(timeout=400) == 0, (tmp_path / "sweep.log").read_text()[-3000:]
    finally:
        for p in (sweep, joined):
            if p is not None and p.poll() is None:
                p.kill()
    trials = optuna.load_study(study_name="pg", storage=storage).trials
    states = Counter(t.state.name for t in trials)
    assert states == {"COMPLETE": 3, "FAIL": 1}
    assert sorted(t.params["sampler.branch"] for t in trials if t.state.name == "COMPLETE") == [2, 3, 4]
    failed = next(t for t in trials if t.state.name == "FAIL")
    assert any(t.system_attrs.get("failed_trial") == failed.number for t in trials)  # retried

    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("pg")
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.data.tags.get(mr.ROLE_TAG) == "parent")
    kids = [r for r in runs if r is not parent]
    assert parent.info.status == "FINISHED"
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in kids)
    finished = [r for r in kids if r.info.status == "FINISHED"]
    assert len(finished) == 3 and all(r.data.tags[mr.STATE_TAG] == "COMPLETE" for r in finished)
    for r in kids:
        if int(r.data.tags["treepo.trial"]) == failed.number:
            assert r.info.status == "KILLED" and r.data.tags[mr.STATE_TAG] == "FAIL"
