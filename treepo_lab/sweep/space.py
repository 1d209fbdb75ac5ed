"""From a search space to concrete trial configs: Optuna suggestions (conditional parameters included),
the points of a finite space, the units (point, seed) of a unit sweep, the composed and validated config of
one (point, seed), child run names."""
from __future__ import annotations

import copy
import functools
import json
import math
import random
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from omegaconf import OmegaConf

from treepo_lab.algo.registries import ESTIMATORS
from treepo_lab.config import ExperimentConfig, compose_config, to_object, validate
from treepo_lab.registry import ConfigError
from treepo_lab.rollout.sampler import SAMPLERS
from treepo_lab.sweep.grammar import Param, override_value
from treepo_lab.sweep.spec import SEED_PARAM, SweepSpec

GRID_LIMIT = 5000  # finite spaces larger than this are validated on their marginals only


def _suggest_one(trial: optuna.Trial, p: Param) -> Any:
    d = p.distribution
    if isinstance(d, CategoricalDistribution):
        return trial.suggest_categorical(p.key, list(d.choices))
    if isinstance(d, IntDistribution):
        return trial.suggest_int(p.key, d.low, d.high, step=d.step, log=d.log)
    return trial.suggest_float(p.key, d.low, d.high, step=d.step, log=d.log)


def suggest(trial: optuna.Trial, params: list[Param]) -> dict[str, Any]:
    """One point: every active parameter suggested in spec order (conditions refer to earlier keys)."""
    point: dict[str, Any] = {}
    for p in params:
        if p.active(point) and isinstance(p.distribution, (CategoricalDistribution, IntDistribution, FloatDistribution)):
            point[p.key] = _suggest_one(trial, p)
    return point


def suggest_unit(trial: optuna.Trial, spec: SweepSpec) -> tuple[dict[str, Any], int]:
    """A unit trial's (point, seed). It suggests exactly the keys enqueued for it (its block's; `when:` was
    applied when the units were listed), each with the key's one merged distribution, so Optuna hands back the
    enqueued values. The keys come from the enqueued params (system attr fixed_params, which a retry copies)
    and from the params already stored (a retry's): either alone would miss a case."""
    frozen = trial.storage.get_trial(trial._trial_id)
    keys = set(frozen.system_attrs.get("fixed_params") or {}) | set(frozen.params)
    if SEED_PARAM not in keys:
        raise RuntimeError(f"trial {trial.number} of a unit sweep was not enqueued with a seed (params: {sorted(keys)})")
    point = {p.key: _suggest_one(trial, p) for p in spec.params if p.key in keys}
    return point, int(trial.suggest_categorical(SEED_PARAM, spec.unit_seeds))


def units(spec: SweepSpec) -> list[dict[str, Any]]:
    """The trials of a unit sweep as enqueued: each block's grid points x its seeds, {key: value, ..., seed: s};
    under order: shuffled each block's units shuffled by one random.Random(order_seed) (the same spec gives the
    same order). Blocks run in the order written, so a spec lists its most wanted block first, and the arms a
    finding compares (one block) share the machine's load alike."""
    out, seen = [], {}
    rng = random.Random(spec.order_seed)
    for i, block in enumerate(spec.blocks):
        where = f"blocks[{i}]" if "blocks" in spec.source else "grid"
        points = grid_points(block.params)
        if points is None:
            raise ConfigError(f"{where}", f"> {GRID_LIMIT} points", f"at most {GRID_LIMIT} grid points per block")
        mine = []
        for point in points:
            for seed in block.seeds:
                unit = {**point, SEED_PARAM: seed}
                ident = json.dumps(unit, sort_keys=True, default=str)
                if ident in seen:  # it would run twice and count twice in every comparison
                    raise ConfigError(where, point_text(unit), f"(point, seed) units that no other block has "
                                                               f"(blocks[{seen[ident]}] has it too)")
                seen[ident] = i
                mine.append(unit)
        if spec.order == "shuffled":
            rng.shuffle(mine)
        out += mine
    return out


def split_unit(unit: dict[str, Any]) -> tuple[dict[str, Any], int]:
    return {k: v for k, v in unit.items() if k != SEED_PARAM}, int(unit[SEED_PARAM])


def point_text(point: dict) -> str:
    return " ".join(f"{k}={override_value(v)}" for k, v in point.items()) or "(the fixed overrides)"


def checked_units(spec: SweepSpec) -> list[tuple[dict[str, Any], int]]:
    """(point, seed) pairs whose configs are composed and checked before a sweep starts: every unit of a unit
    sweep (every point with its first seed beyond GRID_LIMIT units: a seed only sets cfg.seed); else every point
    of a finite space (each value of a larger or continuous one) with the first seed."""
    if spec.per_unit:
        pairs = [split_unit(u) for u in units(spec)]
        if len(pairs) <= GRID_LIMIT:
            return pairs
        first: dict[str, tuple[dict[str, Any], int]] = {}
        for point, seed in pairs:
            first.setdefault(json.dumps(point, sort_keys=True, default=str), (point, seed))
        return list(first.values())
    if not spec.params:
        return [({}, spec.seeds[0])]
    points = None if any(not p.finite for p in spec.params) else grid_points(spec.params)
    return [(pt, spec.seeds[0]) for pt in (points if points is not None else marginal_points(spec.params))]


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
