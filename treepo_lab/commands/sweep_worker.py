"""`treepo-lab sweep-worker STUDY --storage URL`: join a running sweep from another process or machine."""
from __future__ import annotations

from treepo_lab.commands.base import Command


def run(own, overrides, args: list[str]) -> int:
    from treepo_lab.sweep import worker

    return worker.main(args)


COMMAND = Command(run, "join a running sweep from another process or machine",
                  "treepo-lab sweep-worker STUDY --storage URL [--tracking-uri URL] [--threads N]",
                  "e.g. treepo-lab sweep-worker branching --storage postgresql://optuna@db:5432/optuna", own=(), raw=True)
