"""`treepo-lab warmstart`: build (or reuse from the cache) the warm-started embedded model, and say how it does."""
from __future__ import annotations

import json
from pathlib import Path

from treepo_lab.commands.base import Command, load
from treepo_lab.train.progress import fmt


def run(own, overrides, raw, default="default"):
    from treepo_lab.config import warmstart_config
    from treepo_lab.models.warmstart import warmstart

    cfg = load(own, overrides, default)
    if cfg.model.path is not None:
        print(f"model.path={cfg.model.path}: a given model needs no warm start")
        return
    print_warmstart(warmstart(warmstart_config(cfg)))


def print_warmstart(path) -> None:
    info = json.loads((Path(path) / "warmstart.json").read_text())
    print(f"warm-started model: {path}")
    shown = {"train_s": "training time (s)", "greedy_accuracy": "greedy held-out accuracy",
             "mixed_fraction_16": "prompts whose 16 samples mix right and wrong",
             "sample_accuracy_t1": "sample accuracy at temperature 1", "eval_problems": "problems evaluated"}
    for k, label in shown.items():
        if k in info:
            print(f"  {label}: {fmt(k.replace('mixed_fraction', 'fraction'), info[k])}")


COMMAND = Command(run, "build (or reuse from the cache) the warm-started embedded model",
                  "treepo-lab warmstart [experiment=<name>] [warmstart.key=value ...]",
                  "e.g. treepo-lab warmstart warmstart.steps=800   (cached under ~/.cache/treepo_lab/warmstart)")
