"""The harder embedded tasks (tasks/chain.py): chain's two methods, the warm start's flaw, config errors, and that
arith's and chain's warm-start cache keys and draws did not move; chain_mid's decisive step, its answers, its demos."""
from __future__ import annotations

import numpy as np
import pytest

from treepo_lab.config import load_config, warmstart_config
from treepo_lab.models.config import WarmstartConfig
from treepo_lab.models.warmstart import cache_key
from treepo_lab.registry import ConfigError
from treepo_lab.tasks.arith import Chain
from treepo_lab.tasks.build import build_task
from treepo_lab.tasks.chain import can_flaw, can_skip, grouped_text, in_order_text
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
    demos = [task.warm_demonstration(p, cfg, rng) for p in problems]
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


# ---- chain_mid: the decision in a middle segment ---------------------------------------------------------

MID = dict(name="chain_mid", difficulty=4, operand_max=19, held_out_size=200)


def _first_difference(a: str, b: str) -> int:
    return next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)


def test_chain_draws_are_unchanged():
    # the ids of chain's held-out problems and of its first training draws, as before chain_mid existed
    import hashlib

    task = build_task(TaskConfig(**{**CHAIN, "held_out_size": 200}))
    ids = [p.id for p in task.held_out()] + [p.id for p in task.sample(200, np.random.default_rng(0))]
    assert hashlib.sha256("|".join(ids).encode()).hexdigest()[:16] == "ff50d48882eb5338"
    assert ids[200:203] == ["17+13+2-1-10", "12-8-3-1+8", "17+15+14-1+11"]


@pytest.mark.parametrize("step, segment", [(3, 4), (2, 3)])
def test_mid_decision_sits_in_a_middle_segment(step, segment):
    task = build_task(TaskConfig(**{**MID, "decisive_step": step}))
    problems = task.sample(400, np.random.default_rng(0)) + task.held_out()
    bites = [can_skip(Chain.parse(p.id), step) for p in problems]
    assert np.mean(bites) > 0.85  # always a subtraction, unless the running value was 0
    l = 16  # the default segment length (rollout/config.py)
    segments = []
    for p, bite in zip(problems, bites):
        chain = Chain.parse(p.id)
        right, flawed = task.demonstration(p), task.demonstration(p, flawed=True)
        assert right == in_order_text(chain) and 90 <= len(right) <= 112  # 6-7 segments of 16
        assert min(chain.partials()) >= 0
        if bite:
            lines = flawed.splitlines()
            value = chain.partials()[step - 1]
            assert lines[step] == f"Step {step}: {value}+{chain.operands[step]}={value + chain.operands[step]}."
            segments.append(_first_difference(right, flawed) // l + 1)  # 1-based segment of the deciding token
        else:
            assert flawed == right
    assert set(segments) == {segment}  # the operator, copied from the prompt in the right version


def test_mid_answers_are_checked_by_the_task():
    task = build_task(TaskConfig(**MID))
    chain = Chain((17, 13, 2, 4, 10), ("+", "+", "-", "+"))
    p = task.problem(chain)
    right, flawed = task.demonstration(p), task.demonstration(p, flawed=True)
    assert right.endswith("Step 3: 32-4=28.\nStep 4: 28+10=38.\nThe answer is \\boxed{38}")
    assert flawed.endswith("Step 3: 32+4=36.\nStep 4: 36+10=46.\nThe answer is \\boxed{46}")
    assert task.score(right, p).correct and not task.score(flawed, p).correct
    for q in task.sample(300, np.random.default_rng(2)):
        assert task.score(task.demonstration(q), q).correct
        assert task.score(task.demonstration(q, flawed=True), q).correct == (not can_skip(Chain.parse(q.id), 3))
    held = {q.id for q in task.held_out()}
    assert len(held) == 200 and not held & {q.id for q in task.sample(2000, np.random.default_rng(0))}


def test_mid_warm_demonstrations_follow_the_rate():
    task = build_task(TaskConfig(**MID))
    cfg = WarmstartConfig(task=TaskConfig(**MID), step_flaw_rate=0.6)
    rng = np.random.default_rng(1)
    problems = task.sample(800, rng)
    demos = [task.warm_demonstration(p, cfg, rng) for p in problems]
    assert all(d.startswith("A: In order.\nStep 1: ") for d in demos)  # one method only
    flawed = [d != task.demonstration(p) for d, p in zip(demos, problems)]
    wrong = [not task.score(d, p).correct for d, p in zip(demos, problems)]
    assert flawed == wrong
    bite = np.mean([can_skip(Chain.parse(p.id), 3) for p in problems])
    assert abs(np.mean(flawed) - 0.6 * bite) < 0.05


def test_mid_cache_keys():
    mid = WarmstartConfig(task=TaskConfig(**MID))
    chain = WarmstartConfig(task=TaskConfig(**CHAIN))
    assert cache_key(chain) == "a8689ab925f4f065"  # chain's entry before chain_mid existed
    assert cache_key(WarmstartConfig(task=TaskConfig(**CHAIN), step_flaw_rate=0.1)) == "a8689ab925f4f065"
    assert cache_key(WarmstartConfig(step_flaw_rate=0.1)) == "dd9ab709ff4fbb15"  # arith's, too
    assert cache_key(WarmstartConfig(task=TaskConfig(**{**CHAIN, "decisive_step": 2}))) == "a8689ab925f4f065"
    assert cache_key(mid) not in (cache_key(chain), cache_key(WarmstartConfig()))
    assert cache_key(mid) != cache_key(WarmstartConfig(task=TaskConfig(**MID), step_flaw_rate=0.5))
    assert cache_key(mid) != cache_key(WarmstartConfig(task=TaskConfig(**{**MID, "decisive_step": 2})))
    assert cache_key(mid) == cache_key(WarmstartConfig(task=TaskConfig(**MID), flaw_rate=0.1, grouped_share=0.1))
    assert cache_key(mid) == cache_key(WarmstartConfig(task=TaskConfig(**{**MID, "held_out_size": 7})))


def test_mid_runs_by_override():
    cfg = load_config("treepo_fixed_init", ["task.name=chain_mid", "task.difficulty=4", "task.operand_max=19"])
    ws = warmstart_config(cfg)
    assert ws.task.name == "chain_mid" and ws.task.decisive_step == 3 and ws.step_flaw_rate == 0.6
    assert TaskConfig().decisive_step == 3 and WarmstartConfig().flaw_rate == 0.8  # chain's knobs as they were


@pytest.mark.parametrize("overrides", [
    ["task.name=chain_mid", "task.difficulty=4", "task.decisive_step=0"],
    ["task.name=chain_mid", "task.difficulty=2", "task.decisive_step=3"],
    ["task.name=chain_mid", "task.difficulty=4", "task.operand_max=19", "warmstart.step_flaw_rate=1.5"],
])
def test_mid_bad_values_name_the_key(overrides):
    key = "warmstart.step_flaw_rate" if "step_flaw_rate" in overrides[-1] else "task.decisive_step"
    with pytest.raises(ConfigError, match=key):
        cfg = load_config("default", overrides)
        build_task(cfg.task)
