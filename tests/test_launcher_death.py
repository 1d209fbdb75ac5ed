"""Issue 28: ranks die with their launcher. SIGKILL of `treepo-lab train ... trainer.nproc=2` (what an OOM
killer or a scheduler's hard kill does) once left both ranks training and the run RUNNING; now each rank
gets SIGTERM from the kernel when its launcher is gone (a parent-death signal), rank 0 ends the run FAILED
with the reason, and `resume` continues it from its last checkpoint."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil
from mlflow.tracking import MlflowClient
from test_distributed import BASE, EXPERIMENT
from test_launch_safety import ROOT, ranks_of

from treepo_lab.train import checkpoint as ckpt
from treepo_lab.train.run import resume


def test_sigkill_of_the_launcher_stops_its_ranks_and_the_run_resumes(ws_cache, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = ["train", f"experiment={EXPERIMENT}", *BASE, f"warmstart.cache_dir={ws_cache}", f"tracking.tracking_uri={uri}",
            "tracking.run_name=orphan", "trainer.steps=400", "trainer.save_every=1", "trainer.nproc=2"]
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "WORLD_SIZE")}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", TORCH_NUM_THREADS="1")
    with open(tmp_path / "log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "treepo_lab.cli", *args], cwd=tmp_path, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
    checkpoints = tmp_path / "runs" / "orphan" / "checkpoints"
    ranks: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline and ckpt.latest_checkpoint(checkpoints) is None:
            time.sleep(0.2)
        ranks = ranks_of(psutil.Process(proc.pid))
        assert proc.poll() is None and len(ranks) == 2, (tmp_path / "log").read_text()[-3000:]
        proc.kill()
        proc.wait(timeout=10)
        t0 = time.monotonic()
        gone, alive = psutil.wait_procs(ranks, timeout=30)
        took = time.monotonic() - t0
    finally:
        for p in ranks:
            if p.is_running():
                p.kill()
    assert not alive, f"ranks {[p.pid for p in alive]} outlived their launcher"
    assert took < 15, took
    client = MlflowClient(uri)
    run = client.search_runs([e.experiment_id for e in client.search_experiments()])[0]
    assert run.info.status == "FAILED", run.info.status
    assert f"the launcher (pid {proc.pid}) is gone" in run.data.tags["treepo.error"], run.data.tags
    last = ckpt.latest_checkpoint(checkpoints)
    step = int(last.name.split("-")[-1])
    trainer, _ = resume(str(tmp_path / "runs" / "orphan"), ["trainer.nproc=1", f"trainer.steps={step + 1}"],
                        progress=False)
    assert trainer.step == step + 1
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
