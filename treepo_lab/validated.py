"""The configs `treepo_lab.config.validate` has checked, so that nothing after it checks them again.

`validate` marks the config it returns and every section in it (`mark`). Whoever builds from a config (the
run, the preflight, the Trainer, a sampler, a task, the advantages) checks a section itself only when it was
not marked (`is_checked`): a test, benchmark or script that builds one section by hand still gets its errors.
`dataclasses.replace` makes a new, unmarked object: a changed config is checked again. Marks are weak: a
config that is dropped leaves nothing behind.
"""
from __future__ import annotations

import dataclasses
import weakref

_checked: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # id -> the checked object


def mark(cfg) -> None:
    """`cfg` and every dataclass section inside it are checked."""
    _checked[id(cfg)] = cfg
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            mark(value)


def is_checked(cfg) -> bool:
    return _checked.get(id(cfg)) is cfg


def ensure_valid(section) -> None:
    """`section.validate()` unless `validate` checked it already (a section built by hand is checked here)."""
    if not is_checked(section):
        section.validate()
