"""Run an experiment end to end: preflight, tracking run, trainer, checkpoints, artifacts.

Order matters (issue 13): every check that can run before training (`preflight`: config, dataset, model
files, tokenizer, positions, tracking URI and server; on resume the checkpoint's files) runs first, then the
model is built, and only then is the MLflow run opened, so a bad input leaves no run, no run directory and
no checkpoint, and only training itself can leave a FAILED run. The run directory is locked while a process
writes it, and records the store its run lives in (tracking.json), so `resume <run dir>` works from any
folder.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from treepo_lab.config import ExperimentConfig, checked, to_object, validate
from treepo_lab.models.load import resolve_device
from treepo_lab.overrides import check_override_keys
from treepo_lab.registry import ConfigError
from treepo_lab.tags import CHECKPOINT_TAG, RUN_DIR_TAG
from treepo_lab.track.config import TrackingConfig
from treepo_lab.track.mlflow_tracker import Tracker, TrackingError, check_reachable
from treepo_lab.train import checkpoint as ckpt
from treepo_lab.train import distributed
from treepo_lab.train.preflight import check_checkpoint, lock_run_dir, preflight
from treepo_lab.train.progress import setup_step
from treepo_lab.train.trainer import Trainer

STORE_FILE = "tracking.json"  # {tracking_uri, run_id, experiment_id}: where this run directory's run lives


class RunComplete(Exception):
    """`resume` of a run that already reached trainer.steps and ended FINISHED: nothing to do."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C: the run ended KILLED; `checkpoint` is the latest one (None before the first), `resume_ref` what
    to pass to `treepo-lab resume`."""

    def __init__(self, checkpoint: Path | None, resume_ref: str):
        self.checkpoint, self.resume_ref = checkpoint, resume_ref
        where = f"checkpoint {checkpoint}" if checkpoint else "no checkpoint yet (nothing to resume)"
        super().__init__(f"interrupted: {where}" + (f"; resume with: treepo-lab resume {resume_ref}" if checkpoint else ""))


def _run_name(cfg: ExperimentConfig, trial: int | None) -> str:
    return cfg.tracking.run_name or "-".join(
        [cfg.name] + ([f"t{trial}"] if trial is not None else []) + [f"s{cfg.seed}", time.strftime("%m%d-%H%M%S")])


def check_run_name(cfg) -> None:
    """An explicit tracking.run_name whose run directory exists is refused (also by the process that
    launches the ranks, before any starts)."""
    name, root = cfg.tracking.run_name, Path(cfg.trainer.output_dir).resolve()
    if name and (root / name).exists():
        raise ConfigError("tracking.run_name", name, f"a new name: {root / name} already holds a run "
                                                     f"(resume it: treepo-lab resume {root / name})")


def _new_run_dir(cfg: ExperimentConfig, trial: int | None) -> tuple[Path, str]:
    """A run directory nobody has written: an explicit tracking.run_name that exists is refused; an
    automatic name that exists (two runs started in the same second) gets a suffix."""
    check_run_name(cfg)
    name = _run_name(cfg, trial)
    root = Path(cfg.trainer.output_dir).resolve()
    base, n = name, 2
    while (root / name).exists():
        name, n = f"{base}-{n}", n + 1
    return root / name, name


def run_experiment(cfg, resume_from: str | Path | None = None, resume_run_id: str | None = None,
                   sweep_id: str | None = None, trial: int | None = None, parent_run_id: str | None = None,
                   progress: bool = True, on_eval=None, store_uri: str | None = None) -> tuple[Trainer, list[dict]]:
    """`on_eval(step, metrics)` runs after every held-out evaluation (see Trainer); what it raises
    propagates, after the trainer is closed and the run is marked by the tracker. `store_uri`: the store
    a resumed run lives in (recorded in its run directory) when tracking.tracking_uri does not say."""
    cfg: ExperimentConfig = checked(cfg)  # validated once (the command line's load_config already did)
    for warning in preflight(cfg).warnings:  # every check that can fail before a run or folder exists
        print(f"warning: {warning}", file=sys.stderr)
    tracking = cfg.tracking if cfg.tracking.tracking_uri or not store_uri else \
        dataclasses.replace(cfg.tracking, tracking_uri=store_uri)
    if tracking.enabled:
        check_reachable(tracking.resolved_uri())
    world = distributed.init_world(cfg.model.device)  # a world of one without torchrun
    if not world.is_main:
        return _run_other_rank(cfg, world, resume_from, on_eval)
    try:
        if resume_from is not None:
            run_dir, name = Path(resume_from).resolve().parent.parent, None
            check_checkpoint(Path(resume_from))
        else:
            run_dir, name = _new_run_dir(cfg, trial)
        created = not run_dir.exists()
        lock = lock_run_dir(run_dir)
    except BaseException as err:
        world.broadcast((None, f"{type(err).__name__}: {err}"))  # the other ranks stop with it
        distributed.abort_world(world)
        raise
    world.broadcast((str(run_dir), None))
    try:
        device = str(resolve_device(cfg.model.device))
        # the model is built before the MLflow run exists: a model that fails to load leaves no run
        with setup_step("loading the model, task and engine", enabled=progress):  # seconds here, minutes for vLLM
            trainer = Trainer(cfg, resume_from=resume_from, run_dir=run_dir, on_eval=on_eval)
        tracking = tracking if name is None else dataclasses.replace(tracking, run_name=name)
        tracker = Tracker.start(OmegaConf.to_container(OmegaConf.structured(cfg)), tracking, cfg.name, cfg.seed,
                                cfg.engine.name, device, sweep_id=sweep_id, trial=trial, parent_run_id=parent_run_id,
                                resume_run_id=resume_run_id, world_size=world.size, peer_error=_peer_error(world))
    except BaseException:
        lock.release()
        if created:  # nothing but the lock was written: leave no trace
            shutil.rmtree(run_dir, ignore_errors=True)
        distributed.abort_world(world)
        raise
    try:
        _record_store(trainer, tracker, run_dir)
        history = _train(trainer, tracker, run_dir, progress)
    except BaseException:
        distributed.abort_world(world)
        raise
    finally:
        trainer.close()
        lock.release()
    distributed.close_world(world)
    return trainer, history


def _run_other_rank(cfg: ExperimentConfig, world, resume_from, on_eval) -> tuple[Trainer, list[dict]]:
    """Ranks > 0: the same trainer on the run directory rank 0 chose; no lock, tracker, progress or files."""
    run_dir, refused = world.broadcast(None)
    if refused:
        distributed.abort_world(world)
        raise distributed.RankFailed(f"rank 0: {refused}")
    trainer = None
    try:
        trainer = Trainer(cfg, resume_from=resume_from, run_dir=run_dir, on_eval=on_eval)
        history = trainer.fit(progress=False)
    except BaseException as err:
        if isinstance(err, Exception):  # Ctrl-C / the launcher's stop: not an error for rank 0 to report
            distributed.publish_error(world, err)
        distributed.abort_world(world)
        raise
    finally:
        if trainer is not None:
            trainer.close()
    distributed.close_world(world)
    return trainer, history


def _peer_error(world):
    """torchrun stops every rank with SIGTERM when one fails: the run then ends FAILED with that rank's
    error (or, when it left none, with this)."""
    if not world.distributed:
        return None
    launcher = os.getppid()

    def reason() -> distributed.RankFailed:
        if os.getppid() != launcher:  # the parent-death signal (distributed.init_world)
            return distributed.RankFailed(f"the launcher (pid {launcher}) is gone (killed?): the ranks stopped with it")
        return distributed.peer_error(world) or distributed.RankFailed(
            "stopped by torchrun: another rank failed without a word (killed?), or the job was stopped")
    return reason


def _record_store(trainer: Trainer, tracker, run_dir: Path) -> None:
    """The store and run id, in the run directory (and config.yaml), so a resume from any folder finds them."""
    trainer.tracker = tracker
    if tracker.run_id is None:
        return
    (run_dir / STORE_FILE).write_text(json.dumps({"tracking_uri": tracker.tracking_uri, "run_id": tracker.run_id,
                                                  "experiment_id": tracker.experiment_id}))


def _train(trainer: Trainer, tracker, run_dir: Path, progress: bool) -> list[dict]:
    ref = tracker.run_id or str(run_dir)
    world = trainer.world
    try:
        with tracker:
            tracker.set_tag(RUN_DIR_TAG, str(run_dir))
            try:
                history = trainer.fit(progress=progress)
            except Exception as err:
                peer = distributed.peer_error(world)
                if peer is not None:  # a collective failed because another rank did: say which and why
                    raise peer from err
                if world.distributed and any(m in str(err) for m in ("Connection closed by peer", "Connection reset")):
                    raise distributed.RankFailed(f"another rank stopped without an error (killed?) at step "
                                                 f"{trainer.step}: {_first_line(err)}") from err
                if not _server_gone(tracker):
                    raise
                # every tracker call sits between steps, so the trainer's state is whole: keep it
                # (one rank cannot save alone under FSDP: the last checkpoint is the one to resume)
                path = ckpt.latest_checkpoint(run_dir / "checkpoints") if world.distributed else trainer.save()
                raise TrackingError(f"the MLflow tracking server {tracker.tracking_uri} stopped answering at step "
                                    f"{trainer.step}; checkpoint saved: {path}; when it is back: treepo-lab resume "
                                    f"{run_dir}") from err
            last = ckpt.latest_checkpoint(run_dir / "checkpoints")
            tracker.log_text(f"{last}\n", "checkpoint_location.txt")
            tracker.set_tag(CHECKPOINT_TAG, str(last))
    except KeyboardInterrupt:
        raise RunInterrupted(ckpt.latest_checkpoint(run_dir / "checkpoints"), ref) from None
    return history


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:300]


def _server_gone(tracker) -> bool:
    uri = tracker.tracking_uri or ""
    if not uri.startswith(("http://", "https://")):
        return False
    try:
        check_reachable(uri, timeout_s=5.0)
    except TrackingError:
        return True
    return False


def _lookup_uri(overrides: list[str]) -> str:
    """The store a run id is looked up in: a `tracking.tracking_uri=` override, else $MLFLOW_TRACKING_URI,
    else ./mlflow.db (the defaults runs log to)."""
    given = [o.split("=", 1)[1] for o in overrides if o.lstrip("+").startswith("tracking.tracking_uri=")]
    return TrackingConfig(tracking_uri=given[-1] if given else None).resolved_uri()


def find_checkpoint(ref: str, tracking_uri: str | None = None) -> Path:
    """A checkpoint dir, a run dir (its latest checkpoint), or an MLflow run id (its run dir tag) looked up
    in `tracking_uri` (default: $MLFLOW_TRACKING_URI, else ./mlflow.db)."""
    p = Path(ref)
    if (p / ckpt.DONE).is_file():
        return p
    if (p / "checkpoints").is_dir() and ckpt.latest_checkpoint(p / "checkpoints"):
        return ckpt.latest_checkpoint(p / "checkpoints")
    if not p.exists() and re.fullmatch(r"[0-9a-f]{32}", ref):  # an MLflow run id
        from mlflow import MlflowClient

        uri = tracking_uri or TrackingConfig().resolved_uri()
        missing = f"{ref!r} is neither a checkpoint, a run directory nor an MLflow run id in {uri}; for a run in " \
                  f"another store add tracking.tracking_uri=<its URI>, or pass its run directory"
        if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
            raise FileNotFoundError(missing)  # a lookup must not create an empty store
        try:
            run = MlflowClient(uri).get_run(ref)
        except Exception as err:
            raise FileNotFoundError(missing) from err
        run_dir = run.data.tags.get(RUN_DIR_TAG)
        found = ckpt.latest_checkpoint(Path(run_dir) / "checkpoints") if run_dir else None
        if found:
            return found
    raise FileNotFoundError(f"no treepo_lab checkpoint found at {ref!r}")


def resume(ref: str, overrides: list[str] | None = None, progress: bool = True):
    """Continue a run from its latest checkpoint with the config it was started with (and `overrides`),
    in the store recorded in its run directory. A finished run raises RunComplete; nothing is touched."""
    overrides = list(overrides or [])
    check_override_keys(ExperimentConfig, overrides)
    given_uri = any(o.lstrip("+").startswith("tracking.tracking_uri=") for o in overrides)
    path = find_checkpoint(ref, _lookup_uri(overrides) if given_uri else None)
    run_dir = path.parent.parent
    earlier = [c for c in ckpt.list_checkpoints(run_dir / "checkpoints") if c != path]
    state = check_checkpoint(path, earlier[-1] if earlier else None)
    base = OmegaConf.structured(ExperimentConfig)
    saved = OmegaConf.load(run_dir / "config.yaml")
    store = run_dir / STORE_FILE
    recorded = json.loads(store.read_text()) if store.is_file() else {}
    cfg = validate(to_object(OmegaConf.merge(base, saved, OmegaConf.from_dotlist(overrides))))
    uri = None if given_uri else recorded.get("tracking_uri")
    run_id = state.get("run_id") or recorded.get("run_id")
    if state["step"] >= cfg.trainer.steps and _finished(cfg, run_id, uri):
        raise RunComplete(f"run {run_id or run_dir} is complete ({state['step']} of {cfg.trainer.steps} steps, "
                          f"FINISHED): nothing to do; to train further: treepo-lab resume {ref} trainer.steps=<more>")
    from treepo_lab.train import launch

    if cfg.trainer.nproc > 1 and not launch.launched():  # the ranks each run this resume
        launch.launch(cfg, ["resume", ref, *overrides])
        return None, []
    return run_experiment(cfg, resume_from=path, resume_run_id=run_id, progress=progress, store_uri=uri)


def _finished(cfg: ExperimentConfig, run_id: str | None, store_uri: str | None) -> bool:
    """Did the run end FINISHED? (No tracking: the final checkpoint alone says so.)"""
    if not cfg.tracking.enabled or run_id is None:
        return True
    from mlflow import MlflowClient

    uri = store_uri or cfg.tracking.resolved_uri()
    try:
        return MlflowClient(uri).get_run(run_id).info.status == "FINISHED"
    except Exception as err:  # noqa: BLE001  (the store moved or is down: say so, touch nothing)
        raise TrackingError(f"cannot read run {run_id} in {uri} ({_first_line(err)}); add "
                            "tracking.tracking_uri=<its store>") from None
