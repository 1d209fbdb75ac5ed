"""The shipped GSM8K-style word problems (experiments/data/word_problems.jsonl, experiments/real_small.yaml)."""
from __future__ import annotations

import re

from treepo_lab.config import experiments_dir, load_config
from treepo_lab.tasks.build import build_task
from treepo_lab.tasks.word_problems import generate, to_jsonl

SHIPPED = experiments_dir() / "data" / "word_problems.jsonl"


def test_the_shipped_file_is_the_generators_output():
    assert SHIPPED.read_text() == to_jsonl(generate())  # regenerate: python -m treepo_lab.tasks.word_problems


def test_every_solution_computes_its_answer():
    rows = generate()
    assert len(rows) == 300 and len({r["question"] for r in rows}) == 300
    for r in rows:
        *steps, last = r["answer"].split("\n")
        answer = int(last.removeprefix("#### "))
        for step in steps:  # "a op b = c", each step right, the last one giving the answer
            a, op, b, eq, c = step.split()
            assert eq == "=" and int(c) == {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b),
                                             "/": int(a) // int(b)}[op], step
            assert op != "/" or int(a) % int(b) == 0, step
        assert int(c) == answer >= 0
        numbers = [int(x) for x in re.findall(r"\d+", r["question"])]
        assert int(steps[0].split()[0]) in numbers


def test_real_small_scores_a_boxed_answer_against_the_reference():
    cfg = load_config("real_small", ["model.path=unused"])  # the task alone: no model needed
    task = build_task(cfg.task)
    problem = task.held_out()[0]
    n = problem.answer.rsplit("#### ", 1)[1]
    assert "\\boxed{}" in problem.prompt and task.warnings == []
    assert task.score(f"So the answer is \\boxed{{{n}}}.", problem).correct
    assert not task.score(f"So the answer is \\boxed{{{int(n) + 1}}}.", problem).correct
    assert not task.score(f"So the answer is {n}.", problem).correct  # not boxed


def test_the_shipped_sums_are_the_generators_output_and_every_pair_once():
    from treepo_lab.tasks.word_problems import sums

    assert (experiments_dir() / "data" / "sums.jsonl").read_text() == to_jsonl(sums())  # ... word_problems sums
    rows = sums()
    assert len(rows) == 324 == len({r["question"] for r in rows})
    cfg = load_config("real_learn", ["model.path=unused"])
    task = build_task(cfg.task)
    train = {p.prompt for p in task.all_problems()} - {p.prompt for p in task.held_out()}
    assert len(task.held_out()) == 81 and not train & {p.prompt for p in task.held_out()}
    problem = task.held_out()[0]
    n = problem.answer.rsplit("#### ", 1)[1]
    assert task.score(f"{n}", problem).correct and task.score(f"It is {n}.", problem).correct
    assert not task.score(f"{n} + 1 = {int(n) + 1}", problem).correct  # the last number counts
