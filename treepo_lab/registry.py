"""One generic name -> implementation registry for everything pluggable (policies, stop rules, samplers,
estimators, losses, engines).

Names are chosen in configs and checked against the registries in one place (`treepo_lab/config.py`),
before any compute; an unknown name fails with the list of valid names.

Two ways into a registry:
- `register(name)`: the implementation object itself. For modules that are cheap to import (numpy at
  most: the rollout policies, stop rules and samplers).
- `declare(name, "package.module:attr", **info)`: only the name, where its implementation lives and
  the torch-free facts a config check needs (`info`, e.g. an estimator's `needs_tree`). The
  implementation is imported on the first `get(name)`. This is for implementations that need torch
  (estimators, losses) or vLLM (engines): configs can then be checked, and `treepo-lab show` run,
  without importing either. The implementing module marks each object with `@REG.implements(name)`,
  which fails at import time if the name is not declared or its declaration points elsewhere, so a
  declaration and its implementation cannot drift apart (tests/test_layering.py resolves every name).

An entry carries its own facts in `info`, so no other module lists names: `label` (its short code in
the `treepo.strategy` tag), `needs_tree` / `tree` / `needs_entropies` (what the config check enforces
across sections) and `knobs` (name -> `Knob`: the values a config's `params` dict may set for it,
checked in `knobs()`, swept like any key, named in the strategy label when not at their default).
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A user mistake in a configuration value: names the key, the value and what is allowed."""

    def __init__(self, key: str, value, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={value!r} is not allowed: {allowed}")


@dataclass(frozen=True)
class Knob:
    """One setting of a registered entry, set in the config's `params` dict (e.g. `sampler.params.forks`)."""

    default: Any
    allowed: str  # what the error message says is allowed, e.g. "an integer >= 1"
    ok: Callable[[Any], bool]  # True if the value is allowed
    code: str = ""  # its prefix in the strategy label when not at the default ("N" -> "N4"); "": never shown


def int_at_least(lo: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= lo


def number_in(lo: float, hi: float) -> Callable[[Any], bool]:
    """lo < v <= hi."""
    return lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and lo < v <= hi


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}  # resolved implementations
        self._targets: dict[str, str] = {}  # declared name -> "module:attr", resolved on first get
        self._info: dict[str, dict[str, Any]] = {}

    def register(self, name: str, **info) -> Callable[[T], T]:
        """Decorator: `obj` is the implementation of `name` (import-cheap modules only)."""
        def deco(obj: T) -> T:
            if name in self:
                raise KeyError(f"{self.kind} {name!r} registered twice")
            self._items[name], self._info[name] = obj, dict(info)
            try:  # so tests/test_layering.py can check registered and declared entries alike
                obj._registered_as = (self.kind, name)
            except AttributeError:  # an object that takes no attributes (a builtin)
                pass
            return obj

        return deco

    def declare(self, name: str, target: str, **info) -> None:
        """`name` is implemented by `target` ("package.module:attr"), imported on first use."""
        if name in self:
            raise KeyError(f"{self.kind} {name!r} registered twice")
        if ":" not in target:
            raise ValueError(f"{self.kind} {name!r}: target must read 'package.module:attr', got {target!r}")
        self._targets[name], self._info[name] = target, dict(info)

    def implements(self, name: str) -> Callable[[T], T]:
        """Decorator for the object a declaration points at; checks that it is the declared one."""
        def deco(obj: T) -> T:
            target = self._targets.get(name)
            here = f"{obj.__module__}:{obj.__qualname__}"
            if target is None:
                raise KeyError(f"{self.kind} {name!r} is implemented in {here} but not declared")
            if target != here:
                raise KeyError(f"{self.kind} {name!r} is declared as {target} but implemented in {here}")
            try:  # so tests/test_layering.py can check registered and declared entries alike
                obj._registered_as = (self.kind, name)
            except AttributeError:  # an object that takes no attributes (a builtin)
                pass
            return obj

        return deco

    def names(self) -> list[str]:
        return sorted({*self._items, *self._targets})

    def __contains__(self, name: str) -> bool:
        return name in self._items or name in self._targets

    def check(self, name: str, key: str | None = None) -> str:
        """`name` if registered, else ConfigError naming `key` (the config key that chose it)."""
        if name not in self:
            raise ConfigError(key or self.kind, name, f"one of {', '.join(self.names())}")
        return name

    def info(self, name: str, key: str | None = None) -> dict[str, Any]:
        """The torch-free facts given at registration (never imports the implementation)."""
        return self._info[self.check(name, key)]

    def knobs(self, name: str, params: Mapping[str, Any] | None, key: str) -> dict[str, Any]:
        """`params` checked against the knobs `name` was registered with, defaults filled in; `key` is
        the config key of the dict (e.g. "advantage.params"). ConfigError on an unknown knob or value."""
        declared: dict[str, Knob] = self.info(name).get("knobs", {})
        for k, v in (params or {}).items():
            if k not in declared:
                allowed = f"one of {', '.join(declared)}" if declared else "nothing (it has no knobs)"
                raise ConfigError(f"{key}.{k}", v, f"a knob of {self.kind} {name}: {allowed}")
            if not declared[k].ok(v):
                raise ConfigError(f"{key}.{k}", v, f"{declared[k].allowed} ({self.kind} {name})")
        return self.filled(name, params)

    def filled(self, name: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
        """`params` with the defaults of the knobs it leaves out, unchecked: for params `knobs` checked already."""
        return {k: (params or {}).get(k, knob.default) for k, knob in self.info(name).get("knobs", {}).items()}

    def get(self, name: str, key: str | None = None) -> T:
        """The implementation of `name` (importing it on first use for a declared name)."""
        self.check(name, key)
        if name not in self._items:
            module, attr = self._targets[name].split(":")
            obj: Any = importlib.import_module(module)
            for part in attr.split("."):
                obj = getattr(obj, part)
            self._items[name] = obj
        return self._items[name]
