"""`treepo-lab resume <run>`: continue a run from its latest checkpoint, in the same MLflow run."""
from __future__ import annotations

from treepo_lab.commands.base import Command
from treepo_lab.commands.output import UserError
from treepo_lab.commands.train import print_summary

USAGE = "treepo-lab resume <MLflow run id | runs/<run> | runs/<run>/checkpoints/step-NNNNNN> [key=value ...]"


def run(own, overrides, raw):
    from treepo_lab.train import run as train_run

    if not raw or "=" in raw[0]:
        raise UserError("resume needs a run id, run directory or checkpoint first", f"usage: {USAGE}")
    try:
        trainer, history = train_run.resume(raw[0], raw[1:])
    except train_run.RunComplete as done:  # nothing left to do: not an error
        print(done)
        return
    if trainer is not None and trainer.world.is_main:  # None: the ranks ran it (trainer.nproc > 1)
        print_summary(trainer, history)


COMMAND = Command(run, "continue a run from its latest checkpoint", USAGE,
                  "The run continues in the same MLflow run, with the config it was started with.", own=(), raw=True)
