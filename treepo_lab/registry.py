"""One generic name -> object registry for everything pluggable (policies, estimators, losses, ...).

Names are chosen in configs; an unknown name fails at config time with the list of valid names.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A user mistake in a configuration value: names the key, the value and what is allowed."""

    def __init__(self, key: str, value, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={value!r} is not allowed: {allowed}")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise KeyError(f"{self.kind} {name!r} registered twice")
            self._items[name] = obj
            return obj

        return deco

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def get(self, name: str, key: str | None = None) -> T:
        """Look up `name`; `key` is the config key that chose it (for the error message)."""
        if name not in self._items:
            raise ConfigError(key or self.kind, name, f"one of {', '.join(self.names())}")
        return self._items[name]
