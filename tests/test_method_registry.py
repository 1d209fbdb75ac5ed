"""A method is one registered entry: a toy advantage estimator written as one new file is picked up by the
config check, the strategy label and the sweep space with no edit anywhere else; its knobs are checked."""
from __future__ import annotations

import importlib
import sys

import pytest
import yaml

from treepo_lab.algo.advantage import compute_advantages
from treepo_lab.algo.registries import ESTIMATORS
from treepo_lab.config import load_config
from treepo_lab.registry import ConfigError
from treepo_lab.rollout.tree import Leaf, Node, Tree
from treepo_lab.sweep.space import run_name
from treepo_lab.sweep.spec import parse_spec
from treepo_lab.sweep.validate import validate_spec
from treepo_lab.track.strategy import strategy_tags

# the whole of the new method: what README "Add a method" says to write
TOY_FILE = '''
from treepo_lab.algo.registries import ESTIMATORS
from treepo_lab.algo.tree_stats import mean, outcome_runs
from treepo_lab.registry import Knob, number_in


@ESTIMATORS.register("toy_scaled", whiten=False, needs_tree=True, label="toy",
                     knobs={"scale": Knob(1.0, "a number in (0, 10]", number_in(0, 10), code="x")})
def toy_scaled(trees, rewards, cfg):
    """scale * (R - prompt mean): a toy that reads one knob."""
    raw = [[cfg.params["scale"] * (r - mean(rs)) for r in rs] for rs in rewards]
    return outcome_runs(trees, raw), raw
'''


@pytest.fixture
def toy(tmp_path, monkeypatch):
    (tmp_path / "toy_method.py").write_text(TOY_FILE)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("toy_method")
    yield "toy_scaled"
    # leave the process's registry as it was
    ESTIMATORS._items.pop("toy_scaled"), ESTIMATORS._info.pop("toy_scaled")
    sys.modules.pop("toy_method")


def _tree() -> Tree:
    t = Tree(prompt_ids=[1])
    t.add(Node(0, None, 1, 1, tokens=[2, 3]))
    t.add(Node(1, None, 1, 1, tokens=[4]))
    t.leaves = [Leaf([0], "finished"), Leaf([1], "finished")]
    return t


def test_a_toy_estimator_touches_one_new_file(toy):
    # the config check: its knob is accepted with a valid value, refused with a bad one or a typo
    cfg = load_config("default", [f"advantage.estimator={toy}", "+advantage.params.scale=2.5"])
    with pytest.raises(ConfigError, match=r"advantage.params.scale=0 is not allowed: a number in \(0, 10\]"):
        load_config("default", [f"advantage.estimator={toy}", "+advantage.params.scale=0"])
    with pytest.raises(ConfigError, match="advantage.params.scael=.* a knob of advantage estimator toy_scaled: one of scale"):
        load_config("default", [f"advantage.estimator={toy}", "+advantage.params.scael=2"])
    # its facts: needs_tree, so sequential rollouts are refused naming the tree samplers
    with pytest.raises(ConfigError, match="sampler.kind='sequential'; or set sampler.kind to a tree sampler"):
        load_config("default", [f"advantage.estimator={toy}", "sampler.kind=sequential"])
    # the implementation runs with the knob resolved
    res = compute_advantages([_tree()], [[1.0, -1.0]], cfg.advantage)
    assert res.raw == [[2.5, -2.5]] and res.token_adv[0][0].tolist() == [2.5, 2.5]
    # the strategy label
    from omegaconf import OmegaConf
    plain = OmegaConf.to_container(OmegaConf.structured(cfg))
    tags = strategy_tags(plain)
    assert tags["treepo.strategy"] == "toy x2.5"
    assert "toy_scaled" in tags["treepo.strategy.advantage"] and "scale=2.5" in tags["treepo.strategy.advantage"]
    # the sweep space: swept like any key, checked point by point, named by its label
    def sweep(overrides: str, grid: str):
        return parse_spec(yaml.safe_load(f"""
name: toy
experiment: default
overrides: [{overrides}]
grid:
  {grid}
objectives: [{{metric: eval/accuracy, direction: maximize}}]
seeds: [0]
"""))

    validate_spec(sweep("trainer.steps=2", f"advantage.estimator: choice(treepo, {toy})"))
    validate_spec(sweep(f"advantage.estimator={toy}", "advantage.params.scale: choice(0.5, 2.0)"))
    with pytest.raises(ConfigError, match=r"advantage.params.scale=20.0 is not allowed: a number in \(0, 10\]"):
        validate_spec(sweep(f"advantage.estimator={toy}", "advantage.params.scale: choice(2.0, 20.0)"))
    assert run_name(3, {"advantage.estimator": toy, "advantage.params.scale": 2.0}, 1) == "t03 adv=toy scale=2 s1"


def test_every_registered_method_names_itself_in_the_strategy_tag():
    labels = {name: load_config(name) for name in ("treerl", "treerpo", "spo_tree", "latr")}
    from omegaconf import OmegaConf
    short = {n: strategy_tags(OmegaConf.to_container(OmegaConf.structured(c)))["treepo.strategy"]
             for n, c in labels.items()}
    assert short == {"treerl": "treerl eptree", "treerpo": "treerpo", "spo_tree": "spotree", "latr": "latr"}
    assert len(set(short.values())) == len(short)
