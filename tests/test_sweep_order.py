"""Unit sweeps: `order: shuffled` (each (grid point, seed) its own trial, enqueued in a seeded shuffle) and
`blocks:` (groups of arms with their own seeds and keys), on Optuna journal storages in tmp_path; one tiny
end-to-end sweep (slow) checks trials, MLflow runs and resume."""
from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow import MlflowClient
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from treepo_lab.registry import ConfigError
from treepo_lab.sweep import storage as sto
from treepo_lab.sweep import study as st
from treepo_lab.sweep.space import run_name, split_unit, suggest_unit, trial_config, units
from treepo_lab.sweep.paper import restrict_blocks
from treepo_lab.sweep.spec import SEED_PARAM, apply_cli, parse_spec
from treepo_lab.sweep.trial import PruningHook
from treepo_lab.sweep.validate import validate_spec

ARMS = {"sampler.branch": "choice(2, 3, 4, 5)"}


def spec(**fields):
    raw = {"name": "o", "experiment": "treepo_fixed_init", "grid": ARMS, "seeds": [0, 1, 2], "order": "shuffled"}
    raw.update(fields)
    return parse_spec({k: v for k, v in raw.items() if v is not None})


BLOCKS = [{"grid": {"sampler.branch": "choice(2, 4)", "warmstart.seed": "choice(0, 1)"}, "seeds": [0, 1, 2, 3]},
          {"grid": {"sampler.branch": [3, 4]}},  # the top-level seeds
          {"grid": {"sampler.div_policy": "choice(fixed_avg, logprob_weighted_div)",
                    "sampler.div_temperature": {"values": "choice(0.5, 2.0)",
                                                "when": {"sampler.div_policy": "logprob_weighted_div"}}},
           "seeds": [7]}]


def blocks_spec(**fields):
    return spec(**{"grid": None, "order": None, "blocks": BLOCKS, "seeds": [5, 6], **fields})


def key(unit: dict) -> tuple:
    return tuple(sorted(unit.items()))


def journal(tmp_path: Path):
    return sto.open_storage(str(tmp_path / "o.journal"))


def test_shuffled_order_is_a_seeded_permutation_of_all_units():
    s = spec()
    assert s.per_unit and s.unit_seeds == [0, 1, 2]
    got = units(s)
    every = [{"sampler.branch": b, SEED_PARAM: seed} for b in (2, 3, 4, 5) for seed in (0, 1, 2)]
    assert sorted(map(key, got)) == sorted(map(key, every)) and len(got) == 12
    assert units(spec()) == got  # the same order_seed: the same order (a re-created study matches)
    assert units(spec(order_seed=1)) != got
    assert units(spec(order="grid")) == []  # order: grid with grid: today's trials, a point with its seeds
    assert not spec(order="grid").per_unit and spec(order=None).order == "grid"
    # arms interleaved: some arm's seeds are not one consecutive run of trials
    runs = [len(list(g)) for _, g in itertools.groupby(u["sampler.branch"] for u in got)]
    assert max(runs) < 3 and len(runs) > 4
    assert run_name(7, {"sampler.branch": 3}, 2) == "t07 b=3 s2"


