"""One swept key's values in hydra-optuna-sweeper's grammar, parsed by Hydra's own override parser.

    choice(a, b, c)               -> categorical (finite)
    range(start, stop[, step])    -> ints (or floats) start, start+step, ... < stop, as Hydra's range (finite)
    interval(lo, hi)              -> a float in [lo, hi]; int(interval(lo, hi)) an int
    tag(log, interval(lo, hi))    -> the same on a log scale
    a YAML list [a, b, c]         -> the same as choice(a, b, c)

A range keeps Hydra's meaning (stop excluded, like Python's range) so a grid and a Hydra multirun of the
same string visit the same values; it becomes an Optuna IntDistribution up to the last value below stop.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep, Transformer
from hydra.errors import HydraException
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from treepo_lab.registry import ConfigError

_PARSER = OverridesParser.create()
PRIMITIVE = (str, int, float, bool)


@dataclass
class Param:
    """A swept key: its Optuna distribution, its finite values (None for a continuous one) and, for a
    conditional parameter, the values of other swept keys it is active under."""

    key: str
    text: str  # as written in the spec
    distribution: BaseDistribution
    values: list[Any] | None  # every value of a finite parameter, in order
    when: dict[str, list[Any]] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)  # Hydra text -> the list/dict value it stands for

    def decode(self, value: Any) -> Any:
        """The config value of a stored (Optuna) value."""
        return self.raw.get(value, value) if isinstance(value, str) else value

    @property
    def finite(self) -> bool:
        return self.values is not None

    def active(self, point: dict[str, Any]) -> bool:
        return all(point.get(k) in allowed for k, allowed in self.when.items())


def categorical_value(v: Any) -> Any:
    """Optuna stores categorical primitives; a list or dict choice is kept as its Hydra text."""
    return v if v is None or isinstance(v, PRIMITIVE) else Transformer.encode(v)


def parse_values(key: str, spec: Any) -> Param:
    """`spec` is the grammar string or a YAML list; raises ConfigError naming the key and the value."""
    if isinstance(spec, (list, tuple)):
        if not spec:
            raise ConfigError(f"search_space.{key}", spec, "a non-empty list of values")
        return _choice(key, str(spec), list(spec))
    text = str(spec).strip()
    try:
        override = _PARSER.parse_override(f"{key}={text}")
    except HydraException as err:
        why = str(err).strip().splitlines()[0]
        if "empty choice" in why:
            raise ConfigError(f"search_space.{key}", text, "a choice(...) of at least one value") from None
        raise ConfigError(f"search_space.{key}", text,
                          f"choice(...), range(start, stop[, step]), interval(lo, hi) or tag(log, interval(lo, hi)) "
                          f"({why})") from None
    value = override.value()
    if isinstance(value, ChoiceSweep):
        return _choice(key, text, list(override.sweep_iterator()))
    if isinstance(value, RangeSweep):
        return _range(key, text, value, list(override.sweep_iterator()))
    if isinstance(value, IntervalSweep):
        return _interval(key, text, value)
    raise ConfigError(f"search_space.{key}", text,
                      "a sweep: choice(...), range(...), interval(...) (a single value belongs in overrides)")


def _choice(key: str, text: str, items: list) -> Param:
    vals = [categorical_value(v) for v in items]
    if len(set(map(repr, vals))) != len(vals):
        raise ConfigError(f"search_space.{key}", text, "a choice without repeated values")
    raw = {categorical_value(v): v for v in items if not (v is None or isinstance(v, PRIMITIVE))}
    return Param(key, text, CategoricalDistribution(vals), vals, raw=raw)


def _range(key: str, text: str, r: RangeSweep, vals: list) -> Param:
    if r.shuffle:
        raise ConfigError(f"search_space.{key}", text, "a range without shuffle (the sampler picks the order)")
    if not vals:
        raise ConfigError(f"search_space.{key}", text,
                          f"range(start, stop, step) with at least one value: start={r.start} stop={r.stop} "
                          f"step={r.step} is empty (reversed?)")
    if all(isinstance(v, int) for v in (r.start, r.stop, r.step)):
        dist = IntDistribution(vals[0], vals[-1], step=abs(int(r.step))) if r.step > 0 else CategoricalDistribution(vals)
        return Param(key, text, dist, vals)
    vals = [round(float(v), 12) for v in vals]  # 0.1 + 0.2 noise would make grid points unequal
    return Param(key, text, CategoricalDistribution(vals), vals)


def _interval(key: str, text: str, iv: IntervalSweep) -> Param:
    lo, hi, log = iv.start, iv.end, "log" in iv.tags
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo >= hi:
        raise ConfigError(f"search_space.{key}", text, f"interval(lo, hi) with lo < hi (got lo={lo}, hi={hi})")
    if log and lo <= 0:
        raise ConfigError(f"search_space.{key}", text, f"tag(log, interval(lo, hi)) with lo > 0 (got lo={lo})")
    unknown = set(iv.tags) - {"log"}
    if unknown:
        raise ConfigError(f"search_space.{key}", text, f"the tag log only (got {', '.join(sorted(unknown))})")
    if isinstance(lo, int) and isinstance(hi, int):
        return Param(key, text, IntDistribution(lo, hi, log=log), None)
    return Param(key, text, FloatDistribution(float(lo), float(hi), log=log), None)


def override_value(v: Any) -> str:
    """A value as Hydra override text (used for run names and the printed commands, not for composing)."""
    return v if isinstance(v, str) else str(Transformer.encode(v))
