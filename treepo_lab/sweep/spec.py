"""A sweep spec (sweeps/<name>.yaml): base experiment, fixed overrides, search space, objectives, seeds,
Optuna sampler and pruner, budget. `load_spec` parses and checks its own fields; the checks against the
experiment config (keys, values, metrics) are in `validate.py`.

    name: branching                    # Optuna study and MLflow experiment (default: the file's stem)
    description: "..."                 # the MLflow experiment's description
    experiment: treepo_fixed_init      # base registry experiment (may itself be swept)
    overrides: {trainer.steps: 40}     # fixed for every trial (Hydra override values)
    search_space:                      # or `grid:` (the same, every point once, in order), or `blocks:`
      sampler.div_policy: choice(fixed_avg, logprob_weighted_div)
      sampler.div_temperature:         # a conditional parameter
        values: tag(log, interval(0.5, 4.0))
        when: {sampler.div_policy: [logprob_weighted_div]}
    objectives: [{metric: eval/accuracy, direction: maximize}]
    seeds: [0, 1]                      # the objective is the mean over seeds
    order: grid                        # grid sweeps: grid (a trial = a point, its seeds back to back) | shuffled
    order_seed: 0                      # seeds the shuffle of order: shuffled
    sampler: {name: tpe, seed: 0}      # tpe | random | grid | gp | nsga2, plus the Optuna sampler's arguments
    pruner: {name: median}             # median | successive_halving | hyperband | percentile | threshold | none (+ arguments)
    n_trials: 16
    timeout_s: null                    # stop asking for new trials after this many seconds
    failure_limit: 3                   # the first N trials all failed: the spec cannot work, stop

Units. With `order: shuffled` (grid sweeps) each (grid point, seed) is one trial: the seed is its parameter `seed`,
its objective that seed's value; the units are enqueued shuffled by random.Random(order_seed), so the arms share
the machine's load alike. `blocks:` (instead of `grid:`) gives groups of arms their own seeds and keys: the units
are each block's points x its seeds, the blocks in the order written, each shuffled (`order: grid` written out:
spec order). No unit in two blocks.

    blocks:
      - grid:                          # headline arms: 10 seeds, two warm starts
          experiment: choice(grpo, treepo_fixed_init)
          warmstart.seed: choice(0, 1)
        seeds: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
      - grid: {experiment: [seg_8x16, no_fallback]}   # ablations: the top-level seeds
    seeds: [0, 1, 2, 3, 4]
    order_seed: 0
"""
from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.distributions import CategoricalDistribution

from treepo_lab.registry import ConfigError
from treepo_lab.sweep.grammar import Param, categorical_value, override_value, parse_values

SAMPLERS = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler,
            "grid": optuna.samplers.RandomSampler,  # grid points are enqueued; the sampler never picks
            "gp": optuna.samplers.GPSampler, "nsga2": optuna.samplers.NSGAIISampler}
PRUNERS = {"median": optuna.pruners.MedianPruner, "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
           "hyperband": optuna.pruners.HyperbandPruner, "percentile": optuna.pruners.PercentilePruner,
           "threshold": optuna.pruners.ThresholdPruner, "none": optuna.pruners.NopPruner}
DIRECTIONS = ("maximize", "minimize")
TOP_KEYS = ("name", "description", "experiment", "overrides", "search_space", "grid", "blocks", "objectives", "seeds",
            "order", "order_seed", "sampler", "pruner", "n_trials", "timeout_s", "failure_limit", "heartbeat_s",
            "max_retry", "nproc_per_trial")
ORDERS = ("grid", "shuffled")
SEED_PARAM = "seed"  # a unit trial's seed, an Optuna parameter beside the swept keys (never a config override)


@dataclass
class Objective:
    metric: str
    direction: str  # maximize | minimize


@dataclass
class Block:
    """A group of grid points and the seeds each of them runs (one trial per point and seed)."""

    params: list[Param]
    seeds: list[int]


