"""Faults survived with nothing lost (issue 13 item 4), on real runs logged to a real MLflow store:
kill -9 then resume leaves one metric point per step; resuming a finished run does nothing; a corrupt
checkpoint changes nothing and is named; the store is recorded in the run directory; Ctrl-C prints one
line and the error tag is cleared on resume; one process per run directory; a tracking server that dies
mid-run stops the run cleanly with its checkpoint kept."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import mlflow
import pytest
from filelock import FileLock
from mlflow.tracking import MlflowClient
from test_trainer import FAST

from treepo_lab.cli import main
from treepo_lab.config import load_config
from treepo_lab.registry import ConfigError
from treepo_lab.train import checkpoint as ckpt
from treepo_lab.train.preflight import LOCK_NAME, CheckpointError
from treepo_lab.train.run import RunComplete, find_checkpoint, resume, run_experiment
from treepo_lab.train.trainer import Trainer

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(None)
    os.environ.pop("MLFLOW_TRACKING_URI", None)


def _over(uri, ws_cache, *extra):
    over = [o for o in FAST if not o.startswith("tracking.")]
    return over + [f"warmstart.cache_dir={ws_cache}", "tracking.system_metrics=false", "tracking.log_trees_every=0",
                   *([f"tracking.tracking_uri={uri}"] if uri else []), *extra]


def _interrupt_at(monkeypatch, at: int, exc=KeyboardInterrupt):
    real = Trainer.train_step

    def step(self, s):
        if s == at:
            raise exc()
        return real(self, s)

    monkeypatch.setattr(Trainer, "train_step", step)
    return real


def _only_run(uri):
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return client, runs[0]


def _histories(client, run):
    return {k: [m.step for m in client.get_metric_history(run.info.run_id, k)]
            for k in run.data.metrics if not k.startswith("system/")}


KILL_CHILD = textwrap.dedent("""
    import json, os, signal, sys
    import torch
    torch.set_num_threads(1)
    from treepo_lab.config import load_config
    from treepo_lab.train.run import run_experiment
    from treepo_lab.train.trainer import Trainer
    real = Trainer.train_step
    def step(self, s):
        if s == int(sys.argv[2]):
            os.kill(os.getpid(), signal.SIGKILL)  # no handler runs: the run stays RUNNING, like a power cut
        return real(self, s)
    Trainer.train_step = step
    run_experiment(load_config("treepo_fixed_init", json.loads(sys.argv[1])), progress=False)
