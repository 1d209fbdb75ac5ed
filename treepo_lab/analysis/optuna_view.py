"""Optuna's side of a sweep: the study named by the parent run's tags, its optimisation history and
parameter importances (Optuna's own fANOVA evaluator), drawn in the report's style."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import optuna
from mlflow.entities import Run
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from treepo_lab.analysis.style import PALETTE, figure, save
from treepo_lab.tags import STORAGE_TAG, STUDY_TAG



def open_study(parent: Run | None) -> tuple[optuna.Study | None, str]:
    """(study, '') or (None, why not)."""
    if parent is None:
        return None, "no sweep parent run: Optuna's history and importances are for sweeps"
    tags = parent.data.tags
    storage, name = tags.get(STORAGE_TAG), tags.get(STUDY_TAG)
    if not storage or not name:
        return None, f"the parent run has no {STORAGE_TAG} / {STUDY_TAG} tags naming its Optuna study"
    try:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        return optuna.load_study(study_name=name, storage=_storage(storage)), ""
    except Exception as e:  # noqa: BLE001 - moved or deleted storage: the rest of the report still stands
        return None, f"Optuna study {name!r} could not be opened from {storage}: {type(e).__name__}: {e}"


def _storage(url: str):
    """An RDB URL as is; a path (Optuna's journal file) through JournalStorage."""
    if "://" in url and not url.startswith("file://"):
        return url
    path = url[len("file://"):] if url.startswith("file://") else url
    return JournalStorage(JournalFileBackend(path))


def _objective(study: optuna.Study):
    """The first objective (the study's only one, or the first of a multi-objective study)."""
    multi = len(study.directions) > 1
    return (lambda t: t.values[0]) if multi else None, study.directions[0], multi


def history(study: optuna.Study, out: Path, notes: list[str]) -> list[Path]:
    trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and t.values]
    fig, axes = figure(1, 2.4)
    ax = axes[0, 0]
    target, direction, multi = _objective(study)
    vals = np.array([t.values[0] for t in trials], dtype=float)
    nums = [t.number for t in trials]
    if len(vals):
        better = np.maximum.accumulate if direction == optuna.study.StudyDirection.MAXIMIZE else np.minimum.accumulate
        ax.scatter(nums, vals, color=PALETTE[0], s=10, label="trial")
        ax.step(nums, better(vals), where="post", color=PALETTE[3], label="best so far")
        ax.legend()
    else:
        notes.append("Optuna history: no completed trial yet")
    others = [t for t in study.trials if t.state != optuna.trial.TrialState.COMPLETE]
    ax.set_xlabel("trial")
    ax.set_ylabel("objective" + (" 1" if multi else ""))
    ax.set_title(f"{study.study_name}: {len(trials)} complete, {len(others)} other")
    return save(fig, out / "optuna_history")


def importances(study: optuna.Study, out: Path, notes: list[str]) -> list[Path]:
    target, _, _ = _objective(study)
    try:
        logging.getLogger("optuna").setLevel(logging.ERROR)
        imp = optuna.importance.get_param_importances(study, target=target)
    except (RuntimeError, ValueError) as e:  # too few trials, or a single-valued space
        notes.append(f"parameter importances not computed: {e}")
        return []
    if not imp:
        notes.append("parameter importances: the study has no varying parameters")
        return []
    fig, axes = figure(1, 0.6 + 0.25 * len(imp))
    ax = axes[0, 0]
    names = list(imp)[::-1]
    ax.barh(names, [imp[n] for n in names], color=PALETTE[0])
    ax.set_xlabel("importance (fANOVA)")
    ax.grid(axis="y", visible=False)
    return save(fig, out / "optuna_importances")