@dataclass
class SweepSpec:
    name: str
    experiment: str
    params: list[Param]
    objectives: list[Objective]
    seeds: list[int]
    description: str = ""
    overrides: list[str] = field(default_factory=list)  # Hydra override strings, spec first then command line
    sampler: dict[str, Any] = field(default_factory=lambda: {"name": "tpe"})
    pruner: dict[str, Any] = field(default_factory=lambda: {"name": "none"})
    n_trials: int = 20
    timeout_s: float | None = None
    failure_limit: int = 3
    heartbeat_s: int = 30  # RDB storages: a trial without a heartbeat for 2x this is failed and retried
    max_retry: int = 3  # reruns of a trial whose worker died
    # ranks of each trial's training run (trainer.nproc): a worker launches each seed's run as one torchrun
    # group of this many processes; --workers counts trials, so a machine runs workers x this many processes
    nproc_per_trial: int = 1
    source: dict[str, Any] = field(default_factory=dict)  # the spec as written (+ command-line changes)
    order: str = "grid"  # grid | shuffled (ORDERS)
    order_seed: int = 0
    # one trial per (point, seed): the spec's blocks, or its grid as one block under order: shuffled; [] when a
    # trial is a point with all its seeds. `params` then holds one merged Param per key (see _merge).
    blocks: list[Block] = field(default_factory=list)

    @property
    def grid(self) -> bool:
        return self.sampler["name"] == "grid"

    @property
    def per_unit(self) -> bool:
        return bool(self.blocks)

    @property
    def unit_seeds(self) -> list[int]:
        """Every seed of any block, first-seen order: the choices of the `seed` parameter."""
        return list(dict.fromkeys(s for b in self.blocks for s in b.seeds))

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    def param(self, key: str) -> Param:
        return next(p for p in self.params if p.key == key)


def _bad(key: str, value: Any, allowed: str):
    raise ConfigError(key, value, allowed)


def _did_you_mean(word: str, options) -> str:
    close = difflib.get_close_matches(word, list(options), n=3, cutoff=0.5)
    return f"; did you mean {' or '.join(close)}?" if close else ""


