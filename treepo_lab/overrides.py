"""Keys unknown to the config schema are refused, with a did-you-mean (torch-free, no treepo_lab imports
beyond the registry: treepo_lab/config.py calls it with its root dataclass).

Hydra accepts `+sampler.widht=8` (it adds a key nothing reads: the run silently ignores it) and answers
`sampler.widht=8` with "To append to your config use +sampler.widht=8", exactly the wrong advice. Every
override key is checked against the dataclass fields before Hydra sees it; free-form mappings
(`tracking.tags.owner=alice`) take any key below them.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Iterator, Mapping

from treepo_lab.registry import ConfigError

_ANY = object()  # below a mapping (or Any): every key is allowed


def _unwrap(tp):
    """Optional[X] / X | None -> X."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return tp


def _child(tp, name: str):
    """The type of field `name` of `tp`; _ANY below a mapping; None if `tp` has no such field."""
    tp = _unwrap(tp)
    if tp is typing.Any or tp is _ANY:
        return _ANY
    origin = typing.get_origin(tp) or tp
    if isinstance(origin, type) and issubclass(origin, Mapping):
        return _ANY
    if isinstance(origin, type) and issubclass(origin, (list, tuple)):
        return _ANY if name.isdigit() else None
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        return hints[name] if name in {f.name for f in dataclasses.fields(tp)} else None
    return None


def _leaf_keys(tp, prefix: str = "") -> Iterator[str]:
    if not dataclasses.is_dataclass(tp):
        return
    hints = typing.get_type_hints(tp)
    for f in dataclasses.fields(tp):
        key = f"{prefix}{f.name}"
        yield key
        yield from _leaf_keys(_unwrap(hints[f.name]), key + ".")


def unknown_key_error(root, key: str, value=None) -> ConfigError | None:
    """A ConfigError for a dotted `key` that is not in the schema of dataclass `root`, else None."""
    tp, parts = root, key.split(".")
    for i, part in enumerate(parts):
        tp = _child(tp, part)
        if tp is _ANY:
            return None
        if tp is None:
            parent = ".".join(parts[:i])
            return ConfigError(key, value, _suggestion(root, key, parent, part))
    return None


def _suggestion(root, key: str, parent: str, part: str) -> str:
    every = list(_leaf_keys(root))
    near = difflib.get_close_matches(key, every, n=1, cutoff=0.75)
    if not near:  # the right name in the wrong section: trainer.width -> sampler.width
        near = [k for k in every if k.rsplit(".", 1)[-1] == part][:1]
    if not near:
        near = difflib.get_close_matches(part, every, n=1, cutoff=0.75)
    siblings = [k.rsplit(".", 1)[-1] for k in every if k.rpartition(".")[0] == parent]
    hint = f"did you mean {near[0]}? " if near else ""
    if parent and not siblings:
        return f"an unknown key ({hint}{parent} is a value, it has no keys)"
    where = f"{parent} has" if parent else "the top-level keys are"
    return f"an unknown key ({hint}{where}: {', '.join(siblings)}; `treepo-lab show` prints them all)"


def override_key(override: str) -> tuple[str | None, str | None]:
    """(dotted key, value) of a Hydra override: +k=v, ++k=v, ~k, ~k=v, k=v; (None, None) for Hydra's own."""
    body = override.lstrip("+~")
    key, _, value = body.partition("=")
    key = key.split("@", 1)[0].strip()
    if not key or key.startswith("hydra") or "/" in key:  # hydra.*, config groups: Hydra checks those
        return None, None
    return key, (value if "=" in body else None)


def check_override_keys(root, overrides: list[str]) -> None:
    """Refuse the first override whose key the schema of dataclass `root` does not have."""
    for override in overrides:
        key, value = override_key(override)
        if key is None:
            continue
        err = unknown_key_error(root, key, value)
        if err is not None:
            raise err


def unknown_fields(obj, prefix: str = "") -> list[str]:
    """Attributes set on a config object that its dataclass does not declare (a `+key` that got through)."""
    if not dataclasses.is_dataclass(obj):
        return []
    declared = {f.name for f in dataclasses.fields(obj)}
    out = [f"{prefix}{k}" for k in vars(obj) if k not in declared and not k.startswith("_")]
    for name in declared:
        out += unknown_fields(getattr(obj, name), f"{prefix}{name}.")
    return out


def parse_with_overrides(parser, args: list[str]):
    """argparse for a command with options and key=value overrides in any order (`sweep SPEC --workers 2
    trainer.steps=30`, `paper --only ID trainer.nproc=3`): a token with '=' is an override unless it is an
    option (`--out=DIR`) or the value of a one-value option (`--storage URL`); overrides go to the parser's
    `overrides` list, never to an option such as `--only ID ...`."""
    rest, overrides, i = [], [], 0
    while i < len(args):
        action = parser._option_string_actions.get(args[i])
        if action is not None and action.nargs is None:  # `--opt VALUE`: the value may hold '='
            rest += args[i:i + 2]
            i += 2
            continue
        (overrides if "=" in args[i] and not args[i].startswith("-") else rest).append(args[i])
        i += 1
    ns = parser.parse_args(rest)
    ns.overrides = [*ns.overrides, *overrides]
    return ns
