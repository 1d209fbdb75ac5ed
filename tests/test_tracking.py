"""The MLflow tracker against real MLflow: a SQLite store in a temp dir, and one real `mlflow server`."""
from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow import MlflowClient

from treepo_lab.registry import ConfigError
from treepo_lab.track.config import TrackingConfig
from treepo_lab.track.mlflow_tracker import NullTracker, Tracker, TrackingError
from treepo_lab.track.naming import flatten_config, sanitize_key, strategy_tags

CFG = {
    "name": "default",
    "seed": 3,
    "sampler": {"kind": "tree", "width": 16, "max_depth": 8, "segment_len": 16, "div_policy": "fixed_avg",
                "fallback_cut": "random", "init_div_range": None, "div_temp_schedule": {"kind": "constant"}},
    "advantage": {"estimator": "treepo"},
    "loss": {"name": "ppo"},
    "many": {f"k{i:03d}": i for i in range(150)},  # > 100 params: needs more than one log_batch
    "long": "x" * 700,  # over the 500-char param limit of older servers
}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    # one database for the module: creating the schema costs seconds, experiments keep tests apart
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


@pytest.fixture(autouse=True)
def _isolated_mlflow(monkeypatch):
    # Tracker.start sets the global tracking URI and exports MLFLOW_TRACKING_URI; undo both
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield
    while mlflow.active_run() is not None:
        mlflow.end_run("KILLED")
    mlflow.set_tracking_uri(None)


