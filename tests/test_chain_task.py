"""The harder embedded task (tasks/chain.py): its two methods, the warm start's flaw, config errors, and that
arith's warm-start cache keys did not move."""
from __future__ import annotations

import numpy as np
import pytest

from treepo_lab.config import load_config, warmstart_config
from treepo_lab.models.config import WarmstartConfig
from treepo_lab.models.warmstart import cache_key, flawed_demonstration
from treepo_lab.registry import ConfigError
from treepo_lab.tasks.arith import Chain
from treepo_lab.tasks.build import build_task
from treepo_lab.tasks.chain import can_flaw, grouped_text, in_order_text
from treepo_lab.tasks.config import TaskConfig

CHAIN = dict(name="chain", difficulty=4, operand_max=19, held_out_size=50)


def test_both_methods_are_right_and_the_flaw_is_wrong():
    task = build_task(TaskConfig(**CHAIN))
    chain = Chain((17, 13, 2, 1, 10), ("+", "+", "-", "-"))
    p = task.problem(chain)
    assert in_order_text(chain).startswith("A: In order.\nStep 1: 17+13=30.")
    assert grouped_text(chain) == ("A: Grouped.\nAdd: 17+13=30, 30+2=32.\nSub: 1+10=11.\nThen 32-11=21.\n"
                                   "The answer is \\boxed{21}")
    assert task.score(in_order_text(chain), p).correct and task.score(grouped_text(chain), p).correct
    assert can_flaw(chain) and not task.score(grouped_text(chain, flawed=True), p).correct
    one_minus = Chain((5, 3, 2, 4, 1), ("+", "-", "+", "+"))
    assert grouped_text(one_minus, flawed=True) == grouped_text(one_minus)  # the habit needs 2 subtractions


def test_responses_are_long_and_the_flaw_bites_often():
    task = build_task(TaskConfig(**CHAIN))
    problems = task.sample(400, np.random.default_rng(0))
    lengths = [len(task.demonstration(p)) for p in problems] + [len(task.demonstration(p, "grouped")) for p in problems]
    assert 80 <= np.mean(lengths) <= 128 and max(lengths) <= 128  # fits the default 8x16 segments
    share = np.mean([can_flaw(Chain.parse(p.id)) for p in problems])
    assert 0.5 < share < 0.85  # greedy decoding of the habit is right on the rest: ~20-40% before RL
    held = {p.id for p in task.held_out()}
    assert not held & {p.id for p in problems}


def test_warm_demonstrations_follow_the_shares():
    task = build_task(TaskConfig(**CHAIN))
    cfg = WarmstartConfig(task=TaskConfig(**CHAIN), grouped_share=0.7, flaw_rate=1.0)
    rng = np.random.default_rng(1)
    problems = task.sample(600, rng)
    demos = [flawed_demonstration(task, p, cfg, rng) for p in problems]
    grouped = np.mean([d.startswith("A: Grouped.") for d in demos])
    assert 0.64 < grouped < 0.76
    wrong = [not task.score(d, p).correct for d, p in zip(demos, problems)]
    assert all(w == (d.startswith("A: Grouped.") and can_flaw(Chain.parse(p.id)))
               for w, d, p in zip(wrong, demos, problems))


def test_arith_cache_keys_unchanged_and_chain_keys_differ():
    # the hash of the default arith warm start before the chain task existed: existing caches stay valid
    assert cache_key(WarmstartConfig()) == "dd9ab709ff4fbb15"
    assert cache_key(WarmstartConfig(grouped_share=0.1)) == "dd9ab709ff4fbb15"  # a chain-only knob
    chain = WarmstartConfig(task=TaskConfig(**CHAIN))
    assert cache_key(chain) != cache_key(WarmstartConfig())
    assert cache_key(chain) != cache_key(WarmstartConfig(task=TaskConfig(**CHAIN), grouped_share=0.5))


def test_experiments_run_on_chain_by_override():
    cfg = load_config("grpo", ["task.name=chain", "task.difficulty=4", "task.operand_max=19"])
    assert warmstart_config(cfg).task.name == "chain"


@pytest.mark.parametrize("overrides, key", [
    (["task.name=chain", "task.difficulty=1"], "task.difficulty"),
    (["task.name=chain", "task.operand_max=1"], "task.operand_max"),
    (["warmstart.grouped_share=1.5"], "warmstart.grouped_share"),
])
def test_bad_values_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key):
        cfg = load_config("default", overrides)
        build_task(cfg.task)
