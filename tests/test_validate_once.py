"""Issue 28: one validation pass. `treepo-lab train` validates its config once (treepo_lab/config.py's
`validate`, called by the command line's load_config); the run, the preflight, the Trainer, the samplers
(the evaluation's included), the task, the advantages (every step) and the tracker trust it and check no
section, knob or sampler config again. Something built by hand is still checked where it is built."""
from __future__ import annotations

import dataclasses
from collections import Counter

import pytest
from test_trainer import FAST

import treepo_lab.config as config_module
from treepo_lab import cli, registry
from treepo_lab.algo.config import AdvantageConfig, LossConfig, RewardConfig
from treepo_lab.engines.config import EngineConfig
from treepo_lab.models.config import ModelConfig, TinyModelConfig, WarmstartConfig
from treepo_lab.registry import ConfigError
from treepo_lab.rollout import config as sampler_config
from treepo_lab.rollout import sampler as sampler_module
from treepo_lab.tasks.build import build_task
from treepo_lab.tasks.config import CheckConfig, TaskConfig
from treepo_lab.track.config import TrackingConfig
from treepo_lab.train.config import EvalConfig, TrainerConfig

SECTIONS = (ModelConfig, WarmstartConfig, TinyModelConfig, TaskConfig, CheckConfig, EngineConfig, AdvantageConfig,
            LossConfig, RewardConfig, TrainerConfig, EvalConfig, TrackingConfig)


@pytest.fixture()
def counted(monkeypatch):
    """Counts every validation: the whole config's, each section object's, each sampler config's, each knob check."""
    calls: Counter = Counter()

    def wrap(owner, name, label):
        real = getattr(owner, name)

        def counting(*args, **kwargs):
            calls[label(*args)] += 1
            return real(*args, **kwargs)
        monkeypatch.setattr(owner, name, counting)

    wrap(config_module, "validate", lambda cfg: "config.validate")
    for cls in SECTIONS:
        wrap(cls, "validate", lambda self, *a, cls=cls: f"{cls.__name__} {id(self)}")
    # a sampler config, by what it asks for (the training sampler, the evaluation's greedy one)
    key = lambda s, *a: f"sampler {s.kind} w={s.width} T={s.temperature}"  # noqa: E731
    wrap(sampler_config, "validate", key)
    wrap(sampler_module, "validate", key)
    wrap(registry.Registry, "knobs", lambda reg, name, *a: f"knobs {reg.kind} {name}")
    return calls


def test_a_train_run_validates_once(ws_cache, tmp_path, monkeypatch, counted):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code = cli.main(["train", "experiment=treepo_fixed_init", *FAST, f"warmstart.cache_dir={ws_cache}",
                     "tracking.enabled=true", f"tracking.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
                     "trainer.eval_every=1", "eval.sample_k=2"])  # 3 steps, 4 evaluations with samples
    assert code == 0
    assert counted["config.validate"] == 1, counted
    twice = {k: n for k, n in counted.items() if n > 1}
    assert not twice, twice  # no section object, sampler config or knob set checked a second time
    # and the one pass covered them: the sections, the training sampler, the evaluation's, both registries' knobs
    names = " ".join(counted)
    assert all(cls.__name__ in names for cls in SECTIONS), names
    assert "sampler tree w=4" in names and "sampler sequential w=1" in names  # eval.k=1: the greedy one
    assert "knobs sampler tree" in names and "knobs advantage estimator treepo" in names


def test_something_built_by_hand_is_still_checked_where_it_is_built():
    with pytest.raises(ConfigError, match="task.difficulty"):
        build_task(TaskConfig(name="chain", difficulty=1))
    with pytest.raises(ConfigError, match="task.path"):
        build_task(TaskConfig(name="file"))
    cfg = config_module.load_config("treepo_fixed_init")
    changed = dataclasses.replace(cfg, sampler=dataclasses.replace(cfg.sampler, width=1))
    with pytest.raises(ConfigError, match="sampler.width"):
        config_module.checked(changed)  # a changed config is a new object: checked again
    assert config_module.checked(cfg) is cfg


def test_task_rules_are_the_tasks_own_facts():
    """chain needs 2 operations, chain_mid's decisive step lies in the chain, a file task needs a path: each
    registered with its task, run by validate under the key the user wrote."""
    for overrides, line in [
        (["task.name=chain", "task.difficulty=1"], "task.difficulty=1 is not allowed: an integer >= 2 for task.name=chain"),
        (["task.name=chain_mid", "task.difficulty=3", "task.decisive_step=4"],
         "task.decisive_step=4 is not allowed: an integer in [1, task.difficulty=3]"),
        (["task.name=file"], "task.path=None is not allowed: a dataset file path"),
        (["warmstart.task.name=file", "warmstart.task.path=x.jsonl"], "warmstart.task.name='file' is not allowed: "
                                                                       "arith, chain, chain_mid (the embedded tasks)"),
    ]:
        with pytest.raises(ConfigError) as err:
            config_module.load_config("default", overrides)
        assert str(err.value).startswith(line), str(err.value)
