"""The experiment configuration: one structured config composed by Hydra from `experiments/*.yaml`.

Every section is a dataclass registered in Hydra's ConfigStore (`base`), so every field has a type,
a default and a comment where it is defined. `load_config(name, overrides)` composes a registry
experiment with command-line overrides and validates everything before any compute starts.

Layering: each `*/config.py` holds data and value checks only. This module is the one place where the
names a config chooses are checked against their registries (`check_names`), and where the rules
that span sections live. Nothing imported here imports torch: the registries of torch code
(estimators, losses, engines) are declared by import path (treepo_lab/registry.py). The tree methods
of treepo_lab/methods/ register themselves on import, with the facts the cross-section rules read.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

import treepo_lab.methods  # noqa: F401  (registers the tree methods beside TreePO)
from treepo_lab.algo.config import AdvantageConfig, LossConfig, RewardConfig
from treepo_lab.algo.registries import ESTIMATORS, POLICY_LOSSES, needs_tree
from treepo_lab.engines.config import EngineConfig
from treepo_lab.engines.factory import ENGINES
from treepo_lab.models.config import ModelConfig, WarmstartConfig
from treepo_lab.models.gguf import PACKAGE, PACKAGED_FILE, packaged_model
from treepo_lab.overrides import check_override_keys, unknown_fields, unknown_key_error
from treepo_lab.registry import ConfigError
from treepo_lab.rollout import config as sampler_config
from treepo_lab.rollout.config import SamplerConfig
from treepo_lab.rollout.divergence import BUDGETS, DIV_POLICIES, INIT_DIVS, TEMP_SCHEDULES
from treepo_lab.rollout.fallback import CANDIDATE_POLICIES, CUT_POLICIES
from treepo_lab.rollout.sampler import SAMPLERS
from treepo_lab.rollout.stopping import STOP_RULES
from treepo_lab.tasks.base import TASKS, embedded_tasks
from treepo_lab.tasks.build import check_task
from treepo_lab.tasks.config import TaskConfig
from treepo_lab.track.config import TrackingConfig
from treepo_lab.train.config import EvalConfig, TrainerConfig, eval_sampler_config
from treepo_lab.validated import is_checked, mark


@dataclass
class ExperimentConfig:
    name: str = "default"  # registry name (the experiments/<name>.yaml file)
    description: str = ""  # one line, shown by `treepo-lab list`
    paper_ref: str = ""  # which figure/table of the paper it mirrors
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    warmstart: WarmstartConfig = field(default_factory=WarmstartConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    advantage: AdvantageConfig = field(default_factory=AdvantageConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


ConfigStore.instance().store(name="base", node=ExperimentConfig)


def experiments_dir() -> Path:
    """experiments/ of the checkout (or TREEPO_EXPERIMENTS): registry files live beside the package."""
    env = os.environ.get("TREEPO_EXPERIMENTS")
    if env:
        return Path(env).resolve()
    here = Path(__file__).resolve().parent.parent / "experiments"
    return here if here.is_dir() else (Path.cwd() / "experiments").resolve()


def packaged_model_path() -> str:
    """The GGUF file of the installed model package (`${packaged_model:}` in an experiment file); when it is
    not installed, the path it would have (the config still composes; the preflight refuses it)."""
    path = packaged_model()
    return str(path) if path is not None else f"{PACKAGE}/{PACKAGED_FILE}"


# experiment files may name files beside them and the packaged real model; resolved when the config is built
OmegaConf.register_new_resolver("experiments_dir", lambda: str(experiments_dir()), replace=True)
OmegaConf.register_new_resolver("packaged_model", packaged_model_path, replace=True)


def list_experiments() -> dict[str, str]:
    """name -> one-line description, from the registry files."""
    out = {}
    for path in sorted(experiments_dir().glob("*.yaml")):
        desc = ""
        for line in path.read_text().splitlines():
            if line.startswith("description:"):
                desc = line.split(":", 1)[1].strip().strip("'\"")
        out[path.stem] = desc
    return out


def compose_config(name: str = "default", overrides: list[str] | None = None) -> DictConfig:
    """Compose experiments/<name>.yaml (on top of the structured `base`) with Hydra overrides."""
    known = list_experiments()
    if name not in known:
        raise ConfigError("experiment", name, f"one of {', '.join(known) or '(no experiments found)'}")
    check_override_keys(ExperimentConfig, list(overrides or []))  # sampler.widht=8: did you mean width?
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(experiments_dir()), version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides or []))


def to_object(cfg: DictConfig | ExperimentConfig) -> ExperimentConfig:
    if isinstance(cfg, ExperimentConfig):
        return cfg
    return OmegaConf.to_object(cfg)


def check_sampler_names(s: SamplerConfig, prefix: str = "sampler.") -> None:
    """Every registered name a sampler config chooses."""
    for registry, name, key in [
        (SAMPLERS, s.kind, "kind"),
        (INIT_DIVS, s.init_div.kind, "init_div.kind"),
        (BUDGETS, s.budget.kind, "budget.kind"),
        (DIV_POLICIES, s.div_policy, "div_policy"),
        (TEMP_SCHEDULES, s.div_temp_schedule.kind, "div_temp_schedule.kind"),
        *[(STOP_RULES, rule, "stop_rules") for rule in s.stop_rules],
        (CANDIDATE_POLICIES, s.fallback_candidates, "fallback_candidates"),
        (CUT_POLICIES, s.fallback_cut, "fallback_cut"),
    ]:
        registry.check(name, prefix + key)


def validate_sampler(s: SamplerConfig, prefix: str = "sampler.") -> SamplerConfig:
    """Values and names of a sampler config; returns it with max_depth and segment_len filled in."""
    s = sampler_config.validate(s, prefix)
    check_sampler_names(s, prefix)
    return s


def check_names(cfg: ExperimentConfig) -> None:
    """Every registered name in the config, checked against its registry (the one place that does)."""
    check_sampler_names(cfg.sampler)
    ESTIMATORS.check(cfg.advantage.estimator, "advantage.estimator")
    POLICY_LOSSES.check(cfg.loss.name, "loss.name")
    ENGINES.check(cfg.engine.name, "engine.name")
    SAMPLERS.check(cfg.eval.sampler, "eval.sampler")
    check_task(cfg.task)
    check_task(cfg.warmstart.task, "warmstart.task")
    if not TASKS.info(cfg.warmstart.task.name).get("embedded"):
        raise ConfigError("warmstart.task.name", cfg.warmstart.task.name,
                          f"{', '.join(embedded_tasks())} (the embedded tasks)")


def check_entries(cfg: ExperimentConfig) -> None:
    """What the chosen registered entries say about each other and their knobs: a tree estimator needs
    a sampler whose trees carry subgroup structure; each entry's `params` are its registered knobs."""
    s, a = cfg.sampler, cfg.advantage
    sampler = SAMPLERS.info(s.kind, "sampler.kind")
    # first the conflict between the entries: knobs an experiment set for its own sampler would otherwise
    # be named (experiment=treerl sampler.kind=sequential: the estimator needs a tree)
    if needs_tree(a.estimator) and not sampler["tree"]:
        plain = ", ".join(n for n in ESTIMATORS.names() if not needs_tree(n))
        trees = ", ".join(n for n in SAMPLERS.names() if SAMPLERS.info(n)["tree"])
        raise ConfigError("advantage.estimator", a.estimator, f"an estimator without tree structure ({plain}) "
                          f"when sampler.kind={s.kind!r}; or set sampler.kind to a tree sampler ({trees})")
    knobs = SAMPLERS.knobs(s.kind, s.params, "sampler.params")
    ESTIMATORS.knobs(a.estimator, a.params, "advantage.params")
    if "check" in sampler:  # a rule of the sampler's own across its knobs and the shared fields
        sampler["check"](s, knobs)


