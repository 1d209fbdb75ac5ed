"""What every consumer of a config builds the same way, built here once: the model (the config's, the embedded
warm start, or a given directory such as a checkpoint's), its tokenizer, the task, the prompts as the model
sees them (as is, or the user turn of the tokenizer's chat template) and the engine that samples.

Used by the Trainer, `treepo-lab eval` and `treepo-lab rollout`, and the benchmarks that sample like a run
(benchmarks/subgroups.py); the tracker is started by the run alone (train/run.py).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

from treepo_lab.config import ExperimentConfig, warmstart_config
from treepo_lab.engines.factory import build_engine
from treepo_lab.models.load import load_model_and_tokenizer, resolve_model
from treepo_lab.models.lora import add_adapters
from treepo_lab.models.prompting import PromptFormat, prompt_format
from treepo_lab.tasks.base import Task
from treepo_lab.tasks.build import build_task


@dataclass
class Setup:
    model_dir: str  # what was loaded (vLLM loads its own copy from here)
    model: object  # the policy (transformers PreTrainedModel)
    tokenizer: object
    task: Task
    prompts: PromptFormat
    engine: object  # treepo_lab.engines.base.Engine

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def build_setup(cfg: ExperimentConfig, model_dir: str | None = None, device: str | None = None,
                sample_from_copy: bool = False, adapters: bool = False) -> Setup:
    """`model_dir`: a directory to load instead of the config's model (a checkpoint's: adapters merged);
    `device`: the policy's device when it is not cfg.model.device (a rank's own GPU); `sample_from_copy`: the
    HF engine samples from a whole copy of the policy (under FSDP, whose forwards are collectives, the copy
    follows the shards); `adapters`: new LoRA adapters per model.lora (training), sampled from with them."""
    model_dir = model_dir or resolve_model(cfg.model, warmstart_config(cfg))
    model, tokenizer = load_model_and_tokenizer(model_dir, cfg.model.dtype, device or cfg.model.device,
                                                cfg.model.trust_remote_code)
    if adapters and cfg.model.lora.r:
        model = add_adapters(model, cfg.model.lora)
    task = build_task(cfg.task)
    prompts = prompt_format(cfg.task, cfg.model.path, tokenizer)
    sampled = model_dir if cfg.engine.name == "vllm" else copy.deepcopy(model) if sample_from_copy else model
    engine = build_engine(cfg.engine.name, sampled, tokenizer, **vars(cfg.engine))
    return Setup(model_dir, model, tokenizer, task, prompts, engine)
