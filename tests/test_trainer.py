"""Trainer: smoke training on the tiny model, exact resume after a kill, the NaN guard, reward errors.

The model is the embedded tiny Llama after a very short warm start (cached per test session), so
these run the real forward/backward, real engine and real sampler in seconds.
"""
from __future__ import annotations

import math
import time

import pytest
import torch

from treepo_lab.config import load_config
from treepo_lab.train import checkpoint as ckpt
from treepo_lab.train.trainer import Trainer, TrainingDiverged

# fast settings: a barely warm-started model, small trees, varying rewards through the overlong penalty
# (a barely trained model is always wrong; the penalty still gives the leaves different rewards)
FAST = [
    "warmstart.steps=30", "warmstart.eval_size=0", "warmstart.batch_size=16",
    "trainer.steps=3", "trainer.prompts_per_step=2", "trainer.mini_batch_prompts=1", "trainer.warmup_steps=0",
    "trainer.lr=1e-3", "trainer.weight_decay=0.0", "trainer.eval_before=false", "trainer.eval_every=0",
    "trainer.save_every=0", "sampler.width=4", "sampler.max_depth=4", "sampler.segment_len=8",
    "sampler.fallback_block_size=8", "eval.n_problems=8", "eval.batch_size=8",
    "reward.dynamic_sampling=false", "reward.overlong_buffer=24", "tracking.enabled=false",
]


def make_cfg(ws_cache, *extra, experiment="treepo_fixed_init"):
    return load_config(experiment, FAST + [f"warmstart.cache_dir={ws_cache}", *extra])


def test_three_steps_change_every_parameter(ws_cache):
    trainer = Trainer(make_cfg(ws_cache))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    history = trainer.fit(progress=False)
    unchanged = [n for n, p in trainer.model.named_parameters() if p.requires_grad and torch.equal(p, before[n])]
    assert not unchanged, f"parameters not updated: {unchanged}"
    steps = [h for h in history if "actor/pg_loss" in h]
    assert len(steps) == 3
    assert all(math.isfinite(h["actor/grad_norm"]) for h in steps)
    assert any(h["actor/grad_norm"] > 0 for h in steps)
    assert all(h["cumulative/rollout/decoded_tokens"] > 0 for h in steps)
    assert "eval/accuracy" in history[-1]  # a final evaluation


def test_sequential_grpo_runs(ws_cache):
    history = Trainer(make_cfg(ws_cache, "trainer.steps=1", experiment="grpo")).fit(progress=False)
    assert [h for h in history if "actor/pg_loss" in h]


TIMING = ("timing_s/", "time/", "rollout/traj_per_s", "rollout/tokens_per_s", "rollout/decode_tokens_per_s",
          "rollout/forward_s", "rollout/overhead", "eval/wall_s", "cumulative/rollout/forward_s",
          "cumulative/timing_s", "rollout/gen_s")


def _comparable(h: dict) -> dict:
    return {k: v for k, v in h.items() if not any(k.startswith(t) for t in TIMING)}


def test_resume_after_kill_matches_uninterrupted_run(ws_cache, tmp_path):
    extra = ["trainer.steps=4", "trainer.save_every=2", "trainer.eval_every=2", "trainer.eval_before=true"]
    full = Trainer(make_cfg(ws_cache, *extra), run_dir=tmp_path / "full").fit(progress=False)

    killed = Trainer(make_cfg(ws_cache, *extra), run_dir=tmp_path / "killed")
    real_step = killed.train_step

    def die_at_third(step):
        if step == 2:
            raise KeyboardInterrupt  # killed after the step-2 checkpoint was written
        return real_step(step)

    killed.train_step = die_at_third
    with pytest.raises(KeyboardInterrupt):
        killed.fit(progress=False)
    last = ckpt.latest_checkpoint(tmp_path / "killed" / "checkpoints")
    assert last is not None and last.name == "step-000002"

    resumed = Trainer(make_cfg(ws_cache, *extra), run_dir=tmp_path / "killed", resume_from=last)
    assert resumed.step == 2
    cpu_at_kill = killed.history[-1]["time/cpu_s"]  # the step-2 evaluation: the checkpoint's total
    assert resumed.cpu_s == cpu_at_kill > 0
    after = resumed.fit(progress=False)
    # training CPU seconds: > 0, growing every step, continued (not restarted) by the resume
    for n, history in ((4, full), (2, after)):
        steps = [h for h in history if "timing_s/cpu_step" in h]
        cpu = [h["time/cpu_s"] for h in steps]
        assert len(cpu) == n and all(h["timing_s/cpu_step"] > 0 for h in steps)
        assert 0 < cpu[0] and all(a < b for a, b in zip(cpu, cpu[1:])) and all("time/wall_s" in h for h in steps)
    assert after[0]["time/cpu_s"] == pytest.approx(cpu_at_kill + after[0]["timing_s/cpu_step"])
    assert all("time/cpu_s" in h for h in full + after if "eval/accuracy" in h)  # beside time/wall_s
    expect = [_comparable(h) for h in full if h["train/step"] > 2]
    got = [_comparable(h) for h in after]
    assert len(got) == len(expect) and got
    for e, g in zip(expect, got):
        assert e.keys() == g.keys()
        for k in e:
            assert e[k] == pytest.approx(g[k], rel=1e-6, abs=1e-9) or (math.isnan(e[k]) and math.isnan(g[k])), k