def checked(cfg) -> ExperimentConfig:
    """`cfg` itself when `validate` returned it, else `validate(cfg)` (a DictConfig, or a config built or
    changed by hand): what every entry point after the command line calls, so a run validates once."""
    return cfg if is_checked(cfg) else validate(to_object(cfg))


def validate(cfg: ExperimentConfig) -> ExperimentConfig:
    """The one validation pass: every key, section, name and cross-field rule, the world size and the
    device; raise ConfigError on the first bad value. Returns the config with its derived values resolved
    once (the sampler's shape and max_depth/segment_len, trainer.warmup_steps null as its number), marked
    as checked (treepo_lab/validated.py): nothing after it checks it again."""
    for key in unknown_fields(cfg):  # a `+section.key=value` the schema does not have: a stray attribute
        raise unknown_key_error(type(cfg), key, _get(cfg, key)) or ConfigError(key, _get(cfg, key), "an unknown key")
    check_seeds(cfg)
    cfg = dataclasses.replace(cfg, sampler=sampler_config.validate(cfg.sampler))
    for section in (cfg.model, cfg.warmstart, cfg.task, cfg.engine, cfg.advantage, cfg.loss, cfg.trainer,
                    cfg.eval, cfg.tracking):
        section.validate()
    cfg = dataclasses.replace(cfg, trainer=cfg.trainer.resolved())  # trainer.warmup_steps null -> its number
    cfg.reward.validate(cfg.sampler.max_response_len)
    check_names(cfg)
    check_entries(cfg)
    if cfg.sampler.width < 2:
        raise ConfigError("sampler.width", cfg.sampler.width, "an integer >= 2 for training (a group of 1 has no baseline)")
    if cfg.engine.name == "vllm":
        _check_vllm(cfg)
    _check_lora(cfg)
    if SAMPLERS.info(cfg.eval.sampler)["tree"] and cfg.eval.k < 2:
        raise ConfigError("eval.k", cfg.eval.k, f"an integer >= 2 with eval.sampler={cfg.eval.sampler} (the tree's width)")
    _check_eval_sampler(cfg)
    check_world(cfg)
    mark(cfg)
    return cfg


