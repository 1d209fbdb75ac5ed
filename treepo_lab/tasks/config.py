"""Task configuration: data + value checks only. The rules of one task's own knobs (chain's difficulty, a
file task's path) are facts it registers (`check`, tasks/base.py), run with the name check by
treepo_lab/config.py; tasks are built by `treepo_lab.tasks.build.build_task`."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from treepo_lab.registry import ConfigError


@dataclass
class CheckConfig:
    """How a response is judged right: extract its answer, then compare it with the reference.

    Math (\\boxed{} answers): the defaults. GSM8K-style `#### 72`: extract=hash compare=numeric (the
    reference column may be the whole solution: its own `#### 72` is read); a model asked for \\boxed{}
    on GSM8K: reference=hash compare=numeric. Words or strings: compare=exact (Math-Verify reads
    letters as algebra symbols: `abc` equals `cba`).
    """

    extract: str = "boxed"  # boxed (last \boxed{...}) | hash (last `#### N`) | regex (`pattern`) | whole
    pattern: str | None = None  # extract=regex: the last match counts; its group 1 if it has groups
    # how the reference column is read: null = like `extract` | boxed | hash | regex | whole; an
    # extractor that finds nothing in a reference leaves it whole (a plain "72")
    reference: str | None = None
    compare: str = "math_verify"  # math_verify | exact | numeric | python (`function`)
    normalize: list[str] = field(default_factory=lambda: ["strip"])  # compare=exact, in order: strip | lower | spaces | punct
    rel_tol: float = 1e-6  # compare=numeric: math.isclose tolerances
    abs_tol: float = 0.0
    # compare=python: "package.module:function" or "path/to/file.py:function"; called as
    # function(answer: str, reference: str) -> bool under trainer.reward_timeout_s
    function: str | None = None

    def validate(self) -> None:
        if self.extract == "regex" or self.reference == "regex":
            if not self.pattern:
                raise ConfigError("task.check.pattern", self.pattern, "a regular expression when task.check.extract=regex")
            try:
                re.compile(self.pattern)
            except re.error as e:
                raise ConfigError("task.check.pattern", self.pattern, f"a valid regular expression ({e})") from e
        for key in ("rel_tol", "abs_tol"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
                raise ConfigError(f"task.check.{key}", value, "a number >= 0")
        if self.compare == "python":
            if not self.function or ":" not in str(self.function):
                raise ConfigError("task.check.function", self.function,
                                  "module:function (or path/to/file.py:function) when task.check.compare=python")


@dataclass
class TaskConfig:
    # arith (embedded synthetic chained arithmetic) | chain (the harder embedded task: longer chains, a
    # method chosen up front; see tasks/chain.py) | chain_mid (chain's in-order method, decided by one step
    # in a middle segment; tasks/chain.py) | file (JSONL/Parquet/CSV)
    name: str = "arith"
    # arith, chain and chain_mid
    difficulty: int = 2  # number of operations in the chain (more steps = longer, harder responses)
    operand_max: int = 29  # operands are drawn from 1..operand_max
    # chain_mid: the operation (1-based, <= difficulty) that always subtracts and that the warm start's habit
    # gets wrong; 3 with difficulty=4 puts the deciding token in segment 4 of 7 (l=16)
    decisive_step: int = 3
    # file
    path: str | None = None  # dataset file (.jsonl, .parquet or .csv)
    question_column: str = "question"
    answer_column: str = "answer"
    # prompt template with a {question} placeholder; null = the question as is. `\n` in it is a newline
    # (write `\\n` for a literal backslash-n, e.g. LaTeX \neq)
    template: str | None = None
    held_out_path: str | None = None  # a separate evaluation file; null = split off held_out_fraction
    held_out_fraction: float = 0.1  # share of `path` rows held out (seeded by `seed`)
    # both
    # the prompt (after `template`) as the user message of the tokenizer's chat template, with the generation
    # prompt (models/prompting.py); null = on when the tokenizer has one and the model is not the embedded one
    # true | false | null (on when the tokenizer has one) | a Jinja chat template file, used instead of the
    # tokenizer's (or where it has none, e.g. experiments/chat_templates/gemma.jinja for a Gemma GGUF)
    chat_template: Any = None
    system_prompt: str | None = None  # the chat's system message (null: none, or the template's own default)
    held_out_size: int = 1000  # evaluation problems (arith: drawn; file: a cap on the split)
    seed: int = 0  # picks the held-out problems (arith) or the held-out rows (file)
    check: CheckConfig = field(default_factory=CheckConfig)  # how a response is judged right

    def validate(self) -> None:
        if self.held_out_size < 1:
            raise ConfigError("task.held_out_size", self.held_out_size, "an integer >= 1")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError("task.seed", self.seed, "an integer >= 0")
        if not (self.chat_template is None or isinstance(self.chat_template, bool)
                or (isinstance(self.chat_template, str) and self.chat_template.strip())):
            raise ConfigError("task.chat_template", self.chat_template,
                              "true, false, null (on when the tokenizer has one) or a Jinja chat template file")
        self.check.validate()
