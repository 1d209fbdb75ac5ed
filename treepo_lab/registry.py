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
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A user mistake in a configuration value: names the key, the value and what is allowed."""

    def __init__(self, key: str, value, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={value!r} is not allowed: {allowed}")


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
            obj._registered_as = (self.kind, name)
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
