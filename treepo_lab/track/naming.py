"""What an MLflow run is called and holds: legal keys, the flattened config as params (YAML
spellings), its description, and the code version. The strategy tags are in `strategy`."""
from __future__ import annotations

import dataclasses
import importlib.metadata
import re
import subprocess
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

import treepo_lab
from treepo_lab.tasks.build import TASKS  # every task registered, with its facts

KEY_MAX = 250

# Left out of the params: free text goes to the run description (mlflow.note.content), and the warm
# start follows the experiment's own task (config.warmstart_config), so warmstart.task.* repeats task.*.
NOT_PARAMS = ("description", "paper_ref", "warmstart.task.")


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


def yaml_value(v: Any) -> str:
    """A param value spelled as in config.yaml: null, true/false, [2, 8], {kind: fixed}; text as is."""
    if isinstance(v, str):
        return v
    if v is None or isinstance(v, (bool, int, float, list, tuple, Mapping)):
        return yaml.safe_dump(v, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()
    return str(v)


def flatten_config(d: Mapping, prefix: str = "") -> dict[str, str]:
    """{"sampler": {"width": 16}} -> {"sampler.width": "16"}; lists stay whole ("[2, 8]"); YAML spellings."""
    out: dict[str, str] = {}
    for k, v in plain_config(d).items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten_config(v, key + "."))
        else:
            out[key] = yaml_value(v)
    return out


def run_params(cfg: Mapping) -> dict[str, str]:
    """The params of a run: the flattened config without free text and duplicated sections."""
    return {k: v for k, v in flatten_config(cfg).items() if not k.startswith(NOT_PARAMS)}


def run_description(cfg: Mapping, overrides: list[str] | None = None) -> str:
    """Markdown for the run's description (`mlflow.note.content`): what the registry entry says."""
    lines = [f"**{cfg.get('name', '')}**: {cfg.get('description', '')}".strip()]
    if cfg.get("paper_ref"):
        lines.append(f"Paper: {cfg['paper_ref']}")
    if overrides:
        lines.append("Overrides: `" + " ".join(overrides) + "`")
    return "\n\n".join(lines)


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


def default_experiment_name(cfg: Mapping) -> str:
    """The MLflow experiment runs share by default: one per task and model, so every registry
    experiment run on the same task and model lands in one place and can be grouped by strategy.
    e.g. "arith_d2-tiny" (the embedded default), "gsm8k-Qwen2.5-0.5B" (a task file and an HF model)."""
    task, model = cfg.get("task") or {}, cfg.get("model") or {}
    name = task.get("name", "task")
    if name in TASKS and TASKS.info(name).get("names_difficulty"):
        label = f"{name}_d{task.get('difficulty')}"
    elif task.get("path"):
        label = Path(str(task["path"])).stem
    else:
        label = str(name)
    model_path = model.get("path")
    model_label = Path(str(model_path).rstrip("/")).name if model_path else "tiny"
    return f"{label}-{model_label}"


def experiment_description(name: str, cfg: Mapping) -> str:
    """Markdown shown on the experiment's page (`mlflow.note.content` of the experiment)."""
    task, model = cfg.get("task") or {}, cfg.get("model") or {}
    return (f"treepo_lab runs on task `{task.get('name')}` with model `{model.get('path') or 'embedded tiny model'}`. "
            f"Each run is one registry experiment (tag `treepo.experiment`, the start of the run name). To compare "
            f"strategies: Group by tag `treepo.strategy`, then the Chart view (section `1_compare` first: held-out "
            f"accuracy, decoded tokens, token saving). See the README, 'Comparing strategies in the MLflow UI'.")