def test_blocks_have_their_own_seeds_and_keys():
    s = blocks_spec()
    got = units(s)
    assert len(got) == 2 * 2 * 4 + 2 * 2 + (1 + 2) * 1 and s.order == "shuffled"
    with_ws = [u for u in got if "warmstart.seed" in u]
    assert len(with_ws) == 16 and {u[SEED_PARAM] for u in with_ws} == {0, 1, 2, 3}
    second = [u for u in got if "warmstart.seed" not in u and "sampler.branch" in u]
    assert sorted(map(key, second)) == sorted(key({"sampler.branch": b, SEED_PARAM: x}) for b in (3, 4) for x in (5, 6))
    third = [u for u in got if "sampler.div_policy" in u]
    assert all(u[SEED_PARAM] == 7 and ("sampler.div_temperature" in u) == (u["sampler.div_policy"] != "fixed_avg")
               for u in third) and len(third) == 3
    # one Param per key: the union of the blocks' values, first seen first
    assert s.param("sampler.branch").distribution == CategoricalDistribution([2, 4, 3])
    assert s.unit_seeds == [0, 1, 2, 3, 5, 6, 7]
    unshuffled = units(blocks_spec(order="grid"))  # written out: block order
    assert unshuffled[:16] == [u for u in unshuffled if "warmstart.seed" in u] and sorted(map(key, unshuffled)) == \
        sorted(map(key, got))
    # shuffled within each block, the blocks in the order written (the first block is the most wanted)
    assert got[:16] == with_ws and got[16:20] == second and got[20:] == third
    assert with_ws != [u for u in unshuffled if "warmstart.seed" in u]
    cfg = trial_config(s, {"sampler.branch": 4, "warmstart.seed": 1}, 3)
    assert (cfg.seed, cfg.sampler.branch, cfg.warmstart.seed) == (3, 4, 1)
    assert validate_spec(s) is s  # every unit composed and validated


def test_optuna_takes_merged_distributions_across_trials_and_workers(tmp_path):
    s = blocks_spec()
    study = st.create_study(s, journal(tmp_path), "sqlite:///unused.db")
    # two "workers" (their own storage objects on one journal) take turns: each replays the other's writes, and a
    # journal silently drops a param whose distribution clashes with another worker's
    workers = [study, optuna.load_study(study_name="o", storage=journal(tmp_path))]
    seen = []
    for i in itertools.count():
        w = workers[i % 2]
        if not any(t.state == TrialState.WAITING for t in w.get_trials(deepcopy=False)):
            break
        trial = w.ask()
        point, seed = suggest_unit(trial, s)
        seen.append({**point, SEED_PARAM: seed})
        w.tell(trial, float(seed))
    assert seen == units(s)  # in the enqueued (shuffled) order, each unit once
    fresh = optuna.load_study(study_name="o", storage=journal(tmp_path)).get_trials()
    assert [t.params for t in fresh] == units(s) and all(t.state == TrialState.COMPLETE for t in fresh)
    assert not st.work_left(s, fresh)


def test_a_failed_unit_is_retried_with_its_seed(tmp_path):
    s = spec(grid={"sampler.branch": [2, 4]}, seeds=[0, 1])
    study = st.create_study(s, journal(tmp_path), "sqlite:///unused.db")
    retry = sto.CloseRunsAndRetry(max_retry=3)
    first = study.ask()
    lost = split_unit(units(s)[0])
    assert suggest_unit(first, s) == lost
    study.tell(first, state=TrialState.FAIL)
    retry(study, study._storage.get_trial(first._trial_id))  # params stored: the retry copies them
    early = study.ask()  # dies before it suggests anything: only its enqueued fixed params name its unit
    early_unit = split_unit(units(s)[1])
    study.tell(early, state=TrialState.FAIL)
    retry(study, study._storage.get_trial(early._trial_id))
    done = {}
    while st.work_left(s, study.get_trials(deepcopy=False)):
        t = study.ask()
        done[t.number] = suggest_unit(t, s)
        study.tell(t, 1.0)
    trials = study.get_trials()
    reruns = {t.system_attrs["retry_history"][-1]: t.number for t in trials if t.system_attrs.get("retry_history")}
    assert done[reruns[first.number]] == lost and done[reruns[early.number]] == early_unit
    assert Counter(t.state.name for t in trials) == {"COMPLETE": 4, "FAIL": 2}
    assert sorted(map(repr, done.values())) == sorted(repr(split_unit(u)) for u in units(s))  # none lost or repeated


