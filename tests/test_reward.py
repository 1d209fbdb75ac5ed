"""Reward shaping (scale, DAPO overlong penalty) and dynamic sampling (keep/drop, accumulation)."""
import pytest

from treepo_lab.algo.config import RewardConfig
from treepo_lab.algo.reward import (
    GroupAccumulator,
    filter_groups,
    overlong_penalty,
    shape_reward,
    tree_rewards,
)
from treepo_lab.rollout.tree import Leaf, Node, Tree
from treepo_lab.tasks.base import reward_for


def test_scale():
    assert [reward_for(c, "pm1") for c in (True, False)] == [1.0, -1.0]
    assert [reward_for(c, "01") for c in (True, False)] == [1.0, 0.0]
    with pytest.raises(ValueError):
        reward_for(True, "1")


@pytest.mark.parametrize("length, expected", [(0, 0.0), (80, 0.0), (81, -0.05), (90, -0.5), (100, -1.0)])
def test_overlong_penalty(length, expected):
    assert overlong_penalty(length, max_len=100, buffer=20) == pytest.approx(expected)
    assert overlong_penalty(length, max_len=100, buffer=20, factor=2.0) == pytest.approx(2 * expected)
    assert overlong_penalty(length, max_len=100, buffer=0) == 0.0


def test_released_setting():
    """7168 tokens, buffer 512, factor 1: the last 512 tokens ramp the penalty from 0 to -1."""
    cfg = RewardConfig(scale="pm1", overlong_buffer=512)
    assert shape_reward(True, 6656, cfg, 7168) == 1.0
    assert shape_reward(True, 6912, cfg, 7168) == pytest.approx(0.5)
    assert shape_reward(False, 7168, cfg, 7168) == pytest.approx(-2.0)
    assert shape_reward(True, 7168, RewardConfig(scale="01", overlong_buffer=512), 7168) == pytest.approx(0.0)


def tree_with(lengths):
    t = Tree(prompt_ids=[1])
    for i, n in enumerate(lengths):
        t.add(Node(i, None, 1, 1, tokens=[3] * n))
        t.leaves.append(Leaf([i], "finished"))
    return t


def test_tree_rewards_use_response_length():
    trees = [tree_with([7, 10]), tree_with([2])]
    cfg = RewardConfig(scale="pm1", overlong_buffer=4, overlong_penalty_factor=1.0)
    assert tree_rewards(trees, [[True, False], [True]], cfg, max_len=10) == [[0.75, -2.0], [1.0]]
    with pytest.raises(ValueError):
        tree_rewards(trees, [[True], [True]], cfg, max_len=10)


def test_filter_groups():
    trees = [tree_with([1] * n) for n in (2, 2, 2, 1, 0, 3)]
    correct = [[True, True], [True, False], [False, False], [False], [], [0, 1, 1]]
    kept, dropped = filter_groups(trees, correct)
    assert kept == [1, 3, 5] and dropped == 3


def test_accumulator_until_target():
    acc = GroupAccumulator(target=3, max_rounds=5)
    trees = [tree_with([1, 1]) for _ in range(3)]
    assert acc.add(["a", "b", "c"], trees, [[1, 0], [1, 1], [0, 1]]) == [0, 2]
    assert not acc.done
    acc.add(["d", "e", "f"], trees, [[1, 0], [1, 0], [0, 0]])
    assert acc.done and not acc.exhausted
    assert acc.take() == ["a", "c", "d"]  # the overshoot is truncated by order
    assert acc.metrics() == {"dynamic_sampling/rounds": 2.0, "dynamic_sampling/dropped_prompts": 2.0,
                             "dynamic_sampling/kept_prompts": 3.0}


def test_accumulator_round_limit():
    acc = GroupAccumulator(target=4, max_rounds=2)
    trees = [tree_with([1, 1])]
    acc.add(["a"], trees, [[1, 1]])
    assert not acc.done
    acc.add(["b"], trees, [[1, 0]])
    assert acc.done and acc.exhausted and acc.take() == ["b"]
    unlimited = GroupAccumulator(target=1, max_rounds=0)
    for _ in range(20):
        unlimited.add(["x"], trees, [[0, 0]])
    assert not unlimited.done
    unlimited.add_all(["y"])
    assert unlimited.done and unlimited.take() == ["y"]
