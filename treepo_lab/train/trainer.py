"""The TreePO trainer: the training loop, readable top to bottom.

`fit` is the loop (evaluate, step, log, checkpoint); `train_step` is one step as a handful of labelled
calls: sample trees (with DAPO dynamic sampling) -> score leaves -> advantages -> policy update ->
sync the engine. The pieces live beside it: scoring with its time limit and reward shaping in
algo/scoring.py and algo/reward.py, the PPO update in train/update.py, metric assembly in
train/metrics.py, evaluation in train/evaluate.py.

Every random draw of step s comes from generators seeded with (seed, s, purpose), and a rollout's from
(seed, s, purpose, the prompt's index in the step's batch), so a run resumed from a checkpoint continues
exactly as the uninterrupted run would, and a prompt gets the same tree at any world size.

Under torchrun (train/distributed.py) each rank samples and scores its share of the step's prompts, the
scored trees are gathered (every rank then holds the batch one process would), and the update is split
by prompt with gradients summed across ranks. Only rank 0 has a tracker, a progress bar and a run dir.
"""
from __future__ import annotations

import copy
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from treepo_lab.algo.advantage import AdvantageResult, annotate_leaves, compute_advantages
from treepo_lab.algo.registries import POLICY_LOSSES
from treepo_lab.algo.reward import GroupAccumulator, score_leaves
from treepo_lab.algo.scoring import Scorer
from treepo_lab.config import ExperimentConfig, checked, to_yaml
from treepo_lab.rollout.accounting import CumulativeCompute
from treepo_lab.rollout.sampler import RolloutResult, build_sampler
from treepo_lab.rollout.tree import Tree
from treepo_lab.seeding import derive_seed, seed_everything
from treepo_lab.track.null import NULL_TRACKER
from treepo_lab.train import checkpoint as ckpt
from treepo_lab.train import distributed, interrupt
from treepo_lab.train.evaluate import evaluate
from treepo_lab.train.metrics import batch_metrics, rollout_step_metrics
from treepo_lab.train.progress import StepProgress, eval_progress
from treepo_lab.train.packing import resolve_packing
from treepo_lab.train.setup import build_setup
from treepo_lab.train.update import (
    FORWARDS,
    LeafBatch,
    TrainingDiverged,
    first_epoch,
    forwards_per_rank,
    leaf_logprobs,
    mean_stats,
    minibatch_prompts,
    plan_minibatches,
    ppo_update,
)

__all__ = ["Trainer", "TrainingDiverged"]

MEMORY_HINT = ("out of memory during the rollout: lower trainer.prompts_per_step, sampler.width, "
               "sampler.max_depth*sampler.segment_len, or eval.batch_size; for vLLM lower "
               "engine.gpu_memory_utilization or engine.max_model_len")

SKIPPED = "every prompt was all-right or all-wrong in every DAPO round, nothing learned"

# purposes of derive_seed(run seed, step, purpose): one independent stream each
_PROBLEMS, _ROLLOUT, _EVAL, _MINIBATCH = 1, 100, 7, 999

EvalHook = Callable[[int, dict], None]


def process_cpu_s() -> float:
    """CPU seconds (user + system) of this process and of its children that have ended and been waited
    for: a cost that does not depend on who else uses the machine (wall time does)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


@dataclass
class Scored:
    """The trees of one prompt batch with their leaves' correctness and shaped rewards."""

    trees: list[Tree]
    correct: list[list[bool]]
    rewards: list[list[float]]