""")


def test_kill_9_then_resume_leaves_one_metric_point_per_step(store, ws_cache, tmp_path):
    over = _over(store, ws_cache, "trainer.steps=4", "trainer.save_every=2", "trainer.eval_every=2")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", KILL_CHILD, json.dumps(over), "3"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == -signal.SIGKILL, out.stderr[-2000:]
    client, run = _only_run(store)
    assert _histories(client, run)["critic/score/mean"] == [1, 2, 3]  # step 3 logged, checkpoint at 2
    trainer, _ = resume(run.info.run_id, [f"tracking.tracking_uri={store}"], progress=False)
    assert trainer.step == 4
    client, run = _only_run(store)
    assert run.info.status == "FINISHED"
    hist = _histories(client, run)
    assert hist["critic/score/mean"] == [1, 2, 3, 4]  # step 3 was computed twice, logged once
    assert hist["eval/accuracy"] == [2, 4]
    dupes = {k: s for k, s in hist.items() if len(s) != len(set(s))}
    assert not dupes, f"metric points logged twice: {dupes}"


def test_resuming_a_finished_run_says_complete_and_does_nothing(store, ws_cache, capsys):
    trainer, _ = run_experiment(load_config("treepo_fixed_init", _over(store, ws_cache)), progress=False)
    client, run = _only_run(store)
    last = ckpt.latest_checkpoint(trainer.run_dir / "checkpoints")
    before = (last / "state.json").stat().st_mtime_ns, _histories(client, run), {
        a.path for a in client.list_artifacts(run.info.run_id)}, run.info.end_time
    with pytest.raises(RunComplete, match="complete"):
        resume(run.info.run_id, [f"tracking.tracking_uri={store}"], progress=False)
    assert main(["resume", str(trainer.run_dir)]) == 0
    assert "complete" in capsys.readouterr().out
    client, run = _only_run(store)
    after = (last / "state.json").stat().st_mtime_ns, _histories(client, run), {
        a.path for a in client.list_artifacts(run.info.run_id)}, run.info.end_time
    assert after == before and run.info.status == "FINISHED"


def test_a_corrupt_checkpoint_changes_nothing_and_is_named(store, ws_cache, capsys):
    trainer, _ = run_experiment(load_config("treepo_fixed_init", _over(store, ws_cache, "trainer.save_every=1")),
                                progress=False)
    client, run = _only_run(store)
    weights = trainer.run_dir / "checkpoints" / "step-000003" / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a disk that filled up mid-copy
    snapshot = run.data.tags, {a.path for a in client.list_artifacts(run.info.run_id)}, run.info.status
    with pytest.raises(CheckpointError, match=r"model\.safetensors cannot be loaded \(truncated") as e:
        resume(str(trainer.run_dir), ["trainer.steps=5"], progress=False)
    assert "step-000002" in str(e.value)  # the earlier checkpoint is offered
    assert main(["resume", str(trainer.run_dir), "trainer.steps=5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "model.safetensors" in err[0] and len(err) == 2
    client, run = _only_run(store)
    assert (run.data.tags, {a.path for a in client.list_artifacts(run.info.run_id)}, run.info.status) == snapshot


def test_the_store_is_recorded_in_the_run_dir_and_the_uri_override_is_honoured(ws_cache, tmp_path, monkeypatch):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    monkeypatch.chdir(first)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    _interrupt_at(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):  # default store: ./mlflow.db of the first folder
        run_experiment(load_config("treepo_fixed_init", _over(None, ws_cache, "trainer.save_every=1")), progress=False)
    monkeypatch.undo()
    monkeypatch.chdir(second)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    uri = f"sqlite:///{first}/mlflow.db"
    client, run = _only_run(uri)
    run_dir = first / "runs" / run.info.run_name
    assert json.loads((run_dir / "tracking.json").read_text())["tracking_uri"] == uri
    with pytest.raises(FileNotFoundError, match="tracking.tracking_uri"):  # not in ./mlflow.db of this folder
        find_checkpoint(run.info.run_id)
    assert find_checkpoint(run.info.run_id, tracking_uri=uri).parent.parent == run_dir
    trainer, _ = resume(str(run_dir), progress=False)  # from another folder: the recorded store
    assert trainer.step == 3 and not (second / "mlflow.db").exists()
    client, run = _only_run(uri)
    assert run.info.status == "FINISHED" and _histories(client, run)["critic/score/mean"] == [1, 2, 3]
    mlflow.set_tracking_uri(None)


def test_ctrl_c_prints_one_line_and_resume_clears_the_error_tag(store, ws_cache, monkeypatch, capsys):
    real = _interrupt_at(monkeypatch, 2)
    assert main(["train", "experiment=treepo_fixed_init", *_over(store, ws_cache, "trainer.save_every=1")]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err) and "step-000002" in err[-1] and "treepo-lab resume" in err[-1], err
    assert sum("interrupted" in line for line in err) == 1, err  # progress lines, then one line: where, how to go on
    client, run = _only_run(store)
    assert run.info.status == "KILLED" and "treepo.error" in run.data.tags
    monkeypatch.setattr(Trainer, "train_step", real)
    assert main(["resume", run.info.run_id, f"tracking.tracking_uri={store}"]) == 0
    client, run = _only_run(store)
    assert run.info.status == "FINISHED" and "treepo.error" not in run.data.tags


def test_one_process_per_run_directory(store, ws_cache, monkeypatch, capsys):
    _interrupt_at(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(load_config("treepo_fixed_init", _over(store, ws_cache, "trainer.save_every=1")), progress=False)
    client, run = _only_run(store)
    run_dir = Path("runs") / run.info.run_name
    snapshot = {a.path for a in client.list_artifacts(run.info.run_id)}
    with FileLock(str(run_dir / LOCK_NAME)):  # another process is resuming it
        with pytest.raises(ConfigError, match="another treepo-lab process holds"):
            resume(str(run_dir), progress=False)
    client, run = _only_run(store)
    assert run.info.status == "KILLED" and {a.path for a in client.list_artifacts(run.info.run_id)} == snapshot


def test_a_new_run_never_writes_into_an_existing_run_dir(store, ws_cache):
    over = _over(store, ws_cache, "tracking.run_name=mine")
    run_experiment(load_config("treepo_fixed_init", over), progress=False)
    with pytest.raises(ConfigError, match="runs/mine.*already"):
        run_experiment(load_config("treepo_fixed_init", over), progress=False)
    client = MlflowClient(store)
    assert len(client.search_runs([e.experiment_id for e in client.search_experiments()])) == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_tracking_server_that_dies_mid_run_stops_it_cleanly_with_its_checkpoint(ws_cache, tmp_path, monkeypatch):
    from treepo_lab.track.mlflow_tracker import TrackingError
    from treepo_lab.track.ui import start_ui, stop_ui

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail in seconds, not MLflow's minutes of retries
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    server, url = start_ui(f"sqlite:///{tmp_path}/server.db", _free_port())  # a real `mlflow server`
    try:
        real = Trainer.train_step

        def step(self, s):
            if s == 2:  # the server goes away while step 3 is computed; checkpoints at 1 and 2 exist
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(30)
            return real(self, s)

        monkeypatch.setattr(Trainer, "train_step", step)
        cfg = load_config("treepo_fixed_init", _over(url, ws_cache, "trainer.save_every=1", "trainer.steps=5"))
        t0 = time.perf_counter()
        with pytest.raises(TrackingError, match=f"{url}.*checkpoint.*step-000003"):
            run_experiment(cfg, progress=False)
        assert time.perf_counter() - t0 < 120
    finally:
        stop_ui(server)
    (run_dir,) = (tmp_path / "runs").iterdir()
    state = ckpt.read_state(ckpt.latest_checkpoint(run_dir / "checkpoints"))
    assert state["step"] == 3  # the step whose metrics could not be logged is saved, nothing lost
    mlflow.set_tracking_uri(None)
    os.environ.pop("MLFLOW_TRACKING_URI", None)


HOLD_LOCK = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from filelock import FileLock
    final = Path(sys.argv[1])
    with FileLock(str(final.parent / f"{final.name}.lock")):
        print("holding", flush=True)
        time.sleep(3)
        final.mkdir(parents=True)
        (final / "warmstart.json").write_text(json.dumps({"built_by": "the other process"}))
""")


def test_a_warm_start_entry_is_built_by_one_process_while_others_wait(tmp_path, capsys):
    from treepo_lab.models.config import WarmstartConfig
    from treepo_lab.models.warmstart import MARKER, cache_key, warmstart

    cfg = WarmstartConfig(cache_dir=str(tmp_path), steps=5)
    final = tmp_path / cache_key(cfg)
    other = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(final)], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "holding"
        t0 = time.perf_counter()
        assert warmstart(cfg) == final  # waited, then took the other process's entry instead of training
        assert time.perf_counter() - t0 > 1
        assert json.loads((final / MARKER).read_text()) == {"built_by": "the other process"}
        assert "another process is building" in capsys.readouterr().out
    finally:
        other.wait(30)
