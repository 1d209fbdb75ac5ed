import json

import numpy as np
import pandas as pd
import pytest

from treepo_lab.registry import ConfigError
from treepo_lab.tasks.arith import ArithTask, Chain, is_held_out, solution_text
from treepo_lab.tasks.base import Task
from treepo_lab.tasks.build import build_task
from treepo_lab.tasks.config import CheckConfig, TaskConfig
from treepo_lab.tasks.file_task import DatasetError


@pytest.fixture(scope="module")
def arith() -> ArithTask:
    return build_task(TaskConfig(held_out_size=200))


def test_arith_is_a_task(arith):
    assert isinstance(arith, Task)


def test_arith_sampling_is_deterministic(arith):
    a = arith.sample(50, np.random.default_rng(3))
    b = arith.sample(50, np.random.default_rng(3))
    assert a == b
    assert a != arith.sample(50, np.random.default_rng(4))


def test_arith_held_out_is_fixed_and_disjoint(arith):
    again = build_task(TaskConfig(held_out_size=200))
    assert arith.held_out() == again.held_out()
    held = {p.id for p in arith.held_out()}
    assert len(held) == 200 and all(is_held_out(i) for i in held)
    train = arith.sample(2000, np.random.default_rng(0))
    assert not held & {p.id for p in train}


def test_arith_problem_and_solution(arith):
    chain = Chain((17, 5, 9), ("+", "-"))
    problem = arith.problem(chain)
    assert problem.prompt == "Q: 17+5-9=?\n" and problem.answer == "13"
    text = solution_text(chain)
    assert text == "A: Step 1: 17+5=22.\nStep 2: 22-9=13.\nThe answer is \\boxed{13}"
    assert arith.score(text, problem).reward == 1.0 and arith.score(text, problem).correct
    assert arith.score(solution_text(chain, boxed=22), problem).reward == -1.0
    assert Chain.parse("17+5-9") == chain


def test_arith_responses_are_long_and_never_negative(arith):
    for p in arith.sample(300, np.random.default_rng(1)):
        chain = Chain.parse(p.id)
        assert min(chain.partials()) >= 0
        assert 50 <= len(arith.demonstration(p)) <= 70


def test_arith_difficulty_and_reward_scale():
    task = ArithTask(steps=4, held_out_size=10, reward_scale="01")
    p = task.sample(1, np.random.default_rng(0))[0]
    assert len(Chain.parse(p.id).ops) == 4
    assert task.score("nothing", p).reward == 0.0


def test_arith_held_out_too_large_is_a_config_error():
    with pytest.raises(ConfigError, match="held_out_size"):
        build_task(TaskConfig(difficulty=1, operand_max=5, held_out_size=1000))


def test_unknown_task_lists_the_names():
    with pytest.raises(ConfigError, match="arith, chain, chain_mid, file"):
        build_task(TaskConfig(name="gsm"))


ROWS = [{"q": f"What is {i}+{i}?", "a": str(2 * i)} for i in range(1, 21)]


def _write(tmp_path, fmt, rows=ROWS):
    path = tmp_path / f"data.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "csv":
        pd.DataFrame(rows).to_csv(path, index=False)
    else:
        pd.DataFrame(rows).to_parquet(path)
    return path


def _file_cfg(path, **kw):
    return TaskConfig(name="file", path=str(path), question_column="q", answer_column="a", **kw)


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_file_task_happy_path(tmp_path, fmt):
    task = build_task(_file_cfg(_write(tmp_path, fmt), template="Problem: {question}\n", held_out_fraction=0.25))
    held = task.held_out()
    assert len(held) == 5 and held == build_task(_file_cfg(tmp_path / f"data.{fmt}",
                                                           template="Problem: {question}\n",
                                                           held_out_fraction=0.25)).held_out()
    train = task.sample(40, np.random.default_rng(0))
    assert not {p.id for p in held} & {p.id for p in train}
    p = train[0]
    assert p.prompt.startswith("Problem: What is ") and p.prompt.endswith("?\n")
    assert task.score(f"so \\boxed{{{p.answer}}}", p).correct
    assert not task.score("so \\boxed{-1}", p).correct


def test_file_task_separate_held_out_file(tmp_path):
    train = _write(tmp_path, "jsonl")
    held = tmp_path / "test.csv"
    pd.DataFrame([{"q": "1/2 as a decimal?", "a": "\\frac{1}{2}"}]).to_csv(held, index=False)
    task = build_task(_file_cfg(train, held_out_path=str(held)))
    (p,) = task.held_out()
    assert task.score("\\boxed{0.5}", p).correct


