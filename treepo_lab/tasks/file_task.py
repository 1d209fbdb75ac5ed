"""A task read from a dataset file: JSONL, Parquet or CSV, with configurable question/answer columns.

Responses are judged by the task's answer check (`task.check`: by default the last \\boxed{} compared
with Math-Verify). Bad data fails loudly when the task is built, naming the file, the row and the column:
a silently empty or half-read dataset would otherwise turn into a run that trains on nothing. The error
is a ConfigError, so the command line prints it as one line (exit 2), and the preflight raises it before
any run exists.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from treepo_lab.registry import ConfigError
from treepo_lab.tasks.base import TASKS, Problem, Score, score_with
from treepo_lab.tasks.check import AnswerCheck
from treepo_lab.tasks.config import CheckConfig

FORMATS = {".jsonl": "jsonl", ".parquet": "parquet", ".csv": "csv"}
QUESTION = "{question}"  # the placeholder in a prompt template


class DatasetError(ConfigError):
    """A dataset file that cannot be used: names the file, and the row and column where known."""

    def __init__(self, path, message: str, row: int | None = None, column: str | None = None):
        self.path, self.row, self.column = str(path), row, column
        where = self.path + (f", row {row}" if row is not None else "") + (
            f", column {column!r}" if column is not None else "")
        ValueError.__init__(self, f"{where}: {message}")
        self.key, self.value, self.allowed = "task.path", self.path, message


def unescape_template(template: str) -> str:
    """`\\n` in a template is a newline (a shell or a Hydra override cannot easily carry a real one);
    `\\\\` is one backslash, so `\\\\neq` stays the LaTeX `\\neq`. Other backslashes (`\\boxed`) stay."""
    return re.sub(r"\\(\\|n)", lambda m: "\n" if m.group(1) == "n" else "\\", template)


# A reference with two or more letters in a row outside a LaTeX command (\frac, \sqrt) is a word
# rather than algebra: Math-Verify would read it as a product of symbols (abc equals cba).
_WORDY = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}")


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").split("\n")  # not splitlines: U+2028 may sit in a string
    except UnicodeDecodeError as e:
        raise DatasetError(path, f"not UTF-8 text ({e.reason} at byte {e.start})") from e
    for line_no, line in enumerate(lines, start=1):  # rows are numbered like lines: from 1
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetError(path, f"invalid JSON ({e.msg}) at character {e.colno}", row=line_no) from e
        if not isinstance(row, dict):
            raise DatasetError(path, f"expected a JSON object, got {type(row).__name__}", row=line_no)
        rows.append((line_no, row))
    return rows


def _read_table(path: Path, fmt: str) -> list[tuple[int, dict]]:
    import pandas as pd

    try:
        if fmt == "csv":
            # Strings everywhere: "007" or "1/2" must reach the verifier as written.
            df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
        else:
            df = pd.read_parquet(path)
    except pd.errors.EmptyDataError as e:
        raise DatasetError(path, "the file is empty") from e
    except UnicodeDecodeError as e:
        raise DatasetError(path, f"not UTF-8 text ({e.reason} at byte {e.start})") from e
    except Exception as e:  # pandas/pyarrow parse errors; add the file name, and the row where pandas knows it
        line = re.search(r"line (\d+)", str(e)) if fmt == "csv" else None
        row = int(line.group(1)) - 1 if line else None  # line 1 is the header
        raise DatasetError(path, f"cannot read {fmt}: {e}", row=row) from e
    # Row numbers count data records from 1 (a CSV header is not a row).
    return list(enumerate(df.to_dict("records"), start=1))


def read_rows(path: str | Path) -> list[tuple[int, dict]]:
    """(row number, record) pairs; JSONL rows are numbered by line, table rows by record, from 1."""
    path = Path(path)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ConfigError("task.path", str(path), f"a file ending in one of {', '.join(FORMATS)}")
    if not path.is_file():
        raise ConfigError("task.path", str(path), "an existing file")
    rows = _read_jsonl(path) if fmt == "jsonl" else _read_table(path, fmt)
    if not rows:
        raise DatasetError(path, "the dataset has no rows")
    return rows


def _cell(path, rows: list[tuple[int, dict]], i: int, column: str) -> str:
    import pandas as pd

    row_no, row = rows[i]
    if column not in row:
        # A column missing from every row is a config mistake; from one row, a data mistake.
        if not any(column in r for _, r in rows):
            names = list(map(str, row))
            hint = ""
            if len(names) == 1 and Path(str(path)).suffix.lower() == ".csv":
                for sep in (";", "\t", "|"):
                    if sep in names[0]:
                        hint = f"; the header has one column containing {sep!r}: CSV files must be comma-separated"
            raise DatasetError(path, f"no such column (columns: {', '.join(names)}){hint}", column=column)
        raise DatasetError(path, "missing value", row=row_no, column=column)
    value = row[column]
    if isinstance(value, (dict, list, np.ndarray)):
        raise DatasetError(path, f"expected text or a number, got {type(value).__name__}", row=row_no,
                           column=column)
    if value is None or pd.isna(value):
        raise DatasetError(path, "missing value", row=row_no, column=column)
    text = str(value).strip()
    if not text:
        raise DatasetError(path, "empty value", row=row_no, column=column)
    return text


def load_problems(path, question_column: str, answer_column: str, template: str | None) -> list[Problem]:
    rows = read_rows(path)
    stem = Path(path).stem
    out = []
    template = None if template is None else unescape_template(template)
    for i in range(len(rows)):
        question = _cell(path, rows, i, question_column)
        answer = _cell(path, rows, i, answer_column)
        prompt = question if template is None else template.replace(QUESTION, question)
        out.append(Problem(id=f"{stem}:{rows[i][0]}", prompt=prompt, answer=answer))
    return out


class FileTask:
    name = "file"

    def __init__(self, path: str, question_column: str = "question", answer_column: str = "answer",
                 template: str | None = None, held_out_path: str | None = None,
                 held_out_fraction: float = 0.1, held_out_size: int = 1000, seed: int = 0,
                 reward_scale: str = "pm1", check: AnswerCheck | None = None):
        if template is not None and QUESTION not in template:
            raise ConfigError("task.template", template, f"a string containing {QUESTION}")
        self.reward_scale = reward_scale
        self.check = check or AnswerCheck(CheckConfig())
        problems = load_problems(path, question_column, answer_column, template)
        if held_out_path is not None:
            self._train = problems
            held = load_problems(held_out_path, question_column, answer_column, template)
        else:
            if not 0 < held_out_fraction < 1:
                raise ConfigError("task.held_out_fraction", held_out_fraction, "a number in (0, 1)")
            order = np.random.default_rng(seed).permutation(len(problems))
            n_held = max(1, round(held_out_fraction * len(problems)))
            if n_held >= len(problems):
                raise DatasetError(path, f"{len(problems)} rows leave none for training after the held-out split")
            held = [problems[i] for i in sorted(order[:n_held])]
            self._train = [problems[i] for i in sorted(order[n_held:])]
        # held_out_size caps what is evaluated; the rest of the split is still never trained on.
        self._held, self._held_out = held, held[:held_out_size]
        self.warnings = self._check_warnings(self.all_problems())

    def _check_warnings(self, problems: list[Problem]) -> list[str]:
        hashed = [p for p in problems if "####" in p.answer]
        if hashed and (self.check.cfg.reference or self.check.cfg.extract) != "hash":
            return [f"{len(hashed)} of {len(problems)} answers end in '#### N' (GSM8K style, e.g. {hashed[0].id}) "
                    f"but the reference is read with {self.check.cfg.reference or self.check.cfg.extract!r}: set "
                    f"task.check.reference=hash task.check.compare=numeric (and task.check.extract=hash if "
                    f"task.template asks for '#### <answer>')"]
        if self.check.cfg.compare != "math_verify":
            return []
        wordy = [p for p in problems if _WORDY.search(self.check.reference(p.answer))]
        if not wordy:
            return []
        p = wordy[0]
        return [f"{len(wordy)} of {len(problems)} answers are words, not math (e.g. {p.id}: {p.answer[:40]!r}); "
                f"Math-Verify reads letters as algebra symbols ('abc' equals 'cba'): for string answers set "
                f"task.check.compare=exact (README: checking answers)"]

    def sample(self, n: int, rng: np.random.Generator) -> list[Problem]:
        idx = rng.choice(len(self._train), size=n, replace=n > len(self._train))
        return [self._train[i] for i in idx]

    def held_out(self) -> list[Problem]:
        return list(self._held_out)

    def all_problems(self) -> list[Problem]:
        """Every row, training and held out (for the preflight's checks)."""
        return [*self._train, *self._held]

    def score(self, response: str, problem: Problem) -> Score:
        return score_with(self.check, response, problem, self.reward_scale)


def _check_file(cfg, prefix: str = "task") -> None:
    if not cfg.path:
        raise ConfigError(f"{prefix}.path", cfg.path, "a dataset file path when task.name=file")
    if not cfg.question_column or not cfg.answer_column:
        raise ConfigError(f"{prefix}.question_column/answer_column", (cfg.question_column, cfg.answer_column),
                          "non-empty column names")
    if cfg.template is not None and QUESTION not in cfg.template:
        raise ConfigError(f"{prefix}.template", cfg.template, f"a string containing {QUESTION}")
    if cfg.held_out_path is None and not 0 < cfg.held_out_fraction < 1:
        raise ConfigError(f"{prefix}.held_out_fraction", cfg.held_out_fraction, "a number in (0, 1)")


@TASKS.register("file", check=_check_file)
def _build_file(cfg, check: AnswerCheck) -> FileTask:
    return FileTask(cfg.path, cfg.question_column, cfg.answer_column, cfg.template, cfg.held_out_path,
                    cfg.held_out_fraction, cfg.held_out_size, cfg.seed, check=check)
