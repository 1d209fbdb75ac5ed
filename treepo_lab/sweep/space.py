"""From a search space to concrete trial configs: Optuna suggestions (conditional parameters included),
the points of a finite space, the composed and validated config of one (point, seed), child run names."""
from __future__ import annotations

import copy
import functools
import math
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from omegaconf import OmegaConf

from treepo_lab.algo.registries import ESTIMATORS
from treepo_lab.config import ExperimentConfig, compose_config, to_object, validate
from treepo_lab.rollout.sampler import SAMPLERS
from treepo_lab.sweep.grammar import Param, override_value
from treepo_lab.sweep.spec import SweepSpec

GRID_LIMIT = 5000  # finite spaces larger than this are validated on their marginals only


def suggest(trial: optuna.Trial, params: list[Param]) -> dict[str, Any]:
    """One point: every active parameter suggested in spec order (conditions refer to earlier keys)."""
    point: dict[str, Any] = {}
    for p in params:
        if not p.active(point):
            continue
        d = p.distribution
        if isinstance(d, CategoricalDistribution):
            point[p.key] = trial.suggest_categorical(p.key, list(d.choices))
        elif isinstance(d, IntDistribution):
            point[p.key] = trial.suggest_int(p.key, d.low, d.high, step=d.step, log=d.log)
        elif isinstance(d, FloatDistribution):
            point[p.key] = trial.suggest_float(p.key, d.low, d.high, step=d.step, log=d.log)
    return point


def grid_points(params: list[Param]) -> list[dict[str, Any]]:
    """Every point of a finite space, a conditional key only where its condition holds; None if the
    space is larger than GRID_LIMIT."""
    points: list[dict[str, Any]] = [{}]
    for p in params:
        nxt = []
        for pt in points:
            nxt += [{**pt, p.key: v} for v in p.values] if p.active(pt) else [pt]
        points = nxt
        if len(points) > GRID_LIMIT:
            return None
    return points


def marginal_points(params: list[Param]) -> list[dict[str, Any]]:
    """Each value of each parameter once (interval ends for continuous ones), the others at a first
    value that keeps it active: what a space too large (or continuous) to enumerate is checked on."""
    base: dict[str, Any] = {}
    for p in params:
        if p.active(base):
            base[p.key] = p.values[0] if p.finite else p.distribution.low
    out = []
    for p in params:
        values = p.values if p.finite else [p.distribution.low, p.distribution.high]
        for v in values:
            pt = {**base, p.key: v}
            for k, allowed in p.when.items():
                pt[k] = allowed[0]
            out.append({q.key: pt[q.key] for q in params if q.key in pt and q.active(pt)})
    return out


def space_size(params: list[Param]) -> float:
    if any(not p.finite for p in params):
        return math.inf
    pts = grid_points(params)
    return len(pts) if pts is not None else math.prod(len(p.values) for p in params)


def trial_config(spec: SweepSpec, point: dict[str, Any], seed: int) -> ExperimentConfig:
    """Compose the (swept or base) registry experiment with the fixed overrides, then set the swept
    values (OmegaConf.update: no quoting of values in override strings) and the seed, and validate."""
    name = str(point.get("experiment", spec.experiment))
    cfg = copy.deepcopy(_composed(name, tuple(spec.overrides)))
    for key, value in point.items():
        if key != "experiment":
            # a key inside a free-form dict (a registered entry's params) is new to the struct config
            parent = OmegaConf.select(cfg, key.rsplit(".", 1)[0]) if "." in key else None
            add = parent is not None and OmegaConf.get_type(parent) is dict
            OmegaConf.update(cfg, key, spec.param(key).decode(value), merge=True, force_add=add)
    cfg.seed = seed
    if spec.nproc_per_trial > 1:  # checked like any trainer.nproc (it must split prompts_per_step)
        cfg.trainer.nproc = spec.nproc_per_trial
    return validate(to_object(cfg))


@functools.lru_cache(maxsize=64)
def _composed(name: str, overrides: tuple[str, ...]):
    """Hydra composition is the slow part of checking a space point by point: once per experiment."""
    return compose_config(name, list(overrides))


def short_key(key: str) -> str:
    """sampler.div_policy -> div, sampler.init_div.kind -> init_div.kind: the run name stays readable."""
    aliases = {"sampler.div_policy": "div", "sampler.branch": "b", "sampler.init_div.kind": "b0",
               "experiment": "", "sampler.shape": "shape", "sampler.fallback_cut": "cut",
               "advantage.estimator": "adv", "advantage.aggregation": "agg"}
    if key in aliases:
        return aliases[key]
    if ".params." in key:  # a registered entry's knob: its own name (sampler.params.forks -> forks)
        return key.rsplit(".", 1)[1]
    parts = key.split(".")
    return ".".join(parts[1:]) if len(parts) > 1 else key


# keys whose values are registered names: a value reads as its entry's strategy label
LABELLED = {"advantage.estimator": ESTIMATORS, "sampler.kind": SAMPLERS, "eval.sampler": SAMPLERS}


def short_value(v: Any, key: str = "") -> str:
    registry = LABELLED.get(key)
    if registry is not None and isinstance(v, str) and v in registry and registry.info(v).get("label"):
        return registry.info(v)["label"]
    if isinstance(v, float):
        return f"{v:.3g}"
    text = override_value(v)
    for long, short in (("_weighted_div", ""), ("logprob", "lp"), ("inverse", "inv")):
        text = text.replace(long, short)
    return text


def run_name(trial_number: int, point: dict[str, Any], seed: int) -> str:
    """e.g. 't07 div=low_prob b0=random s1' (the MLflow run name of one trial and seed)."""
    parts = [f"t{trial_number:02d}"]
    for k, v in point.items():
        sk = short_key(k)
        parts.append(f"{sk}={short_value(v, k)}" if sk else short_value(v, k))
    parts.append(f"s{seed}")
    return " ".join(parts)[:250]
