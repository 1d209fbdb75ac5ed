"""Building a task from its config, and the registries its names are checked against (no torch here:
`treepo-lab show` and every config error stay light)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from treepo_lab.tasks import arith, chain, file_task  # noqa: F401  (registers the tasks)
from treepo_lab.tasks.base import TASKS, Task
from treepo_lab.tasks.check import COMPARATORS, EXTRACTORS, NORMALIZERS, AnswerCheck
from treepo_lab.validated import is_checked

if TYPE_CHECKING:
    from treepo_lab.tasks.config import TaskConfig

__all__ = ["TASKS", "EXTRACTORS", "COMPARATORS", "NORMALIZERS", "build_task", "check_task"]


def check_task(cfg: TaskConfig, prefix: str = "task") -> None:
    """Every registered name a task config chooses and the task's own rules (treepo_lab/config.py's validate)."""
    rules = TASKS.info(cfg.name, f"{prefix}.name")
    if "check" in rules:
        rules["check"](cfg, prefix)
    EXTRACTORS.get(cfg.check.extract, f"{prefix}.check.extract")
    if cfg.check.reference is not None:
        EXTRACTORS.get(cfg.check.reference, f"{prefix}.check.reference")
    COMPARATORS.get(cfg.check.compare, f"{prefix}.check.compare")
    for name in cfg.check.normalize:
        NORMALIZERS.get(name, f"{prefix}.check.normalize")


def build_task(cfg: TaskConfig) -> Task:
    """The task, its data read and its answer check built (a user's check function imported)."""
    if not is_checked(cfg):  # built by hand (a test, a script): checked here; else validate did
        cfg.validate()
        check_task(cfg)
    return TASKS.get(cfg.name, "task.name")(cfg, AnswerCheck(cfg.check))
