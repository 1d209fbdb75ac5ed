"""Task configuration and the `build_task` entry point."""
from __future__ import annotations

from dataclasses import dataclass

from treepo_lab.registry import ConfigError
from treepo_lab.tasks import arith, file_task  # noqa: F401  (registers "arith" and "file")
from treepo_lab.tasks.base import TASKS, Task


@dataclass
class TaskConfig:
    name: str = "arith"  # arith (embedded synthetic chained arithmetic) | file (JSONL/Parquet/CSV)
    # arith
    difficulty: int = 2  # number of operations in the chain (more steps = longer, harder responses)
    operand_max: int = 29  # operands are drawn from 1..operand_max
    # file
    path: str | None = None  # dataset file (.jsonl, .parquet or .csv)
    question_column: str = "question"
    answer_column: str = "answer"
    template: str | None = None  # prompt template with a {question} placeholder; null = the question as is
    held_out_path: str | None = None  # a separate evaluation file; null = split off held_out_fraction
    held_out_fraction: float = 0.1  # share of `path` rows held out (seeded by `seed`)
    # both
    held_out_size: int = 1000  # evaluation problems (arith: drawn; file: a cap on the split)
    seed: int = 0  # picks the held-out problems (arith) or the held-out rows (file)

    def validate(self) -> None:
        TASKS.get(self.name, "task.name")
        if self.held_out_size < 1:
            raise ConfigError("task.held_out_size", self.held_out_size, "an integer >= 1")
        if self.name == "arith":
            if self.difficulty < 1:
                raise ConfigError("task.difficulty", self.difficulty, "an integer >= 1 (number of operations)")
            if self.operand_max < 2:
                raise ConfigError("task.operand_max", self.operand_max, "an integer >= 2")
        if self.name == "file":
            if not self.path:
                raise ConfigError("task.path", self.path, "a dataset file path when task.name=file")
            if not self.question_column or not self.answer_column:
                raise ConfigError("task.question_column/answer_column",
                                  (self.question_column, self.answer_column), "non-empty column names")
            if self.template is not None and "{question}" not in self.template:
                raise ConfigError("task.template", self.template, "a string containing {question}")
            if self.held_out_path is None and not 0 < self.held_out_fraction < 1:
                raise ConfigError("task.held_out_fraction", self.held_out_fraction, "a number in (0, 1)")


def build_task(cfg: TaskConfig) -> Task:
    cfg.validate()
    return TASKS.get(cfg.name, "task.name")(cfg)