def test_nan_loss_stops_and_keeps_last_good_checkpoint(ws_cache, tmp_path):
    trainer = Trainer(make_cfg(ws_cache, "trainer.steps=3", "trainer.save_every=1"), run_dir=tmp_path / "run")
    real_loss = trainer.loss_fn

    def nan_on_third(*args, **kwargs):
        loss, m = real_loss(*args, **kwargs)
        return (loss * float("nan"), m) if trainer.step == 2 else (loss, m)

    trainer.loss_fn = nan_on_third
    with pytest.raises(TrainingDiverged, match="non-finite loss"):
        trainer.fit(progress=False)
    good = ckpt.latest_checkpoint(tmp_path / "run" / "checkpoints")
    assert good.name == "step-000002"
    # the kept checkpoint is intact: it loads, and its weights are finite
    fresh = Trainer(make_cfg(ws_cache), resume_from=good)
    assert all(torch.isfinite(p).all() for p in fresh.model.parameters())


def test_reward_exception_scores_wrong_and_is_counted(ws_cache):
    trainer = Trainer(make_cfg(ws_cache, "trainer.steps=1"))
    real_score = trainer.task.score
    calls = {"n": 0}

    def flaky(text, problem):
        calls["n"] += 1
        if calls["n"] % 2:
            raise ZeroDivisionError("a broken reward function")
        return real_score(text, problem)

    trainer.task.score = flaky
    metrics = trainer.train_step(0)
    assert metrics["reward/errors"] == pytest.approx(calls["n"] // 2 + calls["n"] % 2)
    assert metrics["reward/errors"] > 0


def faulty_verifier(trainer, hang_at=(), raise_at=()):
    """Make the task's verifier hang (0.5 s) or raise on the given calls (1-based); returns the call count."""
    real_score, calls = trainer.task.score, {"n": 0}

    def score(text, problem):
        calls["n"] += 1
        if calls["n"] in hang_at:
            time.sleep(0.5)
        if calls["n"] in raise_at:
            raise ValueError("a broken verifier")
        return real_score(text, problem)

    trainer.task.score = score
    return calls


def test_reward_timeout_scores_wrong_and_is_counted(ws_cache):
    trainer = Trainer(make_cfg(ws_cache, "trainer.steps=1", "trainer.reward_timeout_s=0.05"))
    faulty_verifier(trainer, hang_at={1})  # a hung verifier: the leaf is scored wrong, the step goes on
    metrics = trainer.train_step(0)
    assert metrics["reward/timeouts"] == 1
    assert metrics["train/n_leaves"] > 0


def test_dynamic_sampling_rounds_give_consistent_ratio_metrics(ws_cache):
    """DAPO resampling over several rounds: the step's ratios agree with its own summed token counts
    (they used to keep the last round's: recompute_ratio 1.000 beside sums that give ~2)."""
    trainer = Trainer(make_cfg(ws_cache, "reward.dynamic_sampling=true", "reward.max_resample_rounds=3"))
    m = trainer.train_step(0)
    assert m["dynamic_sampling/rounds"] == 3  # the barely trained model is always wrong: every round dropped
    processed = m["rollout/decoded_tokens"] + m["rollout/prefill_tokens"]
    assert m["rollout/n_traj"] == 3 * 2 * 4
    assert m["rollout/recompute_ratio"] == pytest.approx(processed / m["rollout/unique_tree_tokens"])
    assert m["rollout/token_saving"] == pytest.approx(1 - processed / m["rollout/independent_tokens"])
    assert m["rollout/token_saving_vs_sequential"] == pytest.approx(1 - processed / m["rollout/sequential_tokens"])
    assert m["tree/response_length/mean"] == pytest.approx(m["rollout/generated_tokens"] / m["rollout/n_traj"])
    assert m["tree/leaves_per_prompt/mean"] == pytest.approx(4.0)
    trainer.close()


def test_on_eval_hook_sees_every_evaluation_and_its_errors_propagate(ws_cache, tmp_path):
    from treepo_lab.train.run import run_experiment

    seen = []
    extra = ["trainer.steps=2", "trainer.eval_every=1", "trainer.eval_before=true"]
    Trainer(make_cfg(ws_cache, *extra), on_eval=lambda step, m: seen.append((step, m["eval/accuracy"]))).fit(
        progress=False)
    assert [s for s, _ in seen] == [0, 1, 2]

    class Prune(Exception):
        pass

    def prune_at_1(step, metrics):
        if step == 1:
            raise Prune(step)

    with pytest.raises(Prune):
        run_experiment(make_cfg(ws_cache, *extra, f"trainer.output_dir={tmp_path}"), progress=False, on_eval=prune_at_1)


def test_evaluation_scores_under_the_time_limit(ws_cache):
    trainer = Trainer(make_cfg(ws_cache, "trainer.reward_timeout_s=0.05", "eval.n_problems=4"))
    faulty_verifier(trainer, hang_at={2}, raise_at={3})  # evaluation goes on, both scored wrong
    metrics, records = trainer.evaluate()
    assert metrics["eval/reward_timeouts"] == 1 and metrics["eval/reward_errors"] == 1
    assert len(records) == 4 and records[1]["correct"] == [False] and records[2]["correct"] == [False]
    trainer.close()


def test_skipped_steps_are_counted_and_said(ws_cache, capsys):
    trainer = Trainer(make_cfg(ws_cache, "trainer.steps=1", "reward.dynamic_sampling=true",
                               "reward.max_resample_rounds=2", "eval.n_problems=2"))
    history = trainer.fit(progress=False)
    assert trainer.skipped_steps == 1 and history[0]["train/skipped"] == 1.0
    err = capsys.readouterr().err
    assert "step 1 skipped" in err and "no step learned anything" in err


def test_cpu_seconds_are_summed_over_ranks(ws_cache, monkeypatch):
    """Each rank's CPU delta per step goes through the world's all_gather and is summed: the run's total."""
    import dataclasses

    from treepo_lab.train import trainer as trainer_module
    from treepo_lab.train.distributed import World

    @dataclasses.dataclass(frozen=True)
    class TwoRankCpu(World):  # a world of one whose CPU gather answers for two equal ranks
        def all_gather(self, obj):
            return [obj, obj] if isinstance(obj, float) else [obj]

    ticks = iter(range(100))
    monkeypatch.setattr(trainer_module, "process_cpu_s", lambda: float(next(ticks)))  # 1 s per reading
    trainer = Trainer(make_cfg(ws_cache, "trainer.steps=2"))
    trainer.world = TwoRankCpu()
    steps = [h for h in trainer.fit(progress=False) if "timing_s/cpu_step" in h]
    assert [h["timing_s/cpu_step"] for h in steps] == [2.0, 2.0]
    assert [h["time/cpu_s"] for h in steps] == [2.0, 4.0] and trainer.cpu_s == 4.0
    trainer.close()


def test_warmup_defaults_to_a_tenth_of_the_steps(ws_cache):
    from treepo_lab.registry import ConfigError

    cfg = load_config("default", ["trainer.steps=24"])
    assert cfg.trainer.warmup_steps == 2  # resolved at validation: the logged config shows the number
    assert load_config("default", ["trainer.steps=60"]).trainer.warmup_steps == 6
    assert load_config("default", ["trainer.steps=4"]).trainer.warmup_steps == 0
    assert load_config("default", ["trainer.steps=24", "trainer.warmup_steps=5"]).trainer.warmup_steps == 5
    assert load_config("default", ["trainer.steps=24", "trainer.warmup_steps=24"]).trainer.warmup_steps == 24
    for bad in (-1, 25):
        with pytest.raises(ConfigError) as e:
            load_config("default", ["trainer.steps=24", f"trainer.warmup_steps={bad}"])
        assert e.value.key == "trainer.warmup_steps" and "\n" not in str(e.value)
    # the schedule: linear over the resolved steps (the first step at half the peak of trainer.lr=1e-3)
    trainer = Trainer(make_cfg(ws_cache, "trainer.steps=20", "trainer.warmup_steps=null"))
    assert trainer.cfg.trainer.warmup_steps == 2
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.5e-3)
    trainer.close()


