"""One run across processes (issue 18): real torchrun ranks (gloo, CPU, 2 ranks, the embedded model) against
one process of the same config, logged to a real MLflow store.

- parameters after 2 steps equal the 1-process run's (<= 1e-5 relative per tensor), for ddp and fsdp, tree
  packing on and off, loss_agg_mode token-mean and seq-mean-token-sum-norm, DAPO dynamic sampling on and off;
- exactly one MLflow run, with the 1-process run's treepo.* tags (plus treepo.world_size=2) and metric keys;
- its checkpoint resumed at 2 ranks and at 1 rank gives the same metrics and parameters;
- a rank that raises, or is killed with SIGKILL mid-step, stops the other within 60 s, the run ends FAILED with
  the reason in one line, and `resume` finishes it;
- bad world sizes are refused in one line before any process, folder or run exists.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file
from test_trainer import FAST

from treepo_lab.cli import main
from treepo_lab.config import load_config
from treepo_lab.train import checkpoint as ckpt
from treepo_lab.train.run import resume, run_experiment

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENT = "treepo_fixed_init"
# 4 prompts (2 per rank), mini-batches of 2 prompts (1 per rank), 2 steps, a checkpoint at the end
BASE = [o for o in FAST if not o.startswith(("tracking.", "trainer.steps", "trainer.prompts_per_step",
                                              "trainer.mini_batch_prompts"))] + [
    # lr 1e-4: Adam's first steps move each weight by about lr * sign(gradient), so a gradient element
    # within float noise of 0 can flip; at 1e-3 such flips alone approach the 1e-5 tolerance
    "trainer.steps=2", "trainer.prompts_per_step=4", "trainer.mini_batch_prompts=2", "trainer.save_every=2",
    "trainer.lr=1e-4", "eval.batch_size=4",  # 2 chunks of the 8 held-out problems: one per rank
    "eval.sample_k=2",  # the T=1 samples of each chunk too: eval/sample_accuracy as in one process
    "tracking.system_metrics=false", "tracking.log_trees_every=0"]
# pairwise: each rank-count-independent knob both ways, each parallel mode with both
CASES = {
    "ddp-tree-token-dapo": ["trainer.parallel=ddp", "trainer.packing=tree", "loss.loss_agg_mode=token-mean",
                            "reward.dynamic_sampling=true", "reward.max_resample_rounds=3"],
    "fsdp-tree-token-dapo": ["trainer.parallel=fsdp", "trainer.packing=tree", "loss.loss_agg_mode=token-mean",
                             "reward.dynamic_sampling=true", "reward.max_resample_rounds=3"],
    "ddp-flat-seqnorm": ["trainer.parallel=ddp", "trainer.packing=flat",
                         "loss.loss_agg_mode=seq-mean-token-sum-norm", "trainer.micro_batch_size=3"],
    "fsdp-flat-seqnorm": ["trainer.parallel=fsdp", "trainer.packing=flat",
                          "loss.loss_agg_mode=seq-mean-token-sum-norm", "trainer.micro_batch_size=3"],
}
LAUNCHED = "ddp-flat-seqnorm"  # this case starts its ranks with `treepo-lab train trainer.nproc=2`
VOLATILE_TAGS = ("treepo.world_size", "treepo.run_dir", "treepo.checkpoint")
# metrics that are the same numbers at any world size (timings, per-micro-batch loss means are not)
SAME_METRICS = ("critic/score/mean", "rollout/decoded_tokens", "rollout/generated_tokens", "response_length/mean",
                "dynamic_sampling/kept_prompts", "dynamic_sampling/rounds", "eval/accuracy", "actor/grad_norm",
                "cumulative/rollout/decoded_tokens", "eval/decoded_tokens", "eval/n_problems", "eval/sample_accuracy")


JUDGE = Path(__file__).resolve().parent / "parity_judge.py"


def _over(ws_cache, uri, name, *extra):
    # the barely warm-started model is always wrong on arith: a judge of response length gives many
    # prompts right and wrong leaves, so advantages (and DAPO's kept prompts) are not all zero
    judge = ["task.check.extract=whole", "task.check.compare=python", f"task.check.function={JUDGE}:odd_length"]
    return BASE + judge + [f"warmstart.cache_dir={ws_cache}", f"tracking.tracking_uri={uri}",
                           f"tracking.run_name={name}", *extra]


def _torchrun(args: list[str], cwd: Path, timeout: float = 240, script: str | None = None):
    """`torchrun --standalone --nproc-per-node 2` of the CLI (or of `script`), as a user would run it."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "--monitor-interval", "0.5"]
    cmd += [str(script), *args] if script else ["-m", "treepo_lab.cli", *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TORCH_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    found = ckpt.latest_checkpoint(run_dir / "checkpoints")
    return load_file(str(found / "model" / "model.safetensors"))


def _assert_same_weights(a: dict, b: dict, start: dict | None = None) -> None:
    """a == b to 1e-5 relative per tensor; with `start`, training moved them 20x more than that."""
    assert sorted(a) == sorted(b)
    rel = lambda x, y: ((x - y).norm() / x.norm().clamp_min(1e-12)).item()
    worst = max(rel(a[k], b[k]) for k in a)
    assert worst <= 1e-5, worst
    if start is not None:
        assert max(rel(a[k], start[k]) for k in a) > 20 * max(worst, 1e-6)


def _run(client: MlflowClient, name: str):
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string=f"attributes.run_name = '{name}'")
    assert len(runs) == 1, [r.info.run_name for r in runs]  # exactly one MLflow run per training run
    return runs[0]