def start(uri: str, experiment: str, **kw) -> Tracker:
    tcfg = TrackingConfig(tracking_uri=uri, system_metrics=kw.pop("system_metrics", False),
                          tags=kw.pop("tags", {}))
    return Tracker.start(kw.pop("cfg", CFG), tcfg, experiment=experiment, seed=3, engine="hf",
                         device="cpu", **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_run(uri: str, run_id: str):
    return MlflowClient(uri).get_run(run_id)


# ----------------------------------------------------------------------------------------- pure helpers

@pytest.mark.parametrize("key, want", [
    ("eval/pass@8", "eval/pass_at_8"),
    ("timing_s/gen", "timing_s/gen"),
    ("actor/pg_clipfrac", "actor/pg_clipfrac"),
    ("a:b|c", "a_b_c"),
    ("/x//y/./z/", "x/y/z"),
    ("../up", "up"),
    ("ünï", "_n_"),
])
def test_sanitize_key(key, want):
    assert sanitize_key(key) == want
    assert mlflow.utils.validation.validate_param_and_metric_name(sanitize_key(key))


def test_flatten_and_strategy_tags():
    flat = flatten_config(CFG)
    assert flat["sampler.width"] == "16" and flat["sampler.init_div_range"] == "None"
    assert flat["sampler.div_temp_schedule.kind"] == "constant"
    tags = strategy_tags(flat)
    assert tags["sampler.shape"] == "8x16"
    assert tags["treepo.strategy"] == "tree/fixed_avg/random/treepo"
    seq_cfg = {"sampler": {"kind": "sequential"}, "advantage": {"estimator": "grpo"}}
    seq = strategy_tags(flatten_config(seq_cfg))
    assert seq["treepo.strategy"] == "sequential/grpo"


def test_tracking_config(monkeypatch, tmp_path):
    TrackingConfig().validate()
    for bad in ({"log_trees_every": -1}, {"n_trees_logged": -2}, {"tracking_uri": " "},
                {"experiment_name": ""}, {"tags": {"owner": 3}}):
        with pytest.raises(ConfigError):
            TrackingConfig(**bad).validate()
    monkeypatch.chdir(tmp_path)
    assert TrackingConfig().resolved_uri() == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://example:5000")
    assert TrackingConfig().resolved_uri() == "http://example:5000"
    assert TrackingConfig(tracking_uri="sqlite:////abs/x.db").resolved_uri() == "sqlite:////abs/x.db"


def test_disabled_is_null_tracker():
    tr = Tracker.start(CFG, TrackingConfig(enabled=False), experiment="x", seed=0, engine="hf", device="cpu")
    assert isinstance(tr, NullTracker)
    with tr:
        tr.log_metrics({"a": 1}, step=0)
        tr.log_dict({"a": 1}, "a.json")


# ----------------------------------------------------------------------------------------- SQLite store

def test_round_trip(store, tmp_path):
    with start(store, "roundtrip", sweep_id=None, trial=None, tags={"owner": "ci"}) as tr:
        for step in range(3):
            tr.log_metrics({"critic/score/mean": 0.5 * step, "eval/pass@8": step / 10,
                            "maybe": None, "nan_ok": float("nan")}, step=step)
        tr.log_dict({"nodes": [1, 2]}, "trees/step_000002.json")
        (tmp_path / "sample.txt").write_text("hello")
        tr.log_artifact(tmp_path / "sample.txt", "eval_samples")
        run_id = tr.run_id
    runs = mlflow.search_runs(experiment_names=["roundtrip"], output_format="list")
    assert [r.info.run_id for r in runs] == [run_id]
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.info.run_name.startswith("roundtrip-tree-s3-")
    params, tags = run.data.params, run.data.tags
    assert len([k for k in params if k.startswith("many.")]) == 150
    assert params["sampler.width"] == "16" and params["advantage.estimator"] == "treepo"
    assert len(params["long"]) == 500 and params["long"].endswith("...")
    assert tags["treepo.experiment"] == "roundtrip" and tags["treepo.seed"] == "3"
    assert tags["treepo.engine"] == "hf" and tags["treepo.device"] == "cpu" and tags["owner"] == "ci"
    assert tags["sampler.kind"] == "tree" and tags["sampler.div_policy"] == "fixed_avg"
    assert tags["sampler.shape"] == "8x16" and tags["treepo.version"]
    assert len(tags["treepo.git_commit"]) == 40 or tags["treepo.git_commit"] == "unknown"
    client = MlflowClient(store)
    hist = client.get_metric_history(run_id, "eval/pass_at_8")
    assert [(m.step, m.value) for m in sorted(hist, key=lambda m: m.step)] == [(0, 0.0), (1, 0.1), (2, 0.2)]
    assert "maybe" not in run.data.metrics and math.isnan(run.data.metrics["nan_ok"])
    # artifacts land beside the database, not in ./mlruns of the working directory
    assert run.info.artifact_uri.startswith(Path(store[len("sqlite:///"):]).parent.as_uri())
    files = {f.path for f in client.list_artifacts(run_id)}
    assert {"config.yaml", "trees", "eval_samples"} <= files
    cfg_back = yaml.safe_load(mlflow.artifacts.load_text(f"{run.info.artifact_uri}/config.yaml"))
    assert cfg_back["sampler"]["width"] == 16


def test_exception_marks_failed(store):
    with pytest.raises(ValueError), start(store, "crash") as tr:
        tr.log_metrics({"loss": 1.0}, step=0)
        int("not a number")
    run = get_run(store, tr.run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["treepo.error"].startswith("ValueError")
    assert mlflow.active_run() is None


def test_keyboard_interrupt_marks_killed(store):
    # system metrics: on, or off with a warning where psutil is missing
    with pytest.raises(KeyboardInterrupt), start(store, "interrupt", system_metrics=True) as tr:
        raise KeyboardInterrupt
    assert get_run(store, tr.run_id).info.status == "KILLED"


def test_sigterm_marks_killed(store):
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exit_info, start(store, "sigterm") as tr:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler interrupts this
    assert exit_info.value.code == 128 + signal.SIGTERM
    assert get_run(store, tr.run_id).info.status == "KILLED"
    assert signal.getsignal(signal.SIGTERM) == before


def test_nested_trials_and_resume(store):
    with (start(store, "sweep-parent", cfg={"sweep": "div"}, sweep_id="div_sweep") as parent,
          start(store, "base_exp", sweep_id="div_sweep", trial=4, parent_run_id=parent.run_id) as child):
        child.log_metrics({"loss": 1.0}, step=0)
    child_run = get_run(store, child.run_id)
    assert child_run.data.tags["mlflow.parentRunId"] == parent.run_id
    tags = child_run.data.tags
    assert tags["treepo.trial"] == "4" and tags["treepo.sweep_id"] == "div_sweep"
    assert tags["treepo.experiment"] == "base_exp"
    assert child_run.info.experiment_id == parent.experiment_id  # one MLflow experiment per sweep
    assert "-t4-" in child_run.info.run_name
    # resume by id: same params are fine, metrics continue, status goes back to FINISHED
    with start(store, "base_exp", sweep_id="div_sweep", resume_run_id=child.run_id) as again:
        assert again.run_id == child.run_id
        assert get_run(store, child.run_id).info.status == "RUNNING"
        again.log_metrics({"loss": 0.5}, step=1)
    assert get_run(store, child.run_id).info.status == "FINISHED"
    assert len(MlflowClient(store).get_metric_history(child.run_id, "loss")) == 2


# ----------------------------------------------------------------------------------------- tracking server

def test_unreachable_server_fails_fast():
    uri = f"http://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(TrackingError, match=uri.replace(".", r"\.")):
        start(uri, "nowhere")
    assert time.monotonic() - t0 < 10


def _wait_health(url: str, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"mlflow server at {url} not healthy after {timeout_s} s")


@pytest.mark.slow  # ~15-20 s: the server takes ~12 s to come up on 2 shared cores
def test_server_serves_runs(store, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # the module's store (its schema exists: no migrations at startup), one worker, and no job runner
    # (it forks half a dozen huey consumers we do not need)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store,
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with open(tmp_path / "server.log", "w") as log:
        # its own session, so the uvicorn child it spawns is stopped with it
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            _check_server(url, proc)
        except Exception:
            print((tmp_path / "server.log").read_text()[-3000:])
            raise
        finally:
            _stop_group(proc)


def _check_server(url: str, proc: subprocess.Popen) -> None:
    _wait_health(url, proc, timeout_s=40)
    with start(url, "served") as tr:
        tr.log_metrics({"eval/pass@8": 0.25}, step=7)
    query = urllib.parse.urlencode({"run_id": tr.run_id})
    with urllib.request.urlopen(f"{url}/api/2.0/mlflow/runs/get?{query}", timeout=10) as r:
        run = json.load(r)["run"]
    assert run["info"]["status"] == "FINISHED"
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    metrics = {m["key"]: (m["value"], m["step"]) for m in run["data"]["metrics"]}
    assert params["sampler.div_policy"] == "fixed_avg" and tags["treepo.strategy"]
    assert metrics["eval/pass_at_8"] == (0.25, 7)
    body = json.dumps({"experiment_ids": [run["info"]["experiment_id"]],
                       "filter": "tags.`sampler.kind` = 'tree'"}).encode()
    req = urllib.request.Request(f"{url}/api/2.0/mlflow/runs/search", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert [x["info"]["run_id"] for x in json.load(r)["runs"]] == [tr.run_id]


def _stop_group(proc: subprocess.Popen) -> None:
    for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)  # the group we created with start_new_session
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue
