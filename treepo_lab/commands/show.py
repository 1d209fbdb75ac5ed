"""`treepo-lab show`: the resolved, validated config of an experiment, every key with its value."""
from __future__ import annotations

from treepo_lab.commands.base import Command, load


def run(own, overrides, raw):
    from treepo_lab.config import to_yaml

    print(to_yaml(load(own, overrides)), end="")


COMMAND = Command(run, "the resolved config of an experiment, every key with its value",
                  "treepo-lab show [experiment=<name>] [key=value ...]",
                  "e.g. treepo-lab show experiment=treepo_more_init sampler.width=8   (validates, computes nothing)")
