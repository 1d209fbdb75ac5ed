"""The TreePO trainer: the whole training loop, readable top to bottom.

One step:  sample prompts -> rollout (tree or sequential sampler, any engine) -> rewards
           -> [DAPO dynamic sampling: drop all-right / all-wrong prompts, resample] -> advantages
           -> old log-probs -> PPO epochs over mini-batches -> new weights to the engine -> metrics.

Every random draw of step s comes from generators seeded with (seed, s), so a run resumed from a
checkpoint continues exactly as the uninterrupted run would (CPU, one process).
"""
from __future__ import annotations

import copy
import dataclasses
import math
import random
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from treepo_lab.algo.advantage import annotate_leaves, compute_advantages
from treepo_lab.algo.loss import POLICY_LOSSES
from treepo_lab.algo.reward import GroupAccumulator, tree_rewards
from treepo_lab.config import ExperimentConfig, to_object, to_yaml, validate, warmstart_config
from treepo_lab.engines.factory import build_engine
from treepo_lab.models.load import load_model_and_tokenizer, resolve_model
from treepo_lab.rollout.accounting import CumulativeCompute
from treepo_lab.rollout.sampler import build_sampler
from treepo_lab.rollout.tree import Tree
from treepo_lab.tasks.config import build_task
from treepo_lab.train import checkpoint as ckpt
from treepo_lab.train.evaluate import evaluate
from treepo_lab.train.policy import pack, place, token_logprobs


class TrainingDiverged(RuntimeError):
    """A NaN/inf loss or gradient: the run stops; the last good checkpoint stays as it was."""


MEMORY_HINT = ("out of memory during the rollout: lower trainer.prompts_per_step, sampler.width, "
               "sampler.max_depth*sampler.segment_len, or eval.batch_size; for vLLM lower "
               "engine.gpu_memory_utilization or engine.max_model_len")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def step_seed(seed: int, step: int, salt: int = 0) -> int:
    """A distinct, reproducible seed for each (run seed, step, purpose)."""
    return int(np.random.SeedSequence([seed, step, salt]).generate_state(1)[0])