def test_malformed_jsonl_names_file_and_row(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"q": "1+1?", "a": "2"}\n{"q": "2+2?", "a": \n')
    with pytest.raises(DatasetError, match=r"bad\.jsonl, row 2") as e:
        build_task(_file_cfg(path))
    assert e.value.row == 2


def test_malformed_csv_names_file_and_row(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("q,a\n1+1?,2\n2+2?,4\n3+3?,6,extra\n")
    with pytest.raises(DatasetError, match=r"bad\.csv, row 3: .*line 4"):
        build_task(_file_cfg(path))


def test_malformed_parquet_names_the_file(tmp_path):
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"PAR1 not really")
    with pytest.raises(DatasetError, match=r"bad\.parquet: cannot read parquet"):
        build_task(_file_cfg(path))


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_missing_value_names_file_row_and_column(tmp_path, fmt):
    rows = [dict(r) for r in ROWS]
    rows[3]["a"] = None
    path = _write(tmp_path, fmt, rows)
    with pytest.raises(DatasetError, match=r"data\.\w+, row 4, column 'a'") as e:
        build_task(_file_cfg(path))
    assert (e.value.row, e.value.column) == (4, "a")


def test_missing_column_is_an_error(tmp_path):
    with pytest.raises(DatasetError, match="column 'answer'.*no such column"):
        build_task(TaskConfig(name="file", path=str(_write(tmp_path, "csv")), question_column="q"))


@pytest.mark.parametrize("content", ["", "\n\n"])
def test_empty_jsonl_is_an_error(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    with pytest.raises(DatasetError, match="empty.jsonl.*no rows"):
        build_task(_file_cfg(path))


def test_empty_csv_is_an_error(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(DatasetError, match="empty.csv"):
        build_task(_file_cfg(path))
    path.write_text("q,a\n")  # a header and no rows
    with pytest.raises(DatasetError, match="no rows"):
        build_task(_file_cfg(path))


def test_file_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="task.path"):
        build_task(TaskConfig(name="file"))
    with pytest.raises(ConfigError, match="task.path"):
        build_task(_file_cfg(tmp_path / "missing.jsonl"))
    with pytest.raises(ConfigError, match="task.path"):
        build_task(_file_cfg(tmp_path / "data.txt"))
    with pytest.raises(ConfigError, match="task.template"):
        build_task(_file_cfg(_write(tmp_path, "csv"), template="no placeholder"))


# ---- dataset errors are user errors; templates; the README's command ----

import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import yaml  # noqa: E402

from treepo_lab.tasks.file_task import unescape_template  # noqa: E402

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.mark.parametrize("name, content, match", [
    ("truncated.jsonl", b'{"q": "1+1?", "a": "2"}\n{"q": "2+2?", "a": "4', r"truncated\.jsonl, row 2: invalid JSON"),
    ("latin1.jsonl", '{"q": "caf\xe9?", "a": "1"}\n'.encode("latin-1"), r"latin1\.jsonl: not UTF-8 text"),
    ("latin1.csv", "q,a\ncaf\xe9?,1\n".encode("latin-1"), r"latin1\.csv: not UTF-8 text"),
    ("semicolon.csv", b"q;a\n1+1?;2\n2+2?;4\n", r"column 'q': no such column \(columns: q;a\).*comma-separated"),
    ("empty.csv", b"", r"empty\.csv: the file is empty"),
    ("noanswer.jsonl", b'{"q": "1+1?", "a": "2"}\n{"q": "2+2?"}\n', r"noanswer\.jsonl, row 2, column 'a': missing"),
])
def test_dataset_errors_are_config_errors(tmp_path, name, content, match):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=match) as e:  # the CLI prints a ConfigError as one line, exit 2
        build_task(_file_cfg(path))
    assert isinstance(e.value, DatasetError) and e.value.key == "task.path"


@pytest.mark.parametrize("written, meant", [
    ("{question}\\nAnswer:", "{question}\nAnswer:"),
    ("{question}\\nPut it in \\boxed{}.\\n", "{question}\nPut it in \\boxed{}.\n"),
    ("Is $x \\\\neq 0$? {question}", "Is $x \\neq 0$? {question}"),  # \\ is one backslash
    ("{question}\nreal newline", "{question}\nreal newline"),
])
def test_template_escapes(written, meant):
    assert unescape_template(written) == meant


def test_template_newline_reaches_the_prompt(tmp_path):
    task = build_task(_file_cfg(_write(tmp_path, "jsonl"), template="Q: {question}\\nA:"))
    assert all(p.prompt.startswith("Q: What is ") and p.prompt.endswith("?\nA:") for p in task.held_out())


def _readme_file_task_command() -> str:
    text = README.read_text()
    section = text[text.index("## A real model and a dataset file"):]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1)


def test_readme_file_task_command_works_in_bash(tmp_path):
    """The README's command, run by bash as written (`treepo-lab train` swapped for `show`), gives a
    template whose `\\n` are newlines in the prompt."""
    command = _readme_file_task_command()
    assert command.lstrip().startswith("treepo-lab train ")
    script = f'treepo-lab() {{ shift; "{sys.executable}" -m treepo_lab.cli show "$@"; }}\n{command}'
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120,
                         cwd=README.parent)
    assert out.returncode == 0, out.stderr
    cfg = yaml.safe_load(out.stdout)
    assert cfg["task"]["name"] == "file" and "{question}" in cfg["task"]["template"]
    data = tmp_path / "gsm8k.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {i}+{i}?", "answer": f"so\n#### {2 * i}"}) + "\n"
                            for i in range(1, 11)))
    check = cfg["task"].pop("check")
    task = build_task(TaskConfig(**{**cfg["task"], "path": str(data)}, check=CheckConfig(**check)))
    p = task.held_out()[0]
    assert p.prompt == p.prompt.split("\n")[0] + "\nPut the final answer in \\boxed{}.\n"
    assert task.score(f"\\boxed{{{p.answer.split('#### ')[1]}}}", p).correct and task.warnings == []
