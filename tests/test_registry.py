"""The experiment registry and the command line: every experiment composes and validates; bad values
fail before any compute with a message naming the key, the value and what is allowed."""
from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from hydra.errors import HydraException

from treepo_lab.cli import main
from treepo_lab.config import list_experiments, load_config
from treepo_lab.registry import ConfigError

EXPECTED = {"grpo", "grpo_tree_sampling", "treepo_fixed_init", "treepo_more_init", "adv_group_size",
            "adv_subgroup_rejection", "adv_no_root", "seg_16x8", "seg_8x16", "seg_4x32", "seg_2x64",
            "low_prob_encourage", "high_prob_encourage", "naive2low_schedule", "fallback_misaligned",
            "no_fallback", "entropy_branching", "default", "demo", "adv_average"}


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
    (["sampler.init_div.kind=random", "sampler.init_div.min=8", "sampler.init_div.max=2"], "sampler.init_div.max",
     ">= init_div.min=8"),
    (["sampler.init_div.kind=wide"], "sampler.init_div.kind", "fixed, random"),
    (["sampler.div_policy=nope"], "sampler.div_policy", "fixed_avg"),
    (["sampler.fallback_cut=sideways"], "sampler.fallback_cut", "no_fallback"),
    (["sampler.fallback_window=5"], "sampler.fallback_window", "multiple"),
    (["sampler.budget.kind=random_div", "sampler.budget.min=8", "sampler.budget.max=2"], "sampler.budget.max", ">= budget.min=8"),
    (["sampler.budget.kind=by_fixed_div"], "sampler.budget.kind", "fixed_div, random_div, step_token_budget"),
    (["sampler.budget.kind=step_token_budget", "sampler.budget.tokens=0"], "sampler.budget.tokens", ">= 1"),
    (["sampler.stop_rules=[boxed,eos,max_depth]"], "sampler.stop_rules", "missing: max_length"),
    (["sampler.stop_rules=[boxd,eos,max_length,max_depth]"], "sampler.stop_rules", "boxed, boxed_with_eos"),
    (["sampler.stop_rules=[boxed,boxed_with_eos,eos,max_length,max_depth]"], "sampler.stop_rules", "at most one"),
    (["sampler.fallback_candidates=boxed_ge_window_2"], "sampler.fallback_candidates", "boxed_ge_window,"),
    (["sampler.fallback_min_windows=0"], "sampler.fallback_min_windows", ">= 1"),
    (["sampler.shape=8by16"], "sampler.shape", "DxL"),
    (["sampler.shape=4x32", "sampler.max_depth=8"], "sampler.max_depth", "null or 4"),
    (["experiment=seg_8x16", "sampler.segment_len=32"], "sampler.segment_len", "null or 16"),
    (["sampler.fallback_window=0"], "sampler.fallback_window", "null (= segment_len)"),
    (["sampler.min_len=0"], "sampler.min_len", "null (off)"),
    (["loss.norm_horizon=0"], "loss.norm_horizon", "null for d*l"),
    (["sampler.kind=beam"], "sampler.kind", "sequential, tree"),
    (["eval.sampler=beam"], "eval.sampler", "sequential, tree"),
    (["engine.device=cpu"], "engine.device", ""),
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
    experiment = next((o.split("=", 1)[1] for o in overrides if o.startswith("experiment=")), "default")
    overrides = [o for o in overrides if not o.startswith("experiment=")]
    with pytest.raises((ConfigError, HydraException)) as err:
        load_config(experiment, overrides)
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
    assert "width: 8" in out and "init_div:" in out and "kind: random" in out


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "treepo_lab.cli", "list"], capture_output=True, text=True, check=True)
    assert "grpo" in out.stdout


def test_shape_sets_depth_and_segment_length_together():
    cfg = load_config("default", ["sampler.shape=4x32"])
    assert (cfg.sampler.max_depth, cfg.sampler.segment_len, cfg.sampler.max_response_len) == (4, 32, 128)
    same = load_config("default", ["sampler.shape=4x32", "sampler.max_depth=4"])  # agreeing keys are fine
    assert same.sampler == cfg.sampler
    keys = load_config("default", ["sampler.max_depth=4", "sampler.segment_len=32"])
    assert keys.sampler == cfg.sampler  # the two keys or the shape: the same validated config ("4x32")
    plain = load_config("default")
    assert (plain.sampler.max_depth, plain.sampler.segment_len, plain.sampler.shape) == (8, 16, "8x16")
    # a sweep picks the shape on a registry entry that set one: the override replaces it
    assert load_config("seg_8x16", ["sampler.shape=2x64"]).sampler.max_depth == 2


def test_fig6_ablations_change_one_thing_on_the_size_weighted_reference():
    ref = load_config("adv_group_size").advantage
    assert ref.aggregation == "group_size"
    assert load_config("adv_subgroup_rejection").advantage == dataclasses.replace(ref, remove_zero_std_subgroups=True)
    assert load_config("adv_no_root").advantage == dataclasses.replace(ref, drop_root=True)
    assert load_config("adv_average").advantage == dataclasses.replace(ref, aggregation="average")


def test_structured_knobs_replace_names_with_numbers_in_them():
    cfg = load_config("treepo_more_init", ["sampler.budget.kind=random_div", "sampler.budget.min=1",
                                           "sampler.budget.max=3", "sampler.fallback_candidates=boxed_ge_window",
                                           "sampler.fallback_min_windows=2",
                                           "sampler.stop_rules=[repetition,boxed_with_eos,eos,max_length,max_depth]"])
    s = cfg.sampler
    assert (s.init_div.kind, s.init_div.min, s.init_div.max) == ("random", 2, 8)
    assert (s.budget.kind, s.budget.min, s.budget.max) == ("random_div", 1, 3)
    assert s.stop_rules[0] == "repetition" and s.fallback_min_windows == 2
