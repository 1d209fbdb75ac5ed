"""One trial: its point, then one training run per seed (each a child MLflow run of the sweep's parent),
the objective as the mean over seeds and the spread recorded.

Seeds and pruning: the seeds run one after the other, and every held-out evaluation of seed i at step s
is reported to Optuna as step i*(trainer.steps+1)+s. A trial is thus compared with the other trials on
the same seed at the same training step, and a pruned trial stops at once (its remaining seeds never run).
A retried trial (its worker died) reuses the seeds its predecessor finished, and their MLflow runs.

A unit sweep (order: shuffled, blocks:) gives each trial one seed, its Optuna parameter `seed` (so a retry
reruns the same seed): the trial runs that seed only, reported at step s, and its objective is that seed's value.
"""
from __future__ import annotations

import json
import math
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import optuna
from mlflow import MlflowClient
from omegaconf import OmegaConf

from treepo_lab import tags
from treepo_lab.sweep import mlflow_runs as mr
from treepo_lab.sweep import study as st
from treepo_lab.sweep.grammar import override_value
from treepo_lab.sweep.space import run_name, suggest, suggest_unit, trial_config
from treepo_lab.sweep.spec import SweepSpec
from treepo_lab.train.run import run_experiment


class TrialFailed(RuntimeError):
    """A trial that ran but gave no usable objective (NaN, metric missing)."""


@dataclass
class TrialContext:
    spec: SweepSpec
    tracking_uri: str
    parent_run_id: str
    experiment_id: str

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(self.tracking_uri)


def final_values(spec: SweepSpec, history: list[dict]) -> list[float]:
    out = []
    for o in spec.objectives:
        logged = [h[o.metric] for h in history if o.metric in h]
        if not logged:
            raise TrialFailed(f"objective {o.metric} was never logged by this run")
        out.append(float(logged[-1]))
    return out


class PruningHook:
    """Trainer on_eval hook: report the first objective, raise TrialPruned when Optuna says so."""

    def __init__(self, trial: optuna.Trial, spec: SweepSpec, seed: int, seed_index: int, steps: int, runs: dict):
        self.trial, self.metric, self.offset = trial, spec.objectives[0].metric, seed_index * (steps + 1)
        self.prunable = spec.pruner["name"] != "none"
        self.runs, self.seed = runs, seed

    def __call__(self, step: int, metrics: dict) -> None:
        if str(self.seed) not in self.runs and mlflow.active_run() is not None:
            self.runs[str(self.seed)] = mlflow.active_run().info.run_id
            self.trial.set_user_attr(st.RUNS_ATTR, self.runs)
        value = metrics.get(self.metric)
        if not self.prunable or value is None or not math.isfinite(value):
            return
        self.trial.report(float(value), self.offset + step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step} of seed {self.seed}: {self.metric}={value:.4g}")


def _seed_run(ctx: TrialContext, trial_number: int, seed: int, runs: dict) -> str | None:
    if str(seed) in runs:
        return runs[str(seed)]
    found = [r for r in mr.trial_runs(ctx.client, ctx.experiment_id, ctx.spec.name, trial_number)
             if r.data.tags.get(tags.SEED_TAG) == str(seed)]
    return found[0].info.run_id if found else None


def _failed_run(ctx: TrialContext, trial_number: int, point: dict, seed: int, error: str) -> str:
    """A trial that failed before training could open its run still gets one, FAILED, with the error."""
    client = ctx.client
    run = client.create_run(ctx.experiment_id, run_name=run_name(trial_number, point, seed), tags={
        tags.PARENT_RUN_TAG: ctx.parent_run_id, mr.SWEEP_TAG: ctx.spec.name, mr.TRIAL_TAG: str(trial_number),
        tags.SEED_TAG: str(seed), mr.ERROR_TAG: error[:8000], **swept_tags(point)})
    client.set_terminated(run.info.run_id, "FAILED")
    return run.info.run_id


def _run_ranks(ctx: TrialContext, cfg, trial_number: int, seed: int) -> tuple[str, list[dict], float]:
    """One seed as a torchrun group of spec.nproc_per_trial ranks (sweep/ranks.py); (its run id, its last
    metric values as a one-entry history, its training wall time), read back from MLflow."""
    from treepo_lab.train.launch import launch_ranks

    with tempfile.TemporaryDirectory() as tmp:
        job = Path(tmp) / "job.json"
        job.write_text(json.dumps({"config": OmegaConf.to_container(OmegaConf.structured(cfg)),
                                   "sweep_id": ctx.spec.name, "trial": trial_number,
                                   "parent_run_id": ctx.parent_run_id}))
        launch_ranks(ctx.spec.nproc_per_trial, cfg.model.device, ["-m", "treepo_lab.sweep.ranks", str(job)])
    run_id = _seed_run(ctx, trial_number, seed, {})
    if run_id is None:
        raise TrialFailed(f"the ranks of trial {trial_number} seed {seed} left no MLflow run")
    metrics = ctx.client.get_run(run_id).data.metrics
    return run_id, [dict(metrics)], float(metrics.get("time/wall_s", 0.0))