def test_pruning_hook_on_one_seed(tmp_path):
    s = spec(pruner={"name": "threshold", "lower": 0.5})
    study = st.create_study(s, journal(tmp_path), "sqlite:///unused.db")
    trial = study.ask()
    _, seed = suggest_unit(trial, s)
    hook = PruningHook(trial, s, seed, 0, 10, {})
    hook(0, {"eval/accuracy": 0.9})
    with pytest.raises(optuna.TrialPruned, match=f"step 1 of seed {seed}"):
        hook(1, {"eval/accuracy": 0.1})
    assert study._storage.get_trial(trial._trial_id).intermediate_values == {0: 0.9, 1: 0.1}


def test_resume_identity_and_command_line():
    raw = {"name": "o", "experiment": "treepo_fixed_init", "grid": ARMS, "seeds": [0, 1]}
    assert st._identity(raw) == st._identity({**raw, "order": None})  # older specs keep resuming
    assert st._identity(raw) != st._identity({**raw, "order": "shuffled"})
    s = parse_spec(apply_cli(raw, ["sweep.order=shuffled", "sweep.order_seed=3"]))
    assert s.per_unit and s.order_seed == 3


def test_restrict_blocks():
    raw = [{"grid": {"experiment": "choice(grpo, treepo_fixed_init)", "warmstart.seed": "choice(0, 1)"}, "seeds": [0, 1]},
           {"grid": {"experiment": ["seg_8x16", "no_fallback"],
                     "sampler.branch": {"values": [2, 4], "when": {"experiment": "seg_8x16"}},
                     "trainer.lr": {"values": [1e-4], "when": {"sampler.branch": [2]}}}},
           {"grid": {"sampler.branch": [2]}}]
    got = restrict_blocks(raw, ["treepo_fixed_init", "no_fallback"], base="grpo")
    assert got == [{"grid": {"experiment": ["treepo_fixed_init"], "warmstart.seed": "choice(0, 1)"}, "seeds": [0, 1]},
                   {"grid": {"experiment": ["no_fallback"]}}]
    assert restrict_blocks(raw, ["grpo"], base="grpo")[-1] == raw[-1] and len(restrict_blocks(raw, ["x"])) == 1
    assert raw[0]["grid"]["experiment"] == "choice(grpo, treepo_fixed_init)"  # the input is left as it was
    s = parse_spec({"name": "p", "blocks": restrict_blocks(raw, ["seg_8x16"], base="grpo"), "seeds": [0]})
    assert [u for u in units(s) if "trainer.lr" in u] and s.param("experiment").values == ["seg_8x16"]


@pytest.mark.parametrize("fields, key, words", [
    ({"blocks": [], "grid": None}, "blocks", "a non-empty list"),
    ({"blocks": "x", "grid": None}, "blocks", "a non-empty list"),
    ({"blocks": [3], "grid": None}, "blocks[0]", "a mapping {grid:"),
    ({"blocks": [{"grid": ARMS, "seed": [1]}], "grid": None}, "blocks[0]", "a mapping {grid:"),
    ({"blocks": [{"seeds": [1]}], "grid": None}, "blocks[0]", "a mapping {grid:"),
    ({"blocks": [{"grid": ARMS, "seeds": []}], "grid": None}, "blocks[0].seeds", "a count >= 1"),
    ({"blocks": [{"grid": {"trainer.lr": "interval(1e-5, 1e-3)"}}], "grid": None}, "blocks[0].grid.trainer.lr", "finite"),
    ({"blocks": [{"grid": {"seed": "choice(0, 1)"}}], "grid": None}, "blocks[0].grid", "seeds:"),
    ({"grid": {"seed": "choice(0, 1)"}}, "grid", "seeds:"),
    ({"blocks": BLOCKS, "grid": ARMS}, "blocks", "exactly one of"),
    ({"blocks": BLOCKS, "grid": None, "search_space": ARMS}, "blocks", "exactly one of"),
    ({"blocks": BLOCKS, "grid": None, "sampler": "tpe"}, "sampler.name", "grid (or leave sampler out)"),
    ({"order": "random"}, "order", "grid (a trial is a grid point"),
    ({"grid": None, "search_space": ARMS}, "order", "shuffled needs grid: or blocks:"),
    ({"order_seed": "1"}, "order_seed", "an integer"),
    ({"order_seed": True}, "order_seed", "an integer"),
    ({"blocks": [{"grid": ARMS}, {"grid": {"sampler.branch": [5, 6]}}], "grid": None}, "blocks[1]",
     "blocks[0] has it too"),
    ({"blocks": [{"grid": {"sampler.brnch": [2]}}], "grid": None}, "blocks", "did you mean sampler.branch"),
    ({"blocks": [{"grid": {"sampler.width": [4, 1]}, "seeds": [3]}], "grid": None}, "sampler.width",
     "sweep point sampler.width=1 seed=3"),
])
def test_bad_specs_give_one_line_errors(fields, key, words):
    with pytest.raises(ConfigError) as err:
        validate_spec(spec(**fields))
    assert err.value.key == key, str(err.value)
    assert words in str(err.value) and "\n" not in str(err.value)


