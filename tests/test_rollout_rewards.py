"""`treepo-lab rollout` writes the reward training would give: reward.scale and the overlong penalty."""
from __future__ import annotations

import json

import pytest
from test_trainer import FAST

from treepo_lab.algo.config import RewardConfig
from treepo_lab.algo.reward import shape_reward
from treepo_lab.cli import main


def test_rollout_json_rewards_are_shaped(tmp_path, ws_cache):
    out = tmp_path / "trees.json"
    over = [o for o in FAST if o.startswith(("warmstart.", "sampler."))]
    assert main(["rollout", "n_prompts=2", f"out={out}", f"warmstart.cache_dir={ws_cache}", *over,
                 "reward.scale=01", "reward.overlong_buffer=24", "seed=1"]) == 0
    cfg, max_len = RewardConfig(scale="01", overlong_buffer=24), 4 * 8
    leaves = [(tree, leaf) for tree in json.loads(out.read_text()) for leaf in tree["leaves"]]
    assert leaves
    lengths = []
    for tree, leaf in leaves:
        n = len(leaf["full_ids"]) - len(tree["prompt_ids"])
        lengths.append(n)
        assert leaf["reward"] == pytest.approx(shape_reward(leaf["correct"], n, cfg, max_len))
    assert any(n > max_len - 24 for n in lengths)  # the penalty applies to some leaf: the check can tell
