"""What an MLflow run is called and tagged with: legal keys, the flattened config as params, the
strategy tags that make "group by strategy" work in the UI, and the code version."""
from __future__ import annotations

import dataclasses
import importlib.metadata
import re
import subprocess
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import treepo_lab

KEY_MAX = 250

# Config keys copied to run tags, so the runs table can "group by" a branching strategy.
STRATEGY_KEYS = (
    "sampler.kind", "sampler.div_policy", "sampler.budget_control", "sampler.fallback_candidates",
    "sampler.fallback_cut", "sampler.width", "advantage.estimator", "advantage.aggregation", "loss.name",
)


@lru_cache(maxsize=4096)  # the same few dozen metric keys are sanitised every step
def sanitize_key(key: str) -> str:
    """A legal MLflow metric/param key on every OS: pass@k -> pass_at_k, other odd chars -> '_'.

    Legal: ASCII letters, digits, _ - . / and space (MLflow also allows ':' except on Windows, so we
    drop it), and the key must not look like a path that normalises to something else.
    """
    key = str(key).replace("@", "_at_")
    key = re.sub(r"[^A-Za-z0-9_\-./ ]", "_", key)
    parts = [p for p in key.split("/") if p not in ("", ".", "..")]  # no '//', leading '/', '..'
    key = "/".join(parts)[:KEY_MAX]
    return key or "_"


def plain_config(cfg: Any) -> Any:
    """A resolved config as plain dicts/lists (accepts a dict, a dataclass or an OmegaConf node)."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return dataclasses.asdict(cfg)
    if not isinstance(cfg, Mapping):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def flatten_config(d: Mapping, prefix: str = "") -> dict[str, str]:
    """{"sampler": {"width": 16}} -> {"sampler.width": "16"}; lists stay whole ("[2, 4]")."""
    out: dict[str, str] = {}
    for k, v in plain_config(d).items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten_config(v, key + "."))
        else:
            out[key] = str(v)
    return out


def strategy_tags(flat: Mapping[str, str]) -> dict[str, str]:
    """Tags that name the branching strategy: one per STRATEGY_KEYS entry, the tree shape depth x
    segment length ("8x16"), and `treepo.strategy` joining them for a one-click group-by."""
    tags = {k: flat[k] for k in STRATEGY_KEYS if k in flat}
    if "sampler.max_depth" in flat and "sampler.segment_len" in flat:
        tags["sampler.shape"] = f"{flat['sampler.max_depth']}x{flat['sampler.segment_len']}"
    if flat.get("sampler.kind") == "tree":
        parts = [flat.get(k) for k in ("sampler.kind", "sampler.div_policy", "sampler.fallback_cut",
                                       "advantage.estimator")]
    else:  # the sequential baseline has no divergence or fallback to name
        parts = [flat.get("sampler.kind"), flat.get("advantage.estimator")]
    if any(parts):
        tags["treepo.strategy"] = "/".join(p for p in parts if p)
    return tags


def git_commit() -> str:
    """Commit of the treepo_lab checkout (not of the working directory), or "unknown"."""
    try:
        res = subprocess.run(["git", "-C", str(Path(__file__).resolve().parent), "rev-parse", "HEAD"],
                             capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return res.stdout.strip() if res.returncode == 0 and res.stdout.strip() else "unknown"


def lab_version() -> str:
    # getattr: a stale editable install can import treepo_lab as a namespace package without __init__
    version = getattr(treepo_lab, "__version__", None)
    if version:
        return version
    try:
        return importlib.metadata.version("treepo_lab")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