def _last(client: MlflowClient, run, key: str) -> float:
    return client.get_metric_history(run.info.run_id, key)[-1].value


@pytest.fixture()
def store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    yield f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(None)
    os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.mark.parametrize("case", list(CASES))
def test_two_ranks_equal_one_process(store, ws_cache, tmp_path, case):
    knobs = CASES[case]
    one, _ = run_experiment(load_config(EXPERIMENT, _over(ws_cache, store, "one", *knobs)), progress=False)
    args = ["train", f"experiment={EXPERIMENT}", *_over(ws_cache, store, "two", *knobs)]
    if case == LAUNCHED:  # `treepo-lab train trainer.nproc=2`, the command users type, starts both ranks itself
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TORCH_NUM_THREADS": "1"}
        out = subprocess.run([sys.executable, "-m", "treepo_lab.cli", *args, "trainer.nproc=2"], cwd=tmp_path,
                             env=env, capture_output=True, text=True, timeout=240)
    else:
        out = _torchrun(args, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    start = load_file(str(Path(one.model_path) / "model.safetensors"))
    _assert_same_weights(_weights(one.run_dir), _weights(tmp_path / "runs" / "two"), start)
    client = MlflowClient(store)
    r1, r2 = _run(client, "one"), _run(client, "two")
    assert r2.info.status == "FINISHED" and r2.data.tags["treepo.world_size"] == "2"
    assert r1.data.tags["treepo.world_size"] == "1"
    assert json.loads((tmp_path / "runs" / "two" / "tracking.json").read_text())["run_id"] == r2.info.run_id
    tags = lambda r: {k: v for k, v in r.data.tags.items() if k.startswith("treepo.") and k not in VOLATILE_TAGS}
    assert tags(r1) == tags(r2)
    assert set(r1.data.metrics) == set(r2.data.metrics)
    for key in SAME_METRICS:
        if key in r1.data.metrics:
            assert _last(client, r1, key) == pytest.approx(_last(client, r2, key), rel=1e-4, abs=1e-6), key
    if "dapo" in case:  # dynamic sampling really dropped prompts and resampled (the kept count is global)
        assert sum(m.value for m in client.get_metric_history(r1.info.run_id, "dynamic_sampling/dropped_prompts")) > 0


def test_resume_at_two_ranks_and_at_one_gives_the_same_run(store, ws_cache, tmp_path):
    knobs = CASES["fsdp-tree-token-dapo"]
    out = _torchrun(["train", f"experiment={EXPERIMENT}", *_over(ws_cache, store, "r", *knobs)], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir, copy = tmp_path / "runs" / "r", tmp_path / "runs" / "r-copy"
    shutil.copytree(run_dir, copy)  # the run as the 2 ranks left it, for the 1-rank resume after the 2-rank one
    out = _torchrun(["resume", str(run_dir), "trainer.steps=3"], tmp_path)  # written at 2 ranks, resumed at 2
    assert out.returncode == 0, out.stderr[-3000:]
    client = MlflowClient(store)
    run = _run(client, "r")
    assert run.info.status == "FINISHED"
    two = {k: client.get_metric_history(run.info.run_id, k) for k in SAME_METRICS if k in run.data.metrics}
    weights_two = _weights(run_dir)
    trainer, history = resume(str(copy), ["trainer.steps=3", "trainer.nproc=1"], progress=False)  # at 1 rank
    assert trainer.world.size == 1 and trainer.step == 3
    for key, points in two.items():
        at3 = [m.value for m in points if m.step == 3]
        mine = [h[key] for h in history if h.get("train/step") == 3 and key in h]
        assert at3 and mine and mine[-1] == pytest.approx(at3[-1], rel=1e-4, abs=1e-6), key
    _assert_same_weights(weights_two, _weights(copy))


KILLER = textwrap.dedent("""
    # rank 1 of a torchrun run dies at step `at` (SIGKILL: no handler runs) or raises there
    import os, signal, sys
    from treepo_lab.train.trainer import Trainer
    how, at = sys.argv[1], int(sys.argv[2])
    real = Trainer._rollout
    def rollout(self, step, round_):
        if step == at and self.world.rank == 1:
            if how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise ValueError("boom on purpose")
        return real(self, step, round_)
    Trainer._rollout = rollout
    from treepo_lab.cli import main
    sys.exit(main(sys.argv[3:]))
""")


@pytest.mark.parametrize("how", ["kill", "raise"])
def test_a_failing_rank_stops_the_run_failed_and_resume_finishes_it(store, ws_cache, tmp_path, how):
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    over = _over(ws_cache, store, "k", "trainer.steps=3", "trainer.save_every=1", "trainer.parallel=ddp")
    t0 = time.monotonic()
    out = _torchrun([how, "1", "train", f"experiment={EXPERIMENT}", *over], tmp_path, script=script)
    took = time.monotonic() - t0
    assert out.returncode != 0
    assert took < 60 + 30, took  # the other rank stopped (the budget includes two interpreters' start-up)
    client = MlflowClient(store)
    run = _run(client, "k")
    assert run.info.status == "FAILED"
    error = run.data.tags["treepo.error"]
    assert "\n" not in error and "rank" in error
    if how == "raise":
        assert "rank 1: ValueError: boom on purpose" in error
        assert "rank 1: ValueError: boom on purpose" in out.stderr  # rank 0's one line
    trainer, _ = resume(str(tmp_path / "runs" / "k"), ["trainer.nproc=1"], progress=False)
    assert trainer.step == 3 and _run(client, "k").info.status == "FINISHED"


@pytest.mark.parametrize("bad, line", [
    (["trainer.nproc=8"], "trainer.nproc=8 is not allowed: at most trainer.prompts_per_step=4"),
    (["trainer.nproc=3"], "trainer.nproc=3 is not allowed: a divisor of trainer.prompts_per_step=4"),
    (["trainer.nproc=2", "engine.name=vllm", "engine.tensor_parallel_size=4"],
     "engine.tensor_parallel_size=4 is not allowed: a divisor of the world size 2"),
])
def test_bad_world_sizes_are_refused_before_anything_starts(store, ws_cache, tmp_path, capsys, bad, line):
    code = main(["train", f"experiment={EXPERIMENT}", *_over(ws_cache, store, "bad", *bad)])
    err = capsys.readouterr().err
    assert code == 2 and line in err, err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()


def test_torchrun_world_size_is_checked_like_nproc(store, ws_cache, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "3")
    code = main(["train", f"experiment={EXPERIMENT}", *_over(ws_cache, store, "bad")])
    assert code == 2 and "WORLD_SIZE" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
