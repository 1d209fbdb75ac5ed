"""Model configuration: which model to load, and how the embedded tiny model is built and warm-started.

`ModelConfig.path = None` means the embedded default: a tiny Llama (`TinyModelConfig`) with a character
tokenizer, warm-started on the synthetic arithmetic task (`WarmstartConfig`, see `warmstart.py`) and
cached on disk. The experiment config keeps `model` and `warmstart` as sibling sections.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from treepo_lab.registry import ConfigError
from treepo_lab.tasks.config import TaskConfig

DTYPES = ("float32", "bfloat16", "float16", "auto")


def _positive(key: str, value, kind=int) -> None:
    if not isinstance(value, kind) or isinstance(value, bool) or not value > 0:
        raise ConfigError(key, value, f"a positive {'integer' if kind is int else 'number'}")


@dataclass
class TinyModelConfig:
    """Shape of the embedded Llama (~0.9M parameters at the defaults). The vocabulary comes from the
    character tokenizer, so it is not a knob."""

    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 384
    max_positions: int = 512  # prompt + response tokens (= characters)
    seed: int = 0  # weight initialisation

    def validate(self) -> None:
        for key in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "max_positions"):
            _positive(f"warmstart.tiny.{key}", getattr(self, key))
        if self.hidden_size % self.num_heads:
            raise ConfigError("warmstart.tiny.num_heads", self.num_heads,
                              f"a divisor of hidden_size={self.hidden_size}")


@dataclass
class WarmstartConfig:
    """Supervised warm start of the tiny model on flawed demonstrations of the synthetic task.

    The flaw is systematic, so greedy decoding inherits it and RL has something to fix: a share
    (`flaw_rate`) of the demonstrations whose last operator is `flaw_op` box the previous running
    value instead of the final result. Random slips would not do: greedy decoding averages them away.

    Defaults measured on 2 CPU cores (torch.set_num_threads(2), seeds 0 and 1): about 130 s of
    training when the cores are idle; greedy accuracy ~55% on the 1000 held-out problems (~92% where
    the last operator is `+`, ~4% where it is `-`), and ~68% of held-out prompts get both right and
    wrong answers among 16 samples at temperature 1. Fewer steps land before the model learns carrying
    (accuracy jumps late, as the learning rate decays), so cut `steps` with care.
    """

    steps: int = 1000  # optimizer steps (one fresh batch of demonstrations each)
    lr: float = 3e-3  # peak AdamW learning rate (linear warmup, cosine decay to 10%)
    warmup_steps: int = 50
    batch_size: int = 32
    seed: int = 0  # which demonstrations are drawn, and which of them carry the flaw
    flaw_rate: float = 0.8  # share of `flaw_op`-final demonstrations that box the wrong value
    flaw_op: str = "-"
    # task.name=chain only (tasks/chain.py): share of demonstrations written with the grouped method, whose
    # flaw (`flaw_rate` of them drop the last subtracted term) the model must unlearn; `flaw_op` is unused
    grouped_share: float = 0.7
    # task.name=chain_mid only: share of demonstrations that misread the minus of step task.decisive_step as a plus
    # (the rest are right); flaw_rate, flaw_op and grouped_share are unused there
    step_flaw_rate: float = 0.6
    task: TaskConfig = field(default_factory=TaskConfig)  # the task trained on (arith, chain or chain_mid)
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    # checkpoints keyed by a hash of everything above; null: $TREEPO_CACHE_DIR/warmstart, else
    # ~/.cache/treepo_lab/warmstart (the same cache whatever directory a command runs from)
    cache_dir: str | None = None
    eval_size: int = 200  # held-out problems evaluated after training (printed; not part of the key)

    def validate(self) -> None:
        for key in ("steps", "batch_size"):
            _positive(f"warmstart.{key}", getattr(self, key))
        _positive("warmstart.lr", self.lr, (int, float))
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ConfigError("warmstart.warmup_steps", self.warmup_steps, "an integer >= 0")
        if not 0 <= self.flaw_rate <= 1:
            raise ConfigError("warmstart.flaw_rate", self.flaw_rate, "a number in [0, 1]")
        if self.flaw_op not in ("+", "-"):
            raise ConfigError("warmstart.flaw_op", self.flaw_op, "'+' or '-'")
        for key in ("grouped_share", "step_flaw_rate"):
            if not 0 <= getattr(self, key) <= 1:
                raise ConfigError(f"warmstart.{key}", getattr(self, key), "a number in [0, 1]")
        if self.eval_size < 0:
            raise ConfigError("warmstart.eval_size", self.eval_size, "an integer >= 0")
        self.task.validate()
        self.tiny.validate()


@dataclass
class LoraConfig:
    """LoRA adapters (peft, the optional extra `treepo_lab[lora]`): only they train; models/lora.py."""

    r: int = 0  # adapter rank; 0 = no adapters (every weight trains)
    alpha: float = 16.0  # the adapters' output is scaled by alpha / r
    dropout: float = 0.0  # on the adapters' input, in training only
    # the linear layers that get adapters, by their name in the model (Llama, Qwen2, Gemma: these four)
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])

    def validate(self) -> None:
        if not isinstance(self.r, int) or isinstance(self.r, bool) or self.r < 0:
            raise ConfigError("model.lora.r", self.r, "an integer >= 0 (0: no adapters)")
        if self.r:
            _positive("model.lora.alpha", self.alpha, (int, float))
            if not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
                raise ConfigError("model.lora.dropout", self.dropout, "a number in [0, 1)")
            if not self.target_modules or not all(isinstance(m, str) and m for m in self.target_modules):
                raise ConfigError("model.lora.target_modules", self.target_modules,
                                  "a non-empty list of linear layer names, e.g. [q_proj, v_proj]")


@dataclass
class ModelConfig:
    # HF causal-LM dir, hub id, or a .gguf file (converted once into an HF dir, cached by the file's hash);
    # null = the embedded warm-started tiny model
    path: str | None = None
    trust_remote_code: bool = False
    dtype: str = "float32"  # float32 | bfloat16 | float16 | auto (the checkpoint's own)
    # auto (cuda if available, else cpu) | cpu | cuda | cuda:N | mps: the one device setting of the policy;
    # the HF engine samples on it too (vLLM loads its own copy on its own device)
    device: str = "auto"
    lora: LoraConfig = field(default_factory=LoraConfig)  # model.lora.r=8: train LoRA adapters only

    def validate(self) -> None:
        if self.path is not None and (not isinstance(self.path, str) or not self.path.strip()):
            raise ConfigError("model.path", self.path, "null (embedded tiny model), a model dir / hub id or a .gguf file")
        if self.dtype not in DTYPES:
            raise ConfigError("model.dtype", self.dtype, f"one of {', '.join(DTYPES)}")
        d = self.device
        if not (d in ("auto", "cpu", "cuda", "mps") or (d.startswith("cuda:") and d[5:].isdigit())):
            raise ConfigError("model.device", d, "auto, cpu, cuda, cuda:N or mps")
        self.lora.validate()
