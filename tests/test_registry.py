"""The experiment registry and the command line: every experiment composes and validates; bad values
fail before any compute with a message naming the key, the value and what is allowed."""
from __future__ import annotations

import subprocess
import sys

import pytest

from treepo_lab.cli import main
from treepo_lab.config import list_experiments, load_config
from treepo_lab.registry import ConfigError

EXPECTED = {"grpo", "grpo_tree_sampling", "treepo_fixed_init", "treepo_more_init", "adv_group_size",
            "adv_subgroup_rejection", "adv_no_root", "seg_16x8", "seg_8x16", "seg_4x32", "seg_2x64",
            "low_prob_encourage", "high_prob_encourage", "naive2low_schedule", "fallback_misaligned",
            "no_fallback", "entropy_branching", "default", "demo"}


def test_registry_has_the_paper_settings():
    assert EXPECTED <= set(list_experiments())


@pytest.mark.parametrize("name", sorted(list_experiments()))
def test_every_experiment_composes_and_validates(name):
    cfg = load_config(name)
    assert cfg.name == name
    assert list_experiments()[name], "every experiment has a one-line description"


def test_one_config_value_separates_grpo_from_grpo_tree_sampling():
    a, b = load_config("grpo"), load_config("grpo_tree_sampling")
    assert a.sampler.kind == "sequential" and b.sampler.kind == "tree"
    assert a.advantage == b.advantage and a.trainer == b.trainer


def test_segment_grid_keeps_d_times_l_constant():
    budgets = {load_config(n).sampler.max_response_len for n in ("seg_16x8", "seg_8x16", "seg_4x32", "seg_2x64")}
    assert budgets == {128}


BAD = [
    (["sampler.branch=0"], "sampler.branch", "0"),
    (["sampler.width=0"], "sampler.width", "0"),
    (["sampler.segment_len=0"], "sampler.segment_len", "0"),
    (["sampler.max_depth=0"], "sampler.max_depth", "0"),
    (["sampler.init_div_range=[8,2]"], "sampler.init_div_range", "[8, 2]"),
    (["sampler.div_policy=nope"], "sampler.div_policy", "fixed_avg"),
    (["sampler.fallback_cut=sideways"], "sampler.fallback_cut", "no_fallback"),
    (["sampler.fallback_window=5"], "sampler.fallback_window", "multiple"),
    (["sampler.budget_control=by_random_div_8to2"], "sampler.budget_control", "by_random_div"),
    (["advantage.estimator=ppo_magic"], "advantage.estimator", "treepo"),
    (["sampler.kind=sequential", "advantage.estimator=treepo"], "advantage.estimator", "sequential"),
    (["advantage.aggregation=median"], "advantage.aggregation", "average"),
    (["loss.loss_agg_mode=sum"], "loss.loss_agg_mode", "token-mean"),
    (["loss.clip_low=1.5"], "loss.clip_low", "[0, 1)"),
    (["trainer.lr=0"], "trainer.lr", "> 0"),
    (["trainer.mini_batch_prompts=3"], "trainer.mini_batch_prompts", "divisor"),
    (["eval.temperature=0", "eval.k=4"], "eval.k", "greedy"),
    (["engine.name=tgi"], "engine.name", "hf"),
    (["task.name=imagenet"], "task.name", "arith"),
    (["reward.scale=2"], "reward.scale", "pm1"),
]


@pytest.mark.parametrize("overrides,key,allowed", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_values_name_key_value_and_allowed(overrides, key, allowed):
    with pytest.raises(ConfigError) as err:
        load_config("default", overrides)
    msg = str(err.value)
    assert key in msg and allowed in msg, msg


def test_cli_user_mistakes_are_one_line(capsys):
    for argv in (["show", "experiment=nope"], ["show", "sampler.widht=3"], ["show", "sampler.width=abc"],
                 ["train", "sampler.branch=0"], ["frobnicate"], ["resume", "/no/such/run"],
                 ["eval", "checkpoint=/no/such/ckpt"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 2 and "Traceback" not in "\n".join(err), (argv, err)
        assert err[1].startswith("hint:")


def test_cli_list_show_and_help(capsys):
    assert main(["--help"]) == 0
    assert "train" in capsys.readouterr().out
    assert main(["list"]) == 0
    assert "treepo_more_init" in capsys.readouterr().out
    assert main(["show", "experiment=treepo_more_init", "sampler.width=8"]) == 0
    out = capsys.readouterr().out
    assert "width: 8" in out and "init_div_range:" in out


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "treepo_lab.cli", "list"], capture_output=True, text=True, check=True)
    assert "grpo" in out.stdout