# ---- end to end: a real sweep of 3 units on the tiny model (tests/test_sweep.py's budget) ----

def tiny(ws_cache: str, out: Path) -> dict:
    return {"warmstart.steps": 30, "warmstart.eval_size": 0, "warmstart.batch_size": 16, "warmstart.cache_dir": ws_cache,
            "trainer.steps": 2, "trainer.prompts_per_step": 2, "trainer.mini_batch_prompts": 1, "trainer.warmup_steps": 0,
            "trainer.eval_every": 1, "trainer.save_every": 0, "trainer.output_dir": str(out / "runs"),
            "sampler.width": 4, "sampler.max_depth": 4, "sampler.segment_len": 8, "sampler.fallback_block_size": 8,
            "eval.n_problems": 4, "eval.batch_size": 4, "reward.dynamic_sampling": False, "reward.overlong_buffer": 24,
            "tracking.system_metrics": False, "tracking.log_trees_every": 0}


@pytest.mark.slow
def test_block_sweep_end_to_end_and_resume(tmp_path, ws_cache, monkeypatch, capsys):
    from treepo_lab.sweep.driver import run_sweep

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parent.parent))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # restored afterwards, whatever the sweep sets
    path = tmp_path / "units.yaml"
    path.write_text(yaml.safe_dump({
        "name": "units", "experiment": "treepo_fixed_init", "overrides": tiny(ws_cache, tmp_path),
        "blocks": [{"grid": {"sampler.branch": [2]}, "seeds": [0, 1]}, {"grid": {"sampler.branch": [1]}, "seeds": [4]}]}))
    summary = run_sweep(str(path), [], workers=1, tracking_uri=uri)
    assert summary["status"] == "finished" and "[units] 3/3 done: 3 complete" in capsys.readouterr().out
    study = optuna.load_study(study_name="units", storage=sto.open_storage(str(tmp_path / "optuna" / "units.journal")))
    trials = study.get_trials()
    assert sorted((t.params["sampler.branch"], t.params[SEED_PARAM]) for t in trials) == [(1, 4), (2, 0), (2, 1)]
    assert all(t.state == TrialState.COMPLETE and t.user_attrs["objective_std"] == [0.0] for t in trials)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("units")
    kids = [r for r in client.search_runs([exp.experiment_id]) if "treepo.trial" in r.data.tags]
    by_trial = {int(r.data.tags["treepo.trial"]): r for r in kids}
    assert len(kids) == 3 and set(by_trial) == {t.number for t in trials}
    for t in trials:
        r = by_trial[t.number]
        assert r.data.tags["treepo.seed"] == str(t.params[SEED_PARAM]) and "sweep.seed" not in r.data.tags
        assert r.info.run_name == f"t{t.number:02d} b={t.params['sampler.branch']} s{t.params[SEED_PARAM]}"
        assert t.values[0] == r.data.metrics["eval/accuracy"]  # the unit's objective is its one seed's value
    again = run_sweep(str(path), [], workers=1, tracking_uri=uri)  # resume: every unit is finished, none reruns
    assert again["status"] == "finished" and len(study.get_trials()) == 3
