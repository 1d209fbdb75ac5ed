"""Sweep specs: the grammar (parsed by Hydra's override parser), conditional spaces, grids, and every
rejection case, each refused with key and value before any Optuna study or MLflow store exists."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from treepo_lab.registry import ConfigError
from treepo_lab.sweep.driver import run_sweep
from treepo_lab.sweep.grammar import parse_values
from treepo_lab.sweep.space import grid_points, marginal_points, run_name
from treepo_lab.sweep.spec import load_spec, parse_spec
from treepo_lab.sweep.validate import validate_spec

SWEEPS = Path(__file__).resolve().parent.parent / "sweeps"


def spec(**fields):
    raw = {"name": "t", "experiment": "treepo_fixed_init", "search_space": {"sampler.branch": "choice(2, 4)"}}
    raw.update(fields)
    return parse_spec(raw)


def test_grammar_maps_to_optuna_distributions():
    p = parse_values("k", "choice(a, b, 'c d')")
    assert isinstance(p.distribution, CategoricalDistribution) and p.values == ["a", "b", "c d"]
    p = parse_values("k", "range(2, 10, 2)")  # Hydra's range: stop excluded
    assert p.values == [2, 4, 6, 8] and p.distribution == IntDistribution(2, 8, step=2)
    assert parse_values("k", "range(0.5, 2.0, 0.5)").values == [0.5, 1.0, 1.5]
    p = parse_values("k", "interval(0.1, 1)")
    assert p.distribution == FloatDistribution(0.1, 1.0) and not p.finite
    assert parse_values("k", "int(interval(1, 5))").distribution == IntDistribution(1, 5)
    assert parse_values("k", "tag(log, interval(1e-4, 1e-2))").distribution == FloatDistribution(1e-4, 1e-2, log=True)
    assert parse_values("k", [1, 2]).values == [1, 2]
    p = parse_values("k", "choice(fixed_div, {kind: random_div, min: 2})")  # a dict value survives
    assert p.decode(p.values[1]) == {"kind": "random_div", "min": 2}


def test_conditional_space_and_grid_points():
    s = spec(search_space={"sampler.div_policy": "choice(fixed_avg, logprob_weighted_div)",
                           "sampler.div_temperature": {"values": "choice(0.5, 2.0)",
                                                       "when": {"sampler.div_policy": "logprob_weighted_div"}},
                           "sampler.branch": "range(2, 4)"})
    pts = grid_points(s.params)
    assert len(pts) == (1 + 2) * 2  # the temperature only where the policy has one
    assert {"sampler.div_policy": "fixed_avg", "sampler.branch": 3} in pts
    assert all(("sampler.div_temperature" in p) == (p["sampler.div_policy"] == "logprob_weighted_div") for p in pts)
    assert run_name(7, {"sampler.div_policy": "logprob_weighted_div", "sampler.branch": 2}, 1) == "t07 div=lp b=2 s1"
    assert len(marginal_points(s.params)) == 2 + 2 + 2


def test_shipped_specs_validate():
    for path in sorted(SWEEPS.glob("*.yaml")):
        s = validate_spec(load_spec(path))
        assert s.objectives and s.seeds, path.name
    demo = load_spec(SWEEPS / "demo.yaml")
    assert demo.grid and len(grid_points(demo.params)) == 4 and demo.seeds == [0, 1]
    assert len(load_spec(SWEEPS / "paper_ablations.yaml").seeds) == 3


@pytest.mark.parametrize("fields, key, words", [
    ({"search_space": {"sampler.div_polcy": "choice(fixed_avg)"}}, "search_space", "did you mean sampler.div_policy"),
    ({"search_space": {"sampler.branch": "choice()"}}, "search_space.sampler.branch", "at least one value"),
    ({"search_space": {"sampler.branch": "range(8, 2)"}}, "search_space.sampler.branch", "empty (reversed?)"),
    ({"search_space": {"trainer.lr": "interval(1e-3, 1e-5)"}}, "search_space.trainer.lr", "lo < hi"),
    ({"search_space": {"trainer.lr": "tag(log, interval(0, 1e-3))"}}, "search_space.trainer.lr", "lo > 0"),
    ({"objectives": [{"metric": "eval/acuracy"}]}, "objectives[0].metric", "did you mean eval/accuracy"),
    ({"objectives": [{"metric": "eval/accuracy", "direction": "up"}]}, "objectives[0].direction", "maximize or minimize"),
    ({"search_space": {"sampler.width": "choice(4, 1)"}}, "sampler.width", "sweep point sampler.width=1"),
    ({"search_space": {"experiment": "choice(grpo, grpo_tree)"}}, "experiment", "did you mean grpo_tree_sampling"),
    ({"sampler": {"name": "tpe", "n_startup": 3}}, "sampler.n_startup", "did you mean n_startup_trials"),
    ({"sampler": "cmaes"}, "sampler.name", "one of tpe, random, grid, gp, nsga2"),
    ({"pruner": "median", "objectives": [{"metric": "eval/accuracy"}, {"metric": "time/wall_s", "direction": "minimize"}]},
     "pruner.name", "multi-objective"),
    ({"search_space": {"trainer.lr": "interval(1e-5, 1e-3)"}, "sampler": "grid"}, "grid.trainer.lr", "finite"),
    ({"search_space": {"seed": "choice(0, 1)"}}, "search_space", "seeds:"),
    ({"search_space": {"sampler.branch": {"values": "choice(2, 4)", "when": {"sampler.kind": "tree"}}}},
     "search_space.sampler.branch.when", "a swept key listed before"),
    ({"seeds": []}, "seeds", "a count >= 1"),
    ({"n_trails": 3}, "n_trails", "did you mean n_trials"),
])
def test_rejections_name_key_and_value(fields, key, words):
    with pytest.raises(ConfigError) as err:
        validate_spec(spec(**fields))
    assert err.value.key == key, str(err.value)
    assert words in str(err.value)


def test_refused_spec_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"experiment": "treepo_fixed_init", "search_space": {"sampler.width": "choice(4, 1)"}}))
    with pytest.raises(ConfigError, match="sampler.width=1"):
        run_sweep(str(path), [], tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]  # no journal, no mlflow.db, no runs/


def test_command_line_overrides_and_spec_fields():
    s = load_spec(SWEEPS / "demo.yaml", ["sweep.n_trials=2", "sweep.seeds=[3]", "trainer.steps=3"])
    assert s.seeds == [3] and s.overrides[-1] == "trainer.steps=3"
    with pytest.raises(ConfigError, match="did you mean seeds"):
        load_spec(SWEEPS / "demo.yaml", ["sweep.sedes=[3]"])
    with pytest.raises(ConfigError, match="either a fixed override or a swept key"):
        load_spec(SWEEPS / "demo.yaml", ["experiment=grpo"])