def _get(obj, dotted: str):
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def check_seeds(cfg, prefix: str = "") -> None:
    """Every `seed` field of every section: an integer >= 0 (numpy's SeedSequence refuses negatives)."""
    for f in dataclasses.fields(cfg):
        value, key = getattr(cfg, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            check_seeds(value, key + ".")
        elif f.name == "seed" and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise ConfigError(key, value, "an integer >= 0")


def world_size(cfg: ExperimentConfig) -> tuple[int, str]:
    """The run's process count and the setting that says it: torchrun's WORLD_SIZE, else trainer.nproc."""
    if "WORLD_SIZE" in os.environ:
        return int(os.environ["WORLD_SIZE"]), "WORLD_SIZE (torchrun --nnodes x --nproc-per-node)"
    return cfg.trainer.nproc, "trainer.nproc"


def check_world(cfg: ExperimentConfig) -> None:
    """The world splits prompts_per_step, the engine can follow it, and on cuda each rank has a GPU."""
    size, key = world_size(cfg)
    cfg.trainer.check_world(size, key)
    if "WORLD_SIZE" in os.environ:  # torchrun: the GPUs of this node serve its own ranks only
        check_devices(int(os.environ.get("LOCAL_WORLD_SIZE", size)), cfg.model.device,
                      "LOCAL_WORLD_SIZE (torchrun --nproc-per-node)")
    else:
        check_devices(size, cfg.model.device, key)
    tp = cfg.engine.tensor_parallel_size
    if size > 1 and cfg.engine.name == "vllm" and size % tp:
        raise ConfigError("engine.tensor_parallel_size", tp, f"a divisor of the world size {size} ({key}): one "
                                                              "vLLM engine per group of that many ranks")


def check_devices(size: int, device: str, key: str = "trainer.nproc") -> None:
    """On cuda, one visible GPU per rank of this node (and one for a single process); torch is imported
    only then, so configs are still checked without it."""
    if not device.startswith("cuda"):
        return
    import torch

    count = torch.cuda.device_count()
    if size > 1 and count < size:
        raise ConfigError(key, size, f"at most the {count} visible GPUs (one rank per GPU)")
    if count == 0:
        raise ConfigError("model.device", device, "cpu or auto: no GPU is visible here")


def _check_eval_sampler(cfg: ExperimentConfig) -> None:
    """The evaluation's sampler by its own rules, as training's is (eptree's width is a multiple of its chain):
    its width is eval.k, its knobs the training sampler's when the kinds agree, else the defaults."""
    ev = sampler_config.validate(eval_sampler_config(cfg.sampler, cfg.eval))
    rules = SAMPLERS.info(ev.kind)
    if "check" not in rules:
        return
    try:
        rules["check"](ev, SAMPLERS.knobs(ev.kind, ev.params, "sampler.params"))
    except ConfigError as err:
        key = {"sampler.width": "eval.k"}.get(err.key, err.key)
        raise ConfigError(key, err.value, f"{err.allowed.replace('sampler.kind=', 'eval.sampler=')} "
                                          f"(the evaluation's sampler; its width is eval.k)") from None


def _check_lora(cfg: ExperimentConfig) -> None:
    """Adapters train with the HF engine (it samples from the adapted module) in one process or under DDP."""
    if not cfg.model.lora.r:
        return
    if cfg.engine.name == "vllm":  # its weight sync takes whole weights, not adapters
        raise ConfigError("model.lora.r", cfg.model.lora.r, "0 with engine.name=vllm (LoRA trains with engine.name=hf)")
    if cfg.trainer.parallel == "fsdp" and world_size(cfg)[0] > 1:
        raise ConfigError("trainer.parallel", cfg.trainer.parallel, "ddp with model.lora.r > 0 (the adapters are "
                          "small: every rank holds them whole)")


def _check_vllm(cfg: ExperimentConfig) -> None:
    # null max_model_len is the model's own limit: known here for the embedded model only
    limit = cfg.engine.max_model_len
    if limit is None and cfg.model.path is None:
        limit = cfg.warmstart.tiny.max_positions
    if limit is not None and cfg.sampler.max_response_len >= limit:
        raise ConfigError("sampler.max_depth", cfg.sampler.max_depth,
                          f"max_depth*segment_len={cfg.sampler.max_response_len} below the engine's max_model_len="
                          f"{limit} minus the prompt length")
    if cfg.model.path is None:
        tiny = cfg.warmstart.tiny
        if tiny.hidden_size // tiny.num_heads < 32:
            raise ConfigError("warmstart.tiny.num_heads", tiny.num_heads,
                              f"at most hidden_size/32={tiny.hidden_size // 32}: vLLM's CPU attention needs head_dim >= 32")
    for key, name, registry in (("sampler.div_policy", cfg.sampler.div_policy, DIV_POLICIES),
                                ("sampler.kind", cfg.sampler.kind, SAMPLERS)):
        if registry.info(name).get("needs_entropies") and cfg.engine.n_logprobs != -1:
            raise ConfigError("engine.n_logprobs", cfg.engine.n_logprobs,
                              f"-1 with {key}={name} on vLLM (exact entropies need the full distribution)")


def warmstart_config(cfg: ExperimentConfig) -> WarmstartConfig:
    """The embedded model is warm-started on the experiment's own embedded task (its difficulty and
    operand range), so `task.difficulty=3` trains and evaluates a model that has seen 3-step chains."""
    if not TASKS.info(cfg.task.name).get("embedded"):
        return cfg.warmstart
    ws = dataclasses.replace(cfg.warmstart, task=cfg.task)
    if is_checked(cfg):  # both parts were
        mark(ws)
    return ws


def load_config(name: str = "default", overrides: list[str] | None = None) -> ExperimentConfig:
    return validate(to_object(compose_config(name, overrides)))


def to_yaml(cfg: ExperimentConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