def read_spec_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sweep spec {str(path)!r} not found (specs live in sweeps/*.yaml)")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        _bad("spec", type(raw).__name__, f"a YAML mapping in {path}")
    raw.setdefault("name", path.stem)
    return raw


def apply_cli(raw: dict[str, Any], args: list[str]) -> dict[str, Any]:
    """`sweep.<field>=value` changes a spec field (sweep.n_trials=4); any other key=value is a config
    override for every trial (trainer.steps=30)."""
    raw = dict(raw)
    extra = []
    for a in args:
        if "=" not in a:
            _bad("override", a, "key=value (a config key, or sweep.<field> for a spec field)")
        key, value = a.split("=", 1)
        if key.startswith("sweep."):
            name = key[len("sweep."):]
            if name not in TOP_KEYS:
                _bad(key, value, f"sweep.<one of {', '.join(TOP_KEYS)}>{_did_you_mean(name, TOP_KEYS)}")
            raw[name] = yaml.safe_load(value)
        else:
            extra.append(a)
    if extra:
        raw["cli_overrides"] = extra
    return raw


def _overrides(raw: Any) -> list[str]:
    if raw is None:
        return []
    if isinstance(raw, dict):
        return [f"{k}={override_value(categorical_value(v)) if not isinstance(v, str) else v}" for k, v in raw.items()]
    if isinstance(raw, list) and all(isinstance(x, str) and "=" in x for x in raw):
        return list(raw)
    _bad("overrides", raw, "a mapping {key: value} or a list of key=value strings")


def _params(raw: Any, where: str) -> list[Param]:
    if not isinstance(raw, dict) or not raw:
        _bad(where, raw, "a non-empty mapping {config key: choice(...) | range(...) | interval(...) | [values]}")
    params = []
    for key, entry in raw.items():
        if key == SEED_PARAM:
            _bad(where, key, "a config key other than seed (list the seeds under seeds: instead)")
        when = {}
        if isinstance(entry, dict):
            unknown = set(entry) - {"values", "when"}
            if unknown or "values" not in entry:
                _bad(f"{where}.{key}", entry, "a grammar string, a list, or {values: ..., when: {key: [values]}}")
            when = entry.get("when") or {}
            entry = entry["values"]
        p = parse_values(str(key), entry)
        if not isinstance(when, dict):
            _bad(f"{where}.{key}.when", when, "a mapping {swept key: value or [values]}")
        for ck, cv in when.items():
            earlier = {q.key: q for q in params}
            if ck not in earlier:
                _bad(f"{where}.{key}.when", ck, f"a swept key listed before {key} (one of {', '.join(earlier) or 'none'})")
            allowed = [categorical_value(v) for v in (cv if isinstance(cv, list) else [cv])]
            cond = earlier[ck]
            missing = [v for v in allowed if cond.finite and v not in cond.values]
            if missing or not allowed:
                _bad(f"{where}.{key}.when.{ck}", cv, f"values of {ck}: {cond.values}")
            p.when[ck] = allowed
        params.append(p)
    return params


def _objectives(raw: Any) -> list[Objective]:
    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        _bad("objectives", raw, "a list of {metric: <name>, direction: maximize|minimize}")
    out = []
    for i, o in enumerate(raw):
        if not isinstance(o, dict) or set(o) - {"metric", "direction"} or "metric" not in o:
            _bad(f"objectives[{i}]", o, "{metric: <name>, direction: maximize|minimize}")
        direction = str(o.get("direction", "maximize"))
        if direction not in DIRECTIONS:
            _bad(f"objectives[{i}].direction", direction, "maximize or minimize")
        out.append(Objective(str(o["metric"]), direction))
    if len({o.metric for o in out}) != len(out):
        _bad("objectives", [o.metric for o in out], "distinct metrics")
    return out


def _seeds(raw: Any, where: str = "seeds") -> list[int]:
    if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 1:
        return list(range(raw))
    if isinstance(raw, list) and raw and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in raw) \
            and len(set(raw)) == len(raw):
        return list(raw)
    _bad(where, raw, "a count >= 1 or a list of distinct integers >= 0")


def _finite(params: list[Param], where: str) -> None:
    continuous = [p for p in params if not p.finite]
    if continuous:
        _bad(f"{where}.{continuous[0].key}", continuous[0].text,
             "a finite choice(...) or range(...) in a grid (interval has no grid points)")


def _blocks(raw: Any, seeds: list[int]) -> list[Block]:
    if not isinstance(raw, list) or not raw:
        _bad("blocks", raw, "a non-empty list of {grid: {key: choice(...) ...}, seeds: [...]}")
    out = []
    for i, b in enumerate(raw):
        if not isinstance(b, dict) or set(b) - {"grid", "seeds"} or "grid" not in b:
            _bad(f"blocks[{i}]", b, "a mapping {grid: {key: choice(...) ...}, seeds: [...]} (seeds optional: the "
                                    "top-level seeds)")
        params = _params(b["grid"], f"blocks[{i}].grid")
        _finite(params, f"blocks[{i}].grid")
        out.append(Block(params, _seeds(b["seeds"], f"blocks[{i}].seeds") if "seeds" in b else seeds))
    return out


def _merge(blocks: list[Block]) -> list[Param]:
    """One Param per key over all blocks, keys in first-seen order. Optuna refuses a categorical parameter whose
    choices change between the trials of a study, so a key whose blocks give it different values gets one
    categorical of the union of them (each trial only suggests its own enqueued value)."""
    by_key: dict[str, list[Param]] = {}
    for b in blocks:
        for p in b.params:
            by_key.setdefault(p.key, []).append(p)
    out = []
    for key, ps in by_key.items():
        if len(ps) == 1:
            out.append(ps[0])
            continue
        values = list(dict.fromkeys(v for p in ps for v in p.values))
        same = all(p.distribution == ps[0].distribution for p in ps)
        out.append(Param(key, " | ".join(dict.fromkeys(p.text for p in ps)),
                         ps[0].distribution if same else CategoricalDistribution(values), values,
                         raw={k: v for p in ps for k, v in p.raw.items()}))
    return out


def _order(raw: dict) -> tuple[str, int]:
    # blocks are shuffled unless `order: grid` says otherwise (then the units stay in block order)
    order, order_seed = raw.get("order", "shuffled" if "blocks" in raw else "grid"), raw.get("order_seed", 0)
    if order not in ORDERS:
        _bad("order", order, "grid (a trial is a grid point, its seeds back to back) or shuffled (one per (point, seed))")
    if order == "shuffled" and "search_space" in raw:
        _bad("order", order, "grid (or none) with search_space: (the sampler picks); shuffled needs grid: or blocks:")
    if isinstance(order_seed, bool) or not isinstance(order_seed, int):
        _bad("order_seed", order_seed, "an integer (it seeds the shuffle of order: shuffled)")
    return order, order_seed


def _component(raw: Any, key: str, table: dict, default: str) -> dict[str, Any]:
    raw = {"name": raw} if isinstance(raw, str) else dict(raw or {"name": default})
    name = str(raw.get("name", default))
    if name not in table:
        _bad(f"{key}.name", name, f"one of {', '.join(table)}{_did_you_mean(name, table)}")
    accepted = set(inspect.signature(table[name]).parameters) - {"self"}
    for arg in set(raw) - {"name"}:
        if name == "grid" or arg not in accepted:
            _bad(f"{key}.{arg}", raw[arg],
                 f"an argument of optuna's {table[name].__name__}: {', '.join(sorted(accepted)) if name != 'grid' else 'none'}"
                 f"{_did_you_mean(arg, accepted)}")
    return {**raw, "name": name}


def _number(raw: dict, key: str, default, kind=int, lo=1, none_ok=False):
    v = raw.get(key, default)
    if v is None and none_ok:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float) if kind is float else int) or v < lo:
        _bad(key, v, f"{'null or ' if none_ok else ''}{'an integer' if kind is int else 'a number'} >= {lo}")
    return kind(v)


def parse_spec(raw: dict[str, Any]) -> SweepSpec:
    unknown = sorted(set(raw) - set(TOP_KEYS) - {"cli_overrides"})
    if unknown:
        _bad(unknown[0], raw[unknown[0]], f"a sweep spec field: {', '.join(TOP_KEYS)}{_did_you_mean(unknown[0], TOP_KEYS)}")
    name = str(raw.get("name") or "")
    if not name or any(c in name for c in "/\\ ") or len(name) > 100:
        _bad("name", name, "a non-empty name without spaces or slashes (<= 100 characters)")
    spaces = [k for k in ("grid", "search_space", "blocks") if k in raw]
    if len(spaces) != 1:
        _bad(spaces[-1] if spaces else "search_space", " and ".join(spaces) or None,
             "exactly one of search_space: (Optuna samples it), grid: (every point once) or blocks: (groups of "
             "grid points, each with its own seeds)")
    gridded = "search_space" not in raw
    sampler = _component(raw.get("sampler"), "sampler", SAMPLERS, "grid" if gridded else "tpe")
    if gridded and sampler["name"] != "grid":
        _bad("sampler.name", sampler["name"], f"grid (or leave sampler out) with a {spaces[0]}: section")
    order, order_seed = _order(raw)
    seeds = _seeds(raw.get("seeds", [0]))
    if "blocks" in raw:
        blocks = _blocks(raw["blocks"], seeds)
        params = _merge(blocks)
    else:
        params = _params(raw.get("grid", raw.get("search_space")), "grid" if "grid" in raw else "search_space")
        blocks = [Block(params, seeds)] if order == "shuffled" else []
    experiment = str(raw.get("experiment") or "default")
    objectives = _objectives(raw.get("objectives", [{"metric": "eval/accuracy", "direction": "maximize"}]))
    pruner = _component(raw.get("pruner"), "pruner", PRUNERS, "none")
    if len(objectives) > 1 and pruner["name"] != "none":
        _bad("pruner.name", pruner["name"], "none for a multi-objective study (Optuna prunes single objectives only)")
    if sampler["name"] == "grid":
        _finite(params, "grid")
    spec = SweepSpec(
        name=name, experiment=experiment, params=params, objectives=objectives,
        seeds=seeds, description=str(raw.get("description") or ""),
        overrides=_overrides(raw.get("overrides")) + list(raw.get("cli_overrides", [])),
        sampler=sampler, pruner=pruner,
        n_trials=_number(raw, "n_trials", 20, none_ok=sampler["name"] == "grid") or 0,
        timeout_s=_number(raw, "timeout_s", None, float, 1, none_ok=True),
        failure_limit=_number(raw, "failure_limit", 3),
        heartbeat_s=_number(raw, "heartbeat_s", 30), max_retry=_number(raw, "max_retry", 3, lo=0),
        nproc_per_trial=_number(raw, "nproc_per_trial", 1), source=raw,
        order=order, order_seed=order_seed, blocks=blocks,
    )
    overridden = {o.split("=", 1)[0].lstrip("+~") for o in spec.overrides}
    both = [p.key for p in params if p.key in overridden]
    if both:
        _bad(both[0], "fixed and swept", "either a fixed override or a swept key, not both")
    return spec


def load_spec(path: str | Path, args: list[str] | None = None) -> SweepSpec:
    return parse_spec(apply_cli(read_spec_file(path), list(args or [])))
