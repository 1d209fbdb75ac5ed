"""`treepo-lab list`: the registered experiments with their one-line descriptions."""
from __future__ import annotations

from treepo_lab.commands.base import Command


def run(own, overrides, raw):
    from treepo_lab.config import list_experiments

    exps = list_experiments()
    width = max(map(len, exps), default=0)
    for name, desc in exps.items():
        print(f"{name:<{width}}  {desc}")


COMMAND = Command(run, "the registered experiments (experiments/*.yaml) with one-line descriptions",
                  "treepo-lab list", "Takes no arguments.", own=(), overrides=False)
