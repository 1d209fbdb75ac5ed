"""Trainer and evaluation configuration: data and value checks only."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from treepo_lab.registry import ConfigError
from treepo_lab.rollout.config import InitDivConfig, SamplerConfig

PACKINGS = ("tree", "flat")  # trainer.packing
PARALLELS = ("ddp", "fsdp")  # trainer.parallel


@dataclass
class TrainerConfig:
    steps: int = 60  # training steps (one rollout + PPO update each)
    prompts_per_step: int = 8  # prompts per rollout (each gets w leaves)
    # prompts per optimizer step (ppo_mini_batch_size); null = prompts_per_step (one optimizer step per rollout)
    mini_batch_prompts: int | None = None
    micro_batch_size: int = 64  # trajectories per forward/backward, packing=flat (memory knob; no effect on maths)
    # tree: each prompt's leaves as one token trie, every shared prefix forwarded and back-propagated once,
    # the loss and gradients equal to flat's (train/packing.py); falls back to flat, logged once, where the
    # model's attention cannot take a custom 4-D mask. flat: every leaf its own padded row (official TreePO)
    packing: str = "tree"
    pack_tokens: int = 1024  # packing=tree: unique trie tokens per forward/backward (memory knob; no effect on maths)
    ppo_epochs: int = 1
    # recompute activations in the backward instead of keeping them (HF gradient checkpointing): less memory
    # for long responses and real model sizes, ~1 extra forward of compute; sampling is unaffected
    gradient_checkpointing: bool = False
    lr: float = 5e-5
    # linear warm-up of the lr over this many training steps, then constant; null = 10% of trainer.steps
    # (round(0.1 * steps)), resolved when the config is validated (the logged config shows the number).
    # Counted in steps, not tokens: the lr moves once per trainer step (one scheduler step, however many
    # optimizer steps mini_batch_prompts makes inside it), so arms with different tokens per step get the
    # same schedule per step
    warmup_steps: int | None = None
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    max_wall_s: float = 0.0  # stop training after this many seconds (<= 0: off)
    reward_timeout_s: float = 5.0  # a reward call slower than this scores the leaf as wrong
    eval_every: int = 20  # steps between held-out evaluations (<= 0: only before and after)
    eval_before: bool = True
    save_every: int = 20  # steps between checkpoints (<= 0: only at the end)
    keep_last: int = 2  # checkpoints kept
    output_dir: str = "runs"  # checkpoints go to <output_dir>/<run name>/
    # processes of one run (data parallel over prompt trees, train/distributed.py): `treepo-lab train` starts
    # them with torchrun's launcher; under `torchrun --nproc-per-node N` the launcher's world size is used.
    # Each rank samples prompts_per_step / N prompts (so it must divide prompts_per_step)
    nproc: int = 1
    # ddp: every rank holds the whole model; fsdp: FSDP2 fully_shard per decoder layer (1/N of the
    # parameters, gradients and optimizer state per rank). No effect at one process
    parallel: str = "ddp"

    def check_world(self, size: int, key: str = "trainer.nproc") -> None:
        """A world of `size` processes can split this config's prompts (called with torchrun's world size too)."""
        if size > self.prompts_per_step:
            raise ConfigError(key, size, f"at most trainer.prompts_per_step={self.prompts_per_step} (each process "
                                         "samples at least one prompt)")
        if self.prompts_per_step % size:
            raise ConfigError(key, size, f"a divisor of trainer.prompts_per_step={self.prompts_per_step} (each "
                                         "process samples the same number of prompts)")

    def resolved(self) -> TrainerConfig:
        """This config with warmup_steps null replaced by its number (10% of steps)."""
        if self.warmup_steps is not None:
            return self
        return dataclasses.replace(self, warmup_steps=max(0, round(0.1 * self.steps)))

    def validate(self) -> None:
        for key in ("steps", "prompts_per_step", "micro_batch_size", "pack_tokens", "ppo_epochs", "keep_last"):
            if getattr(self, key) < 1:
                raise ConfigError(f"trainer.{key}", getattr(self, key), "an integer >= 1")
        if self.mini_batch_prompts is not None and self.mini_batch_prompts < 1:
            raise ConfigError("trainer.mini_batch_prompts", self.mini_batch_prompts,
                              "null (= trainer.prompts_per_step) or an integer >= 1")
        if self.mini_batch_prompts is not None and self.prompts_per_step % self.mini_batch_prompts:
            raise ConfigError("trainer.mini_batch_prompts", self.mini_batch_prompts,
                              f"a divisor of trainer.prompts_per_step={self.prompts_per_step}")
        if self.nproc < 1:
            raise ConfigError("trainer.nproc", self.nproc, "an integer >= 1")
        if self.parallel not in PARALLELS:
            raise ConfigError("trainer.parallel", self.parallel, f"one of {', '.join(PARALLELS)}")
        self.check_world(self.nproc)
        if self.packing not in PACKINGS:
            raise ConfigError("trainer.packing", self.packing, f"one of {', '.join(PACKINGS)}")
        if not self.lr > 0:
            raise ConfigError("trainer.lr", self.lr, "a number > 0")
        w = self.warmup_steps
        if w is not None and (not isinstance(w, int) or isinstance(w, bool) or not 0 <= w <= self.steps):
            raise ConfigError("trainer.warmup_steps", w, f"null (= 10% of trainer.steps) or an integer from 0 to "
                                                         f"trainer.steps={self.steps}")
        if self.grad_clip <= 0:
            raise ConfigError("trainer.grad_clip", self.grad_clip, "a number > 0")
        if self.weight_decay < 0:
            raise ConfigError("trainer.weight_decay", self.weight_decay, "a number >= 0")
        if self.reward_timeout_s <= 0:
            raise ConfigError("trainer.reward_timeout_s", self.reward_timeout_s, "a number > 0")


@dataclass
class EvalConfig:
    n_problems: int = 1000  # held-out problems evaluated
    k: int = 1  # samples per problem: avg@k, pass@k, maj@k
    temperature: float = 0.0  # 0 = greedy (then k must be 1)
    top_p: float = 1.0
    # registered sampler (checked in treepo_lab/config.py): sequential | tree (test-time tree sampling,
    # paper Table 2 / Fig. 9)
    sampler: str = "sequential"
    batch_size: int = 256  # problems per generation batch
    n_samples_logged: int = 8  # example outputs logged/printed
    # with a greedy main evaluation (temperature 0): also sample this many responses per problem at
    # temperature 1 (top_p 1, sequential sampler) in the same evaluation and log eval/sample_accuracy, their
    # mean correctness (avg@sample_k at T=1), a smoother learning signal than greedy accuracy. 0 = off;
    # ignored when eval.temperature > 0 (eval/avg_at_k is then already sampled)
    sample_k: int = 0

    def validate(self) -> None:
        if self.n_problems < 1:
            raise ConfigError("eval.n_problems", self.n_problems, "an integer >= 1")
        if self.k < 1:
            raise ConfigError("eval.k", self.k, "an integer >= 1")
        if self.temperature < 0:
            raise ConfigError("eval.temperature", self.temperature, "a number >= 0 (0 = greedy)")
        if self.temperature == 0 and self.k != 1:
            raise ConfigError("eval.k", self.k, "1 when eval.temperature=0 (greedy samples are identical)")
        if self.batch_size < 1:
            raise ConfigError("eval.batch_size", self.batch_size, "an integer >= 1")
        if not isinstance(self.sample_k, int) or isinstance(self.sample_k, bool) or self.sample_k < 0:
            raise ConfigError("eval.sample_k", self.sample_k, "an integer >= 0 (0 = off)")


# the evaluation's samplers, derived from the training sampler (its shape) and eval.*
def sample_sampler_config(sampler: SamplerConfig, ev: EvalConfig) -> SamplerConfig:
    """The eval.sample_k samples: sequential, sample_k per problem, temperature 1, top_p 1."""
    return dataclasses.replace(
        sampler, kind="sequential", params=sampler.params if sampler.kind == "sequential" else {},
        width=ev.sample_k, temperature=1.0, top_k=-1, top_p=1.0, init_div=InitDivConfig())


def eval_sampler_config(sampler: SamplerConfig, ev: EvalConfig) -> SamplerConfig:
    greedy = ev.temperature == 0
    return dataclasses.replace(
        sampler,
        kind=ev.sampler,
        params=sampler.params if ev.sampler == sampler.kind else {},  # knobs belong to the training sampler's kind
        width=ev.k,
        temperature=1.0 if greedy else ev.temperature,
        top_k=1 if greedy else -1,
        top_p=1.0 if greedy else ev.top_p,
        init_div=InitDivConfig(),  # kind fixed: every prompt starts like the others
    )
