"""The Optuna study of a sweep: created once (the spec and tracking URI kept in its user attrs, so any
worker can join with only the study name and storage URL), resumed by name, counted and summarised."""
from __future__ import annotations

import json
import math
from collections import Counter
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from treepo_lab.registry import ConfigError
from treepo_lab.sweep.space import grid_points, units
from treepo_lab.sweep.spec import PRUNERS, SAMPLERS, SweepSpec, parse_spec
from treepo_lab.tags import (ERROR_ATTR, FAIL_REASON_ATTR, FAILURE_WINDOW_ATTR, INTERRUPTED_ATTR,  # noqa: F401
                              OBJECTIVE_STD_ATTR, PARENT_ATTR, RUNS_ATTR, SEED_VALUES_ATTR, SPEC_ATTR, STOP_ATTR,
                              URI_ATTR)

# what must stay the same for a re-run to resume a study rather than start a different one (a field a spec
# leaves out reads None, so specs written before a field existed keep resuming their studies)
IDENTITY = ("experiment", "overrides", "cli_overrides", "search_space", "grid", "blocks", "objectives", "seeds",
            "order", "order_seed")


def make_sampler(spec: SweepSpec, worker_index: int = 0) -> optuna.samplers.BaseSampler:
    kwargs = {k: v for k, v in spec.sampler.items() if k != "name"}
    if kwargs.get("seed") is not None:  # parallel workers with one seed would all propose the same point
        kwargs["seed"] = int(kwargs["seed"]) + worker_index
    return SAMPLERS[spec.sampler["name"]](**kwargs)


def make_pruner(spec: SweepSpec) -> optuna.pruners.BasePruner:
    return PRUNERS[spec.pruner["name"]](**{k: v for k, v in spec.pruner.items() if k != "name"})


def _identity(raw: dict) -> str:
    return json.dumps({k: raw.get(k) for k in IDENTITY}, sort_keys=True, default=str)


def existing_study(spec_name: str, storage) -> optuna.Study | None:
    try:
        return optuna.load_study(study_name=spec_name, storage=storage)
    except KeyError:
        return None


def check_resumable(study: optuna.Study, spec: SweepSpec) -> None:
    old = study.user_attrs.get(SPEC_ATTR)
    if old is not None and _identity(old) != _identity(spec.source):
        changed = [k for k in IDENTITY if json.dumps(old.get(k), sort_keys=True, default=str)
                   != json.dumps(spec.source.get(k), sort_keys=True, default=str)]
        raise ConfigError("name", spec.name,
                          f"a new study name (sweep.name=...): study {spec.name!r} exists with a different "
                          f"{', '.join(changed)}; re-running the same spec resumes it")


def create_study(spec: SweepSpec, storage, tracking_uri: str) -> optuna.Study:
    study = optuna.create_study(study_name=spec.name, storage=storage,
                                directions=[o.direction for o in spec.objectives],
                                sampler=make_sampler(spec), pruner=make_pruner(spec))
    study.set_user_attr(SPEC_ATTR, spec.source)
    study.set_user_attr(URI_ATTR, tracking_uri)
    if spec.grid:  # every point (unit sweeps: every (point, seed), seed a param) once, in order; workers only pop these
        for params in units(spec) if spec.per_unit else grid_points(spec.params):
            study.enqueue_trial(params)
    return study


def load_for_worker(name: str, storage, worker_index: int = 0) -> tuple[optuna.Study, SweepSpec]:
    probe = optuna.load_study(study_name=name, storage=storage)
    spec = parse_spec(probe.user_attrs[SPEC_ATTR])
    study = optuna.load_study(study_name=name, storage=storage, sampler=make_sampler(spec, worker_index),
                              pruner=make_pruner(spec))
    return study, spec


def retried(trials: list[FrozenTrial]) -> set[int]:
    """Numbers of failed trials that a later trial reruns."""
    return {t.system_attrs["retry_history"][-1] for t in trials if t.system_attrs.get("retry_history")}


def work_left(spec: SweepSpec, trials: list[FrozenTrial]) -> bool:
    """A WAITING trial (a grid point, a retry) or, for a sampled space, fewer than n_trials slots used
    (a slot is any trial except a failure that a retry replaces)."""
    if any(t.state == TrialState.WAITING for t in trials):
        return True
    if spec.grid:
        return False
    return len(trials) - len(retried(trials)) < spec.n_trials


def failed_at_start(spec: SweepSpec, trials: list[FrozenTrial], since: int = 0) -> str | None:
    """The first error when the first `failure_limit` finished trials (numbered >= since: a re-run after a
    stop tries again) all failed by raising (a spec that cannot work); interrupted trials and dead workers
    do not count."""
    done = [t for t in sorted(trials, key=lambda t: t.number) if t.state.is_finished() and t.number >= since
            and not t.user_attrs.get(INTERRUPTED_ATTR) and not t.user_attrs.get(FAIL_REASON_ATTR)]
    first = done[: spec.failure_limit]
    if len(first) == spec.failure_limit and all(t.state == TrialState.FAIL for t in first):
        return first[0].user_attrs.get(ERROR_ATTR, "unknown error")
    return None


def counts(trials: list[FrozenTrial]) -> Counter:
    return Counter(t.state.name for t in trials)


def best(study: optuna.Study, spec: SweepSpec) -> list[FrozenTrial]:
    """The best trial (single objective) or the Pareto front; [] before any trial completes."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.values and all(math.isfinite(v) for v in t.values)]
    if not done:
        return []
    if spec.multi_objective:
        return list(study.best_trials)
    return [study.best_trial]


def trial_summary(t: FrozenTrial, spec: SweepSpec) -> dict[str, Any]:
    return {"trial": t.number, "state": t.state.name, "params": t.params,
            "values": dict(zip([o.metric for o in spec.objectives], t.values or [])),
            "spread": t.user_attrs.get(OBJECTIVE_STD_ATTR), "seeds": t.user_attrs.get(SEED_VALUES_ATTR)}