def test_eval_samples_give_a_smooth_accuracy_beside_the_greedy_one(ws_cache):
    from treepo_lab.registry import ConfigError
    from treepo_lab.train.config import EvalConfig

    base = Trainer(make_cfg(ws_cache, "eval.n_problems=6", "eval.batch_size=4"))
    greedy, _ = base.evaluate()
    base.close()
    trainer = Trainer(make_cfg(ws_cache, "eval.n_problems=6", "eval.batch_size=4", "eval.sample_k=2"))
    first, records = trainer.evaluate()
    again, _ = trainer.evaluate()
    trainer.close()
    assert 0.0 <= first["eval/sample_accuracy"] <= 1.0
    timeless = lambda m: {k: v for k, v in m.items() if k != "eval/wall_s"}  # noqa: E731
    assert timeless(first) == timeless(again)  # seeded: the same numbers twice
    assert all(len(r["sample_correct"]) == 2 for r in records)
    assert first["eval/sample_accuracy"] == pytest.approx(sum(c for r in records for c in r["sample_correct"]) / 12)
    assert first["eval/accuracy"] == greedy["eval/accuracy"] and "eval/sample_accuracy" not in greedy
    assert first["eval/decoded_tokens"] > greedy["eval/decoded_tokens"]  # the samples' tokens are counted
    with pytest.raises(ConfigError) as e:
        load_config("default", ["eval.sample_k=-1"])
    assert e.value.key == "eval.sample_k" and "an integer >= 0" in str(e.value)
    with pytest.raises(ConfigError, match="eval.sample_k"):
        EvalConfig(sample_k=1.5).validate()
