"""A real 2-step training run logged to a temporary SQLite MLflow store, read back through MLflow's API;
a crash inside the run leaves it FAILED; resume by run id continues the same MLflow run."""
from __future__ import annotations

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from test_trainer import FAST

from treepo_lab.config import load_config
from treepo_lab.train.run import resume, run_experiment
from treepo_lab.train.trainer import Trainer

EXPERIMENT = "arith_d2-tiny"  # the default MLflow experiment: one per task and model


@pytest.fixture()
def store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # runs/ and mlartifacts/ land in the temporary directory
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    yield uri
    mlflow.set_tracking_uri(None)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _cfg(uri, ws_cache, *extra):
    over = [o for o in FAST if not o.startswith("tracking.")]
    return load_config("treepo_fixed_init", over + [f"warmstart.cache_dir={ws_cache}", f"tracking.tracking_uri={uri}",
                                                    "tracking.system_metrics=false", "tracking.log_trees_every=1",
                                                    "trainer.steps=2", "trainer.save_every=1", *extra])


def test_two_step_run_is_in_mlflow(store, ws_cache):
    trainer, history = run_experiment(_cfg(store, ws_cache), progress=False)
    runs = mlflow.search_runs(experiment_names=[EXPERIMENT], output_format="list")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    params, tags = run.data.params, run.data.tags
    assert params["sampler.width"] == "4" and params["advantage.estimator"] == "treepo"
    assert params["trainer.steps"] == "2"
    assert tags["treepo.experiment"] == "treepo_fixed_init" and tags["treepo.seed"] == "0"
    assert tags["treepo.engine"] == "hf" and "mlflow.source.git.commit" in tags and "treepo.version" in tags
    assert tags["treepo.strategy"] == "4x8" and tags["treepo.strategy.sampler"] == "tree"  # FAST: 4 segments of 8
    assert run.info.run_name.startswith("treepo_fixed_init-s0-")
    assert "Table 1 row 3" in tags["mlflow.note.content"] and "paper_ref" not in params
    client = MlflowClient(store)
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "critic/score/mean")]
    assert steps == [1, 2]
    decoded = [m.value for m in client.get_metric_history(run.info.run_id, "cumulative/rollout/decoded_tokens")]
    assert decoded[0] > 0 and decoded[-1] >= decoded[0]
    assert client.get_metric_history(run.info.run_id, "eval/accuracy")
    assert all("@" not in k for k in run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "trees", "checkpoint_location.txt"} <= artifacts
    trees = {a.path for a in client.list_artifacts(run.info.run_id, "trees")}
    assert {"trees/step000001.json", "trees/step000001.html"} <= trees, "trees: compact JSON and a drawing"
    assert "eval_samples.json" in artifacts  # the MLflow table of evaluation samples


def test_crash_leaves_run_failed(store, ws_cache, monkeypatch):
    def boom(self, step):
        raise RuntimeError("forced failure")

    monkeypatch.setattr(Trainer, "train_step", boom)
    with pytest.raises(RuntimeError, match="forced failure"):
        run_experiment(_cfg(store, ws_cache), progress=False)
    run = mlflow.search_runs(experiment_names=[EXPERIMENT], output_format="list")[0]
    assert run.info.status == "FAILED"


def test_resume_by_run_id_continues_the_run(store, ws_cache, monkeypatch):
    real = Trainer.train_step

    def die_at_second(self, step):
        if step == 1:
            raise KeyboardInterrupt
        return real(self, step)

    monkeypatch.setattr(Trainer, "train_step", die_at_second)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(_cfg(store, ws_cache), progress=False)
    run = mlflow.search_runs(experiment_names=[EXPERIMENT], output_format="list")[0]
    assert run.info.status == "KILLED"
    monkeypatch.setattr(Trainer, "train_step", real)
    trainer, _ = resume(run.info.run_id, progress=False)
    assert trainer.step == 2
    again = MlflowClient(store).get_run(run.info.run_id)
    assert again.info.status == "FINISHED"
    steps = [m.step for m in MlflowClient(store).get_metric_history(run.info.run_id, "critic/score/mean")]
    assert steps == [1, 2]
