"""GSM8K-style word problems with reference solutions ending in `#### N`, generated deterministically.

The shipped file experiments/data/word_problems.jsonl (experiments/real_small.yaml) is this module's
output; regenerate it with `python -m treepo_lab.tasks.word_problems > experiments/data/word_problems.jsonl`
(tests/test_word_problems.py checks that the two agree); `... word_problems sums > experiments/data/sums.jsonl`
writes the one-step sums of experiments/real_learn.yaml. One or two steps with small numbers: a 135M instruct
model gets some right and some wrong, which is what RL needs.
"""
from __future__ import annotations

import json
import sys

import numpy as np

NAMES = ["Ava", "Ben", "Chloe", "Dan", "Emma", "Finn", "Grace", "Hugo", "Ivy", "Jack", "Lena", "Maya", "Noah",
         "Omar", "Priya", "Sam", "Tara", "Yusuf"]
ITEMS = ["apples", "books", "marbles", "stickers", "pencils", "cookies", "shells", "cards", "stamps", "eggs"]


def _problem(rng: np.random.Generator) -> tuple[str, str]:
    """(question, solution ending in `#### N`) from one of the templates below."""
    name, other = rng.choice(NAMES, size=2, replace=False)
    item = rng.choice(ITEMS)
    a, b, c = (int(x) for x in rng.integers(2, 20, size=3))
    kind = int(rng.integers(0, 6))
    if kind == 0:
        q = f"{name} has {a} {item}. {other} gives {name} {b} more. How many {item} does {name} have now?"
        steps, n = [f"{a} + {b} = {a + b}"], a + b
    elif kind == 1:
        a = a + b  # enough to give away
        q = f"{name} has {a} {item} and gives {b} of them to {other}. How many {item} does {name} have left?"
        steps, n = [f"{a} - {b} = {a - b}"], a - b
    elif kind == 2:
        a, b = a % 9 + 2, b % 9 + 2
        q = f"{name} buys {a} bags of {item}. Each bag holds {b} {item}. How many {item} does {name} buy?"
        steps, n = [f"{a} * {b} = {a * b}"], a * b
    elif kind == 3:
        b = b % 6 + 2
        total = a * b
        q = f"{name} shares {total} {item} equally among {b} friends. How many {item} does each friend get?"
        steps, n = [f"{total} / {b} = {a}"], a
    elif kind == 4:
        c = min(c, a + b)  # never more than there are
        q = f"{name} has {a} {item}. {name} finds {b} more and then loses {c}. How many {item} does {name} have now?"
        steps, n = [f"{a} + {b} = {a + b}", f"{a + b} - {c} = {a + b - c}"], a + b - c
    else:
        a, b = a % 9 + 2, b % 5 + 2
        q = (f"{name} has {a} boxes with {b} {item} in each box, and {other} has {c} {item}. "
             f"How many {item} do they have together?")
        steps, n = [f"{a} * {b} = {a * b}", f"{a * b} + {c} = {a * b + c}"], a * b + c
    return q, "\n".join(steps) + f"\n#### {n}"


def generate(n: int = 300, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows, seen = [], set()
    while len(rows) < n:
        q, a = _problem(rng)
        if q not in seen:
            seen.add(q)
            rows.append({"question": q, "answer": a})
    return rows


def sums(seed: int = 0) -> list[dict]:
    """Every `What is a + b?` with a, b in 2..19, once each (324), shuffled (experiments/data/sums.jsonl,
    experiments/real_learn.yaml): SmolLM2-135M gets about one in six right at T=0.7 and most prompts mix right
    and wrong answers (README, "A real model that learns"); the held-out pairs are never trained on."""
    pairs = [(a, b) for a in range(2, 20) for b in range(2, 20)]
    order = np.random.default_rng(seed).permutation(len(pairs))
    return [{"question": f"What is {a} + {b}?", "answer": f"{a} + {b} = {a + b}\n#### {a + b}"}
            for a, b in (pairs[i] for i in order)]


def to_jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


if __name__ == "__main__":  # python -m treepo_lab.tasks.word_problems [sums]
    sys.stdout.write(to_jsonl(sums() if sys.argv[1:] == ["sums"] else generate()))
