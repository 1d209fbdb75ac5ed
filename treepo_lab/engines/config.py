"""Engine configuration (HF or vLLM); CPU defaults here, GPU values documented per field."""
from __future__ import annotations

from dataclasses import dataclass

from treepo_lab.registry import ConfigError

ENGINES = ("hf", "vllm")
DTYPES = ("float32", "bfloat16", "float16", "auto")


@dataclass
class EngineConfig:
    name: str = "hf"  # hf (transformers, KV-cache forking) | vllm (automatic prefix caching)
    device: str = "auto"  # auto | cpu | cuda | cuda:N (hf engine)
    dtype: str = "float32"  # vLLM on GPU: bfloat16
    gpu_memory_utilization: float = 0.6  # vLLM: fraction of GPU memory for weights + KV cache
    tensor_parallel_size: int = 1  # vLLM
    block_size: int = 32  # vLLM KV block; the CPU build rejects 16, 128 gets no hits on short prompts
    max_model_len: int = 512  # vLLM: prompt + response tokens (the embedded model has 512 positions)
    enforce_eager: bool = True  # vLLM: True starts in seconds; False (CUDA graphs) is faster on GPU
    # vLLM: top-k log-probs returned besides the sampled token's; -1 = the whole vocabulary, which gives
    # exact entropies (needed by entropy_weighted_div); 0 = sampled token only (entropy NaN)
    n_logprobs: int = 0

    def validate(self) -> None:
        if self.name not in ENGINES:
            raise ConfigError("engine.name", self.name, f"one of {', '.join(ENGINES)}")
        if self.dtype not in DTYPES:
            raise ConfigError("engine.dtype", self.dtype, f"one of {', '.join(DTYPES)}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ConfigError("engine.gpu_memory_utilization", self.gpu_memory_utilization, "a number in (0, 1]")
        if self.tensor_parallel_size < 1:
            raise ConfigError("engine.tensor_parallel_size", self.tensor_parallel_size, "an integer >= 1")
        if self.block_size < 1 or self.block_size % 16:
            raise ConfigError("engine.block_size", self.block_size, "a positive multiple of 16 (32 on CPU)")
        if self.max_model_len < 2:
            raise ConfigError("engine.max_model_len", self.max_model_len, "an integer >= 2")
        if self.n_logprobs < -1:
            raise ConfigError("engine.n_logprobs", self.n_logprobs, "-1 (whole vocabulary) or an integer >= 0")