def swept_tags(point: dict[str, Any]) -> dict[str, str]:
    return {f"sweep.{k}": override_value(v) for k, v in point.items()}


def run_trial(ctx: TrialContext, trial: optuna.Trial) -> list[float]:
    spec = ctx.spec
    if spec.per_unit:  # one seed, enqueued as the trial's `seed` param (never a config override: cfg.seed)
        point, seed = suggest_unit(trial, spec)
        seeds = [seed]
    else:
        point, seeds = suggest(trial, spec.params), spec.seeds
    runs: dict[str, str] = dict(trial.user_attrs.get(st.RUNS_ATTR, {}))
    seed_values: dict[str, list[float]] = dict(trial.user_attrs.get(st.SEED_VALUES_ATTR, {}))
    for seed in list(seed_values):  # finished by the trial this one retries: keep, renamed
        if seed in runs:
            ctx.client.set_tag(runs[seed], mr.TRIAL_TAG, str(trial.number))
            ctx.client.update_run(runs[seed], name=run_name(trial.number, point, int(seed)))
    runs = {s: r for s, r in runs.items() if s in seed_values}
    trial.set_user_attr(st.RUNS_ATTR, runs)
    timing = {"run_s": 0.0, "train_s": 0.0}  # run_experiment, and its training loop (benchmarks/sweep.py)
    for i, seed in enumerate(seeds):
        if str(seed) in seed_values:
            continue
        try:
            cfg = trial_config(spec, point, seed)
            cfg.tracking.tracking_uri = ctx.tracking_uri
            cfg.tracking.experiment_name = spec.name
            cfg.tracking.run_name = run_name(trial.number, point, seed)
            cfg.tracking.tags = {**cfg.tracking.tags, **swept_tags(point), mr.STATE_TAG: "RUNNING"}
            t0 = time.perf_counter()
            if spec.nproc_per_trial > 1:
                run_id, history, wall_s = _run_ranks(ctx, cfg, trial.number, seed)
            else:
                hook = PruningHook(trial, spec, seed, i, cfg.trainer.steps, runs)
                trainer, history = run_experiment(cfg, sweep_id=spec.name, trial=trial.number,
                                                  parent_run_id=ctx.parent_run_id, progress=False, on_eval=hook)
                run_id, wall_s = trainer.tracker.run_id, trainer.wall_s
            timing["run_s"] += time.perf_counter() - t0
            timing["train_s"] += wall_s
            trial.set_user_attr(tags.TIMING_ATTR, timing)
            runs[str(seed)] = run_id
            trial.set_user_attr(st.RUNS_ATTR, runs)
            values = final_values(spec, history)
            if not all(math.isfinite(v) for v in values):
                raise TrialFailed(f"objective {dict(zip([o.metric for o in spec.objectives], values))} is not finite")
        except optuna.TrialPruned as err:
            rid = _seed_run(ctx, trial.number, seed, runs)
            if rid:
                ctx.client.delete_tag(rid, mr.ERROR_TAG)
                ctx.client.set_tag(rid, tags.PRUNED_TAG, str(err))
                ctx.client.set_terminated(rid, "KILLED")
            raise
        except Exception as err:
            msg = f"{type(err).__name__}: {err}"
            rid = _seed_run(ctx, trial.number, seed, runs)
            if rid is None:
                _failed_run(ctx, trial.number, point, seed, msg)
            else:
                ctx.client.set_tag(rid, mr.ERROR_TAG, msg[:8000])
                ctx.client.set_terminated(rid, "FAILED")
            raise
        seed_values[str(seed)] = values
        trial.set_user_attr(st.SEED_VALUES_ATTR, seed_values)
    per_objective = list(zip(*[seed_values[str(s)] for s in seeds]))
    means = [statistics.fmean(v) for v in per_objective]
    trial.set_user_attr(tags.OBJECTIVE_STD_ATTR, [statistics.stdev(v) if len(v) > 1 else 0.0 for v in per_objective])
    return means