class Trainer:
    def __init__(self, cfg: ExperimentConfig | DictConfig, tracker=None, resume_from: str | Path | None = None,
                 run_dir: str | Path | None = None, on_eval=None):
        self.cfg = cfg = validate(to_object(cfg))
        self.on_eval = on_eval  # fn(step, metrics) after every held-out evaluation; what it raises propagates  # every value checked before any compute
        seed_everything(cfg.seed)
        self.model_path = resolve_model(cfg.model, warmstart_config(cfg))
        self.model, self.tokenizer = load_model_and_tokenizer(
            self.model_path, cfg.model.dtype, cfg.model.device, cfg.model.trust_remote_code)
        self.task = build_task(cfg.task)
        # vLLM loads its own copy from the checkpoint dir; the HF engine samples from the policy object itself
        self.engine = build_engine(cfg.engine.name, self.model_path if cfg.engine.name == "vllm" else self.model,
                                   self.tokenizer, **vars(cfg.engine))
        self.sampler = build_sampler(cfg.sampler, self.engine, self.decode, self.tokenizer.eos_token_id)
        self.loss_fn = POLICY_LOSSES.get(cfg.loss.name, "loss.name")
        # a constant horizon keeps seq-mean-token-sum-norm exact across micro-batches (Dr.GRPO's normaliser)
        self.loss_cfg = cfg.loss if cfg.loss.norm_horizon > 0 else \
            dataclasses.replace(cfg.loss, norm_horizon=cfg.sampler.max_response_len)
        self.ref_model = None
        if cfg.loss.kl_coef > 0:
            self.ref_model = copy.deepcopy(self.model).eval().requires_grad_(False)
        t = cfg.trainer
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / t.warmup_steps) if t.warmup_steps else 1.0)
        self.step = 0
        self.cumulative = CumulativeCompute()
        self.wall_s = 0.0  # training wall time, carried across resumes
        self.history: list[dict] = []  # every logged metric dict (also returned by fit)
        self.tracker = tracker
        self.run_dir = Path(run_dir) if run_dir else None
        self._reward_pool = ThreadPoolExecutor(max_workers=1)
        self._reward_errors = self._reward_timeouts = 0
        self._last_eval_step = -1
        self.last_eval_records: list[dict] = []  # per-problem records of the latest evaluation
        if resume_from is not None:
            self._resume(Path(resume_from))

    # ---- text <-> tokens ----------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text)["input_ids"]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    # ---- rewards ------------------------------------------------------------------------------------
    def _correct(self, text: str, problem) -> bool:
        """Correctness of one leaf; a reward function that raises or hangs scores it wrong (counted)."""
        future = self._reward_pool.submit(self.task.score, text, problem)
        try:
            return bool(future.result(timeout=self.cfg.trainer.reward_timeout_s).correct)
        except FutureTimeout:
            self._reward_timeouts += 1
            # the stuck call keeps the worker busy: give later calls a fresh one
            self._reward_pool.shutdown(wait=False, cancel_futures=True)
            self._reward_pool = ThreadPoolExecutor(max_workers=1)
        except Exception:
            self._reward_errors += 1
        return False

    def _rollout_round(self, step: int, round_: int):
        """One generation round: the rollout and the correctness of every leaf."""
        cfg = self.cfg
        rng = np.random.default_rng(step_seed(cfg.seed, step, 1 + round_))
        problems = self.task.sample(cfg.trainer.prompts_per_step, rng)
        try:
            result = self.sampler.rollout([self.encode(p.prompt) for p in problems], step=step,
                                          total_steps=cfg.trainer.steps, seed=step_seed(cfg.seed, step, 100 + round_))
        except torch.OutOfMemoryError as err:
            raise RuntimeError(MEMORY_HINT) from err
        correct = [[self._correct(self.decode(t.response_tokens(lf)), p) for lf in t.leaves]
                   for t, p in zip(result.trees, problems)]
        for t, p in zip(result.trees, problems):
            t.prompt_text, t.answer = p.prompt, p.answer
        return result, correct

    # ---- one training step --------------------------------------------------------------------------
    def train_step(self, step: int) -> dict:
        cfg, t0 = self.cfg, time.perf_counter()
        self.model.eval()
        groups = GroupAccumulator(cfg.trainer.prompts_per_step, cfg.reward.max_resample_rounds)
        rollout_metrics: dict[str, float] = {}
        errors0, timeouts0 = self._reward_errors, self._reward_timeouts
        while not groups.done:
            result, correct = self._rollout_round(step, groups.rounds)
            m = result.metrics()
            for k, v in m.items():  # compute adds up over rounds; shape metrics keep the last round's
                rollout_metrics[k] = rollout_metrics.get(k, 0.0) + v if k in CumulativeCompute.ADDITIVE else v
            items = list(zip(result.trees, correct))
            if cfg.reward.dynamic_sampling:
                groups.add(items, result.trees, correct)
            else:
                groups.add_all(items)
        kept = groups.take()
        t_gen = time.perf_counter() - t0
        metrics = {**rollout_metrics, **groups.metrics(), "timing_s/gen": t_gen}
        metrics["reward/errors"] = self._reward_errors - errors0
        metrics["reward/timeouts"] = self._reward_timeouts - timeouts0
        all_correct = [c for _, cs in kept for c in cs]
        if not kept:  # every prompt was all-right or all-wrong in every round: nothing to learn this step
            metrics.update({"train/skipped": 1.0, "critic/score/mean": float("nan")})
            return metrics
        trees = [t for t, _ in kept]
        correct = [cs for _, cs in kept]
        rewards = tree_rewards(trees, correct, cfg.reward, cfg.sampler.max_response_len)
        adv = compute_advantages(trees, rewards, cfg.advantage)
        annotate_leaves(trees, rewards, adv, cfg.advantage.estimator)
        for t, cs in zip(trees, correct):
            for leaf, c in zip(t.leaves, cs):
                leaf.correct = bool(c)
        flat_rewards = [r for rs in rewards for r in rs]
        lengths = [len(t.response_tokens(lf)) for t in trees for lf in t.leaves]
        metrics.update({
            "critic/score/mean": float(np.mean(flat_rewards)),
            "train/accuracy": float(np.mean(all_correct)),
            "response_length/mean": float(np.mean(lengths)),
            "response_length/max": float(np.max(lengths)),
            "train/n_prompts": float(len(trees)),
            "train/n_leaves": float(len(lengths)),
            "critic/advantages/raw_mean": float(np.mean([r for rs in adv.raw for r in rs])),
        })
        t1 = time.perf_counter()
        metrics.update(self._update(trees, adv.flat(), step))
        metrics["timing_s/update"] = time.perf_counter() - t1
        self.engine.load_weights(self.model.state_dict())  # the engine samples from the new policy
        metrics["timing_s/step"] = time.perf_counter() - t0
        self._last_trees = trees
        return metrics

    def _update(self, trees: list[Tree], token_adv: list[torch.Tensor], step: int) -> dict:
        """PPO epochs over mini-batches of prompts; exact aggregation across micro-batches."""
        cfg, tc, dev = self.cfg, self.cfg.trainer, self.model.device
        leaves = [(i, t.prompt_ids, t.response_tokens(lf)) for i, t in enumerate(trees) for lf in t.leaves]
        temp = cfg.sampler.temperature
        pad = self.tokenizer.pad_token_id
        # old log-probs (and reference log-probs) once, before any update: exact on-policy first epoch
        old, ref = [], []
        with torch.no_grad():
            for s in range(0, len(leaves), tc.micro_batch_size):
                chunk = leaves[s: s + tc.micro_batch_size]
                b = pack([(p, r) for _, p, r in chunk], pad, dev)
                lp, _ = token_logprobs(self.model, b["input_ids"], b["attention_mask"], temp)
                old += [lp[j][b["response_mask"][j]] for j in range(len(chunk))]
                if self.ref_model is not None:
                    lr_, _ = token_logprobs(self.ref_model, b["input_ids"], b["attention_mask"], temp)
                    ref += [lr_[j][b["response_mask"][j]] for j in range(len(chunk))]
        gen = torch.Generator().manual_seed(step_seed(cfg.seed, step, 999))
        n_prompts = len(trees)
        sums: dict[str, list[float]] = {}
        self.model.train()
        for _ in range(tc.ppo_epochs):
            order = torch.randperm(n_prompts, generator=gen).tolist()
            per_mb = max(1, math.ceil(n_prompts * tc.mini_batch_prompts / tc.prompts_per_step))
            for m in range(0, n_prompts, per_mb):
                chosen = set(order[m: m + per_mb])
                idx = [j for j, (i, _, _) in enumerate(leaves) if i in chosen]
                n_tok = sum(len(leaves[j][2]) for j in idx)
                self.optimizer.zero_grad(set_to_none=True)
                for s in range(0, len(idx), tc.micro_batch_size):
                    mic = idx[s: s + tc.micro_batch_size]
                    b = pack([(leaves[j][1], leaves[j][2]) for j in mic], pad, dev)
                    mask = b["response_mask"]
                    lp, ent = token_logprobs(self.model, b["input_ids"], b["attention_mask"], temp, with_entropy=True)
                    loss, lm = self.loss_fn(
                        lp, place([old[j] for j in mic], mask), place([token_adv[j] for j in mic], mask), mask,
                        self.loss_cfg, ref_logp=place([ref[j] for j in mic], mask) if ref else None, entropy=ent)
                    # weight so the mini-batch loss is the same whatever the micro-batch size
                    w = (mask.sum().item() / n_tok) if cfg.loss.loss_agg_mode == "token-mean" else len(mic) / len(idx)
                    if not torch.isfinite(loss):
                        raise TrainingDiverged(f"non-finite loss ({loss.item()}) at step {step}; "
                                               "the last good checkpoint is kept; try a lower trainer.lr")
                    (loss * w).backward()
                    for k, v in lm.items():
                        sums.setdefault(k, []).append(v)
                gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
                if not torch.isfinite(gnorm):
                    raise TrainingDiverged(f"non-finite gradient norm ({gnorm.item()}) at step {step}; "
                                           "the last good checkpoint is kept; try a lower trainer.lr")
                sums.setdefault("actor/grad_norm", []).append(gnorm.item())
                self.optimizer.step()
        self.scheduler.step()
        self.model.eval()
        out = {k: float(np.mean(v)) for k, v in sums.items()}
        out["actor/lr"] = self.optimizer.param_groups[0]["lr"]
        return out

    # ---- evaluation, checkpoints ----------------------------------------------------------------------
    def evaluate(self) -> tuple[dict, list[dict]]:
        problems = self.task.held_out()[: self.cfg.eval.n_problems]
        return evaluate(self.engine, self.tokenizer, self.task, problems, self.cfg.eval, self.cfg.sampler,
                        self.encode, self.decode, seed=step_seed(self.cfg.seed, self.step, 7))

    def save(self) -> Path | None:
        if self.run_dir is None:
            return None
        extra = {"data_position": self.step, "wall_s": self.wall_s, "cumulative": self.cumulative.totals,
                 "run_id": getattr(self.tracker, "run_id", None), "model_path": self.model_path}
        return ckpt.save_checkpoint(self.run_dir / "checkpoints", self.step, self.model, self.tokenizer,
                                    self.optimizer, self.scheduler, extra, self.cfg.trainer.keep_last)

    def _resume(self, path: Path) -> None:
        state = ckpt.restore(path, self.model, self.optimizer, self.scheduler)
        self.step = state["step"]
        self.wall_s = state.get("wall_s", 0.0)
        self.cumulative.totals.update(state.get("cumulative", {}))
        self.engine.load_weights(self.model.state_dict())

    # ---- the loop ------------------------------------------------------------------------------------
    def fit(self, progress: bool = True) -> list[dict]:
        from treepo_lab.train.progress import StepProgress

        cfg, tc = self.cfg, self.cfg.trainer
        log = self._log
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(to_yaml(cfg))
        if self.step == 0 and tc.eval_before:
            self._eval_and_log()
        bar = StepProgress(tc.steps, initial=self.step, enabled=progress)
        start = time.perf_counter() - self.wall_s
        with bar:
            while self.step < tc.steps:
                if tc.max_wall_s > 0 and self.wall_s >= tc.max_wall_s:
                    break
                metrics = self.train_step(self.step)
                self.step += 1
                self.wall_s = time.perf_counter() - start
                metrics.update(self.cumulative.add(metrics))
                metrics["time/wall_s"] = self.wall_s
                metrics["train/step"] = self.step
                log(metrics)
                every = cfg.tracking.log_trees_every
                if every and (self.step % every == 0 or self.step == 1) and getattr(self, "_last_trees", None):
                    self._log_trees()
                if tc.eval_every > 0 and self.step % tc.eval_every == 0 and self.step < tc.steps:
                    self._eval_and_log()
                if tc.save_every > 0 and self.step % tc.save_every == 0:
                    self.save()
                bar.update(metrics)
        if self._last_eval_step != self.step:
            self._eval_and_log()
        self.save()
        return self.history

    def _log(self, metrics: dict) -> None:
        metrics = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float, np.floating, np.integer))}
        metrics["train/step"] = float(self.step)
        self.history.append(metrics)
        if self.tracker is not None:
            self.tracker.log_metrics(metrics, step=self.step)

    def _eval_and_log(self) -> None:
        self._last_eval_step = self.step
        metrics, records = self.evaluate()
        self.last_eval_records = records
        metrics["time/wall_s"] = self.wall_s
        metrics.update(self.cumulative.add({}))  # the running totals, unchanged
        self._log(metrics)
        if self.on_eval is not None:
            self.on_eval(self.step, metrics)
        if self.tracker is not None:
            self.tracker.log_dict(records[: self.cfg.eval.n_samples_logged], f"eval/samples_step{self.step:06d}.json")

    def _log_trees(self) -> None:
        if self.tracker is None:
            return
        trees = self._last_trees[: self.cfg.tracking.n_trees_logged]
        for t in trees:
            t.meta.update({"model_path": self.model_path, "step": self.step})
        self.tracker.log_dict([t.to_dict() for t in trees], f"trees/step{self.step:06d}.json")

    def close(self) -> None:
        self._reward_pool.shutdown(wait=False, cancel_futures=True)
