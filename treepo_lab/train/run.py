"""Run an experiment end to end: tracking run, trainer, checkpoints, artifacts.

The MLflow run is opened (and a tracking server checked) after the config is validated and before any
model is built, so a bad server fails fast and a crash anywhere after it marks the run FAILED.
"""
from __future__ import annotations

import re
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from treepo_lab.config import ExperimentConfig, to_object, validate
from treepo_lab.models.load import resolve_device
from treepo_lab.track.mlflow_tracker import Tracker
from treepo_lab.train import checkpoint as ckpt
from treepo_lab.train.preflight import preflight
from treepo_lab.train.trainer import Trainer

RUN_DIR_TAG = "treepo.run_dir"


def run_experiment(cfg, resume_from: str | Path | None = None, resume_run_id: str | None = None,
                   sweep_id: str | None = None, trial: int | None = None, parent_run_id: str | None = None,
                   progress: bool = True, on_eval=None) -> tuple[Trainer, list[dict]]:
    """`on_eval(step, metrics)` runs after every held-out evaluation (see Trainer); what it raises
    propagates, after the trainer is closed and the run is marked by the tracker."""
    cfg: ExperimentConfig = validate(to_object(cfg))
    for warning in preflight(cfg).warnings:  # every check that can fail before a run or folder exists
        print(f"warning: {warning}", file=sys.stderr)
    device = str(resolve_device(cfg.model.device))
    tracker = Tracker.start(OmegaConf.to_container(OmegaConf.structured(cfg)), cfg.tracking, cfg.name, cfg.seed,
                            cfg.engine.name, device, sweep_id=sweep_id, trial=trial, parent_run_id=parent_run_id,
                            resume_run_id=resume_run_id)
    with tracker:
        if resume_from is not None:
            run_dir = Path(resume_from).resolve().parent.parent
        else:
            name = tracker.run_name or f"{cfg.name}-{time.strftime('%m%d-%H%M%S')}"
            run_dir = (Path(cfg.trainer.output_dir) / name).resolve()
        tracker.set_tag(RUN_DIR_TAG, str(run_dir))
        trainer = Trainer(cfg, tracker=tracker, resume_from=resume_from, run_dir=run_dir, on_eval=on_eval)
        try:
            history = trainer.fit(progress=progress)
        finally:
            trainer.close()
        last = ckpt.latest_checkpoint(run_dir / "checkpoints")
        tracker.log_text(f"{last}\n", "checkpoint_location.txt")
        tracker.set_tag("treepo.checkpoint", str(last))
    return trainer, history


def find_checkpoint(ref: str) -> Path:
    """A checkpoint dir, a run dir (its latest checkpoint), or an MLflow run id (its run dir tag)."""
    p = Path(ref)
    if (p / ckpt.DONE).is_file():
        return p
    if (p / "checkpoints").is_dir() and ckpt.latest_checkpoint(p / "checkpoints"):
        return ckpt.latest_checkpoint(p / "checkpoints")
    if not p.exists() and re.fullmatch(r"[0-9a-f]{32}", ref):  # an MLflow run id
        import mlflow

        try:
            run = mlflow.get_run(ref)
        except Exception as err:
            raise FileNotFoundError(f"{ref!r} is neither a checkpoint, a run directory nor an MLflow run id "
                                    f"in {mlflow.get_tracking_uri()}") from err
        run_dir = run.data.tags.get(RUN_DIR_TAG)
        found = ckpt.latest_checkpoint(Path(run_dir) / "checkpoints") if run_dir else None
        if found:
            return found
    raise FileNotFoundError(f"no treepo_lab checkpoint found at {ref!r}")


def resume(ref: str, overrides: list[str] | None = None, progress: bool = True):
    """Continue a run from its latest checkpoint with the config it was started with."""
    path = find_checkpoint(ref)
    state = ckpt.read_state(path)
    run_dir = path.parent.parent
    base = OmegaConf.structured(ExperimentConfig)
    saved = OmegaConf.load(run_dir / "config.yaml")
    cfg = OmegaConf.merge(base, saved, OmegaConf.from_dotlist(list(overrides or [])))
    return run_experiment(cfg, resume_from=path, resume_run_id=state.get("run_id"), progress=progress)