class Trainer:
    def __init__(self, cfg: ExperimentConfig | DictConfig, tracker=NULL_TRACKER,
                 resume_from: str | Path | None = None, run_dir: str | Path | None = None,
                 on_eval: EvalHook | None = None):
        """`on_eval(step, metrics)` is called after every held-out evaluation; what it raises propagates
        (a sweep prunes a trial that way)."""
        self.cfg = cfg = checked(cfg)  # every value checked before any compute (once per run)
        self.world = world = distributed.init_world(cfg.model.device)
        seed_everything(cfg.seed)
        # the model, task, prompts and engine as eval and rollout build them (train/setup.py); the HF engine
        # samples from the policy object itself, or under FSDP (whose forwards are collectives) from a whole
        # copy that follows the shards
        setup = build_setup(cfg, device=distributed.device_for(cfg.model.device, world),
                            sample_from_copy=world.distributed and cfg.trainer.parallel == "fsdp", adapters=True)
        self.model_path, policy, self.tokenizer = setup.model_dir, setup.model, setup.tokenizer
        self.task, self.prompts, self.engine = setup.task, setup.prompts, setup.engine
        self.sampler = build_sampler(cfg.sampler, self.engine, self.decode, self.tokenizer.eos_token_id)
        self.scorer = Scorer(self.task, self.decode, cfg.trainer.reward_timeout_s)
        self.loss_fn = POLICY_LOSSES.get(cfg.loss.name, "loss.name")
        if cfg.trainer.gradient_checkpointing:  # active in train mode only: the update, not the sampling
            policy.gradient_checkpointing_enable()
            if cfg.model.lora.r:  # frozen embeddings: the checkpointed blocks' input must carry a gradient
                policy.enable_input_require_grads()
        self.packing = resolve_packing(cfg.trainer.packing, policy)  # tree, or flat with the reason logged
        self.ref_model = None
        if cfg.loss.kl_coef > 0:
            ref = copy.deepcopy(policy).eval().requires_grad_(False)
            self.ref_model = distributed.wrap(ref, "fsdp", world) if cfg.trainer.parallel == "fsdp" else ref
        self.model = distributed.wrap(policy, cfg.trainer.parallel, world)  # the training module
        t = cfg.trainer
        # what trains: every weight, or the LoRA adapters alone (model.lora.r > 0: the rest is frozen)
        trained = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trained, lr=t.lr, weight_decay=t.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / t.warmup_steps) if t.warmup_steps else 1.0)
        self.step = 0
        self.cumulative = CumulativeCompute()
        self.wall_s = 0.0  # training wall time, carried across resumes
        # training CPU seconds of every rank (and its children), counted over the same spans as wall_s;
        # carried across resumes
        self.cpu_s = 0.0
        self.history: list[dict] = []  # every logged metric dict (also returned by fit)
        self.tracker = tracker if world.is_main else NULL_TRACKER
        self.on_eval = on_eval
        self.run_dir = Path(run_dir) if run_dir else None  # every rank saves (a collective); rank 0 writes
        self._progress = True
        self.skipped_steps = 0  # steps with nothing to learn (DAPO kept no prompt in any round)
        self._last_eval_step = -1
        self._last_trees: list[Tree] = []
        self.last_eval_records: list[dict] = []  # per-problem records of the latest evaluation
        if resume_from is not None:
            self._resume(Path(resume_from))

    # ---- the loop ------------------------------------------------------------------------------------
    def fit(self, progress: bool = True) -> list[dict]:
        cfg, tc = self.cfg, self.cfg.trainer
        self._progress = progress and self.world.is_main
        if self.run_dir is not None and self.world.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(to_yaml(cfg))
        if self.step == 0 and tc.eval_before:
            self._eval_and_log()
        start = time.perf_counter() - self.wall_s
        cpu_mark = process_cpu_s()  # cpu_s, like wall_s, counts from here (not the evaluation before)
        with StepProgress(tc.steps, initial=self.step, enabled=self._progress) as bar:
            while self.step < tc.steps and not (tc.max_wall_s > 0 and self.wall_s >= tc.max_wall_s):
                interrupt.check()
                metrics = self.train_step(self.step)
                self.step += 1
                if metrics.get("train/skipped"):
                    self.skipped_steps += 1
                    bar.note(f"step {self.step} skipped: {SKIPPED}")
                self.wall_s = time.perf_counter() - start
                cpu_now = process_cpu_s()
                cpu_step = float(sum(self.world.all_gather(cpu_now - cpu_mark)))  # every rank's, summed
                cpu_mark = cpu_now
                self.cpu_s += cpu_step
                metrics.update(self.cumulative.add(metrics))
                metrics["time/wall_s"] = self.wall_s
                metrics["time/cpu_s"] = self.cpu_s
                metrics["timing_s/cpu_step"] = cpu_step
                self._log(metrics)
                every = cfg.tracking.log_trees_every
                if every and (self.step % every == 0 or self.step == 1) and self._last_trees:
                    self._log_trees()
                if tc.eval_every > 0 and self.step % tc.eval_every == 0 and self.step < tc.steps:
                    self._eval_and_log()
                if tc.save_every > 0 and self.step % tc.save_every == 0:
                    self.save()
                bar.update(metrics)
        if self._last_eval_step != self.step:
            self._eval_and_log()
        self.save()
        if self.skipped_steps and self.skipped_steps == self.step:
            print(f"warning: no step learned anything ({SKIPPED}); try a task the model can sometimes solve "
                  "or more reward.max_resample_rounds", file=sys.stderr)
        return self.history

    # ---- one training step ---------------------------------------------------------------------------
    def train_step(self, step: int) -> dict:
        t0 = time.perf_counter()
        errors0, timeouts0 = self.scorer.errors, self.scorer.timeouts
        rounds, batch, groups = self.sample_and_score(step)
        errors, timeouts = np.sum(self.world.all_gather((self.scorer.errors - errors0, self.scorer.timeouts - timeouts0)),
                                  axis=0)
        metrics = {**rollout_step_metrics(rounds), **groups.metrics(), "timing_s/gen": time.perf_counter() - t0,
                   "reward/errors": errors, "reward/timeouts": timeouts}
        if not batch.trees:  # every prompt was all-right or all-wrong in every round: nothing to learn
            return {**metrics, "train/skipped": 1.0, "critic/score/mean": float("nan")}
        adv = compute_advantages(batch.trees, batch.rewards, self.cfg.advantage)
        annotate_leaves(batch.trees, batch.rewards, adv, self.cfg.advantage.estimator)
        metrics.update(batch_metrics(batch.trees, batch.correct, batch.rewards, adv))
        t1 = time.perf_counter()
        metrics.update(self.update_policy(batch.trees, adv, step))
        metrics["timing_s/update"] = time.perf_counter() - t1
        self.sync_engine()  # the engine samples from the new policy
        metrics["timing_s/step"] = time.perf_counter() - t0
        self._last_trees = batch.trees
        return metrics

    def sample_and_score(self, step: int) -> tuple[list[RolloutResult], Scored, GroupAccumulator]:
        """Generation rounds until prompts_per_step prompts are kept (DAPO dynamic sampling drops the
        prompts whose leaves are all right or all wrong; without it one round keeps everything)."""
        cfg = self.cfg
        groups = GroupAccumulator(cfg.trainer.prompts_per_step, cfg.reward.max_resample_rounds)
        rounds = []
        while not groups.done:
            result, problems = self._rollout(step, groups.rounds)
            correct, rewards = score_leaves(result.trees, problems, self.scorer, cfg.reward,
                                            cfg.sampler.max_response_len)
            result, correct, rewards = self._gather(result, correct, rewards)
            rounds.append(result)
            items = list(zip(result.trees, correct, rewards))
            if cfg.reward.dynamic_sampling:
                groups.add(items, result.trees, correct)
            else:
                groups.add_all(items)
        kept = groups.take()
        return rounds, Scored([t for t, _, _ in kept], [c for _, c, _ in kept], [r for _, _, r in kept]), groups

    def _rollout(self, step: int, round_: int):
        """This rank's share of the round's prompts (all of them in one process), each keyed by its index."""
        cfg = self.cfg
        rng = np.random.default_rng(derive_seed(cfg.seed, step, _PROBLEMS + round_))
        problems = [self.prompts.problem(p) for p in self.task.sample(cfg.trainer.prompts_per_step, rng)]
        share = self.world.share(len(problems))
        problems = [problems[i] for i in share]
        try:
            result = self.sampler.rollout([self.encode(p.prompt) for p in problems], step=step,
                                          total_steps=cfg.trainer.steps,
                                          seed=derive_seed(cfg.seed, step, _ROLLOUT + round_), keys=list(share))
        except torch.OutOfMemoryError as err:
            raise RuntimeError(MEMORY_HINT) from err
        return result, problems

    def _gather(self, result: RolloutResult, correct, rewards):
        """The whole round's scored trees on every rank, in prompt order (ranks hold contiguous shares)."""
        if not self.world.distributed:
            return result, correct, rewards
        parts = self.world.all_gather((result, correct, rewards))
        return (RolloutResult.merge([p[0] for p in parts]), [c for p in parts for c in p[1]],
                [r for p in parts for r in p[2]])

    def update_policy(self, trees: list[Tree], adv: AdvantageResult, step: int) -> dict:
        """Old (and reference) log-probs before any change, then the PPO epochs, then the lr schedule."""
        cfg, tc = self.cfg, self.cfg.trainer
        batch = LeafBatch.from_trees(trees, self.tokenizer.pad_token_id)
        per_mb = minibatch_prompts(len(trees), tc.mini_batch_prompts or tc.prompts_per_step, tc.prompts_per_step)
        gen = torch.Generator().manual_seed(derive_seed(cfg.seed, step, _MINIBATCH))
        tree = self.packing == "tree"
        plan = plan_minibatches(batch, tc.ppo_epochs, per_mb, tc.micro_batch_size, gen,
                                pack_tokens=tc.pack_tokens if tree else None, shares=self.world.size)
        # the same forwards as the first update (ratio 1): this rank's share, gathered for later epochs
        mine, n_forwards = first_epoch(plan, self.world.rank), forwards_per_rank(plan)
        temp, forward = cfg.sampler.temperature, FORWARDS[self.packing]
        self.model.eval()
        old = self._merge(leaf_logprobs(self.model, batch, mine, temp, forward, n_forwards))
        ref = None
        if self.ref_model is not None:
            ref = self._merge(leaf_logprobs(self.ref_model, batch, mine, temp, forward, n_forwards))
        stats = ppo_update(self.model, self.optimizer, batch, plan, old, adv.flat(), self.loss_fn, cfg.loss,
                           temperature=temp, max_response_len=cfg.sampler.max_response_len,
                           grad_clip=tc.grad_clip, ref_logp=ref, step=step, forward=forward, rank=self.world.rank)
        out = mean_stats(self.world.all_gather(stats))
        self.scheduler.step()
        out["actor/lr"] = self.optimizer.param_groups[0]["lr"]
        return out

    def _merge(self, per_leaf: list) -> list:
        """Per-leaf values computed by one rank each (None elsewhere), on every rank."""
        if not self.world.distributed:
            return per_leaf
        parts = self.world.all_gather(per_leaf)
        return [next(p[j] for p in parts if p[j] is not None) for j in range(len(per_leaf))]

    def sync_engine(self) -> None:
        """The engine takes the policy's weights, one tensor at a time (FSDP: each gathered whole)."""
        self.engine.load_weights(distributed.full_weights(self.model))

    # ---- text <-> tokens ----------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return self.prompts.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    # ---- evaluation, logging, checkpoints ---------------------------------------------------------------
    def evaluate(self) -> tuple[dict, list[dict]]:
        problems = [self.prompts.problem(p) for p in self.task.held_out()[: self.cfg.eval.n_problems]]
        with eval_progress(len(problems), enabled=self._progress) as bar:
            return evaluate(self.engine, self.tokenizer, self.task, problems, self.cfg.eval, self.cfg.sampler,
                            self.encode, self.decode, seed=derive_seed(self.cfg.seed, self.step, _EVAL),
                            reward_timeout_s=self.cfg.trainer.reward_timeout_s, progress=bar.update,
                            world=self.world)

    def _eval_and_log(self) -> None:
        self._last_eval_step = self.step
        metrics, records = self.evaluate()
        self.last_eval_records = records
        metrics["time/wall_s"] = self.wall_s
        metrics["time/cpu_s"] = self.cpu_s
        metrics.update(self.cumulative.add({}))  # the running totals, unchanged
        self._log(metrics)
        self.tracker.log_eval_samples(records[: self.cfg.eval.n_samples_logged], self.step)
        if self.on_eval is not None:
            self.on_eval(self.step, dict(self.history[-1]))

    def _log(self, metrics: dict) -> None:
        metrics = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float, np.floating, np.integer))}
        metrics["train/step"] = float(self.step)
        self.history.append(metrics)
        self.tracker.log_metrics(metrics, step=self.step)

    def _log_trees(self) -> None:
        trees = self._last_trees[: self.cfg.tracking.n_trees_logged]
        for t in trees:
            t.meta.update({"model_path": self.model_path, "step": self.step})
        self.tracker.log_trees([t.to_dict() for t in trees], self.step)

    def save(self) -> Path | None:
        if self.run_dir is None:
            return None
        extra = {"data_position": self.step, "wall_s": self.wall_s, "cpu_s": self.cpu_s,
                 "cumulative": self.cumulative.totals, "run_id": self.tracker.run_id, "model_path": self.model_path}
        return ckpt.save_checkpoint(self.run_dir / "checkpoints", self.step, self.model, self.tokenizer,
                                    self.optimizer, self.scheduler, extra, self.cfg.trainer.keep_last,
                                    is_main=self.world.is_main)

    def _resume(self, path: Path) -> None:
        state = ckpt.restore(path, self.model, self.optimizer, self.scheduler)
        self.step = state["step"]
        self.wall_s = state.get("wall_s", 0.0)
        self.cpu_s = state.get("cpu_s", 0.0)
        self.cumulative.totals.update(state.get("cumulative", {}))
        self.sync_engine()

    def close(self) -> None:
        self.scorer.close()
