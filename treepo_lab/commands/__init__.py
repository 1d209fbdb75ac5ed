"""The subcommands of `treepo-lab`, one module each (as torchtune's `_cli/`): a module defines `run` and its
table entry `COMMAND` (commands/base.py); treepo_lab/cli.py parses the line and dispatches. Modules stay light
at import (no torch, no mlflow): what a command needs loads when it runs, so `--help`, `show` and every config
error print at once. The shared set-up of model, task, prompts and engine is treepo_lab/train/setup.py.
"""
from __future__ import annotations

import importlib

from treepo_lab.commands.base import Command

# the order `treepo-lab --help` lists them in; a name's module is the name with - as _
NAMES = ("demo", "list", "show", "train", "warmstart", "eval", "rollout", "resume", "report", "export", "figures",
         "paper", "ui", "sweep", "sweep-worker", "sweep-status")

COMMANDS: dict[str, Command] = {
    name: importlib.import_module(f"{__name__}.{name.replace('-', '_')}").COMMAND for name in NAMES}
