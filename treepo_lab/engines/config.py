"""Engine configuration: which engine generates the rollouts, and every vLLM option (one set of defaults).

Data and value checks only; `name` is checked against the engine registry in treepo_lab/config.py.
The HF engine runs the policy model object itself, on `model.device` (the one device setting); none of
the vLLM options apply to it. vLLM loads its own copy and picks its own device. A null option means
the platform default, filled in by `engines/vllm_engine.py` (`resolve_options`) as each comment says.
`hf_decode` is the one HF-only option.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from treepo_lab.registry import ConfigError

DTYPES = ("float32", "bfloat16", "float16", "auto")
HF_DECODES = ("lean", "model")


@dataclass
class EngineConfig:
    name: str = "hf"  # hf (transformers, KV-cache forking) | vllm (automatic prefix caching)
    # ---- HF only ----
    # decode steps: lean = the model's own modules without the transformers forward around them
    # (engines/decode_step.py; Llama, Qwen2, Mistral; others fall back to the model forward, said once),
    # model = the transformers forward at every step
    hf_decode: str = "lean"
    # ---- vLLM only ----
    # float32 | bfloat16 | float16 | auto; null: float32 on CPU (agrees with the HF recompute), bfloat16 on GPU
    dtype: str | None = None
    gpu_memory_utilization: float = 0.6  # GPU: fraction of memory for weights + KV cache (spec: 0.8)
    tensor_parallel_size: int = 1  # (`tensor_model_parallel_size`)
    # KV block; null: 32 on CPU (the CPU build rejects 16; 128 gets no prefix hits on short prompts), 16
    # on GPU. Only whole blocks are cached, so a shared prefix shorter than one block is recomputed.
    block_size: int | None = None
    max_model_len: int | None = None  # prompt + response tokens; null or above the model's limit: the model's limit
    enforce_eager: bool | None = None  # null: true on CPU (starts in ~4 s, not ~60 s), false on GPU (CUDA graphs)
    enable_prefix_caching: bool = True  # the whole point of resubmitting contexts; off only to measure
    seed: int = 0  # engine seed (sampling itself is seeded per request)
    cpu_kv_cache_gib: int = 1  # CPU only: VLLM_CPU_KVCACHE_SPACE (V1 has no swap space to set)
    # CPU only: torch/OpenMP threads while vLLM generates (restored afterwards; null: leave as is). On a
    # busy 2-core machine OpenMP spin-waiting made decoding ~30x slower with 2 threads than with 1.
    cpu_threads: int | None = 1
    # top-k log-probs returned besides the sampled token's (`tree_n_logprob`); -1 = the whole vocabulary,
    # which gives exact entropies (needed by entropy_weighted_div); 0 = sampled token only (entropy NaN)
    n_logprobs: int = 0
    max_num_seqs: int | None = None  # null: vLLM's default
    extra: dict[str, Any] = field(default_factory=dict)  # passed to vllm.LLM as is

    def validate(self) -> None:
        if self.hf_decode not in HF_DECODES:
            raise ConfigError("engine.hf_decode", self.hf_decode, f"one of {', '.join(HF_DECODES)}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ConfigError("engine.dtype", self.dtype, f"null (platform default) or one of {', '.join(DTYPES)}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ConfigError("engine.gpu_memory_utilization", self.gpu_memory_utilization, "a number in (0, 1]")
        if self.tensor_parallel_size < 1:
            raise ConfigError("engine.tensor_parallel_size", self.tensor_parallel_size, "an integer >= 1")
        if self.block_size is not None and (self.block_size < 1 or self.block_size % 16):
            raise ConfigError("engine.block_size", self.block_size, "null or a positive multiple of 16 (32 on CPU)")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ConfigError("engine.max_model_len", self.max_model_len, "null (the model's limit) or an integer >= 2")
        if self.cpu_kv_cache_gib < 1:
            raise ConfigError("engine.cpu_kv_cache_gib", self.cpu_kv_cache_gib, "an integer >= 1")
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise ConfigError("engine.cpu_threads", self.cpu_threads, "null (leave as is) or an integer >= 1")
        if self.n_logprobs < -1:
            raise ConfigError("engine.n_logprobs", self.n_logprobs, "-1 (whole vocabulary) or an integer >= 0")
        if self.max_num_seqs is not None and self.max_num_seqs < 1:
            raise ConfigError("engine.max_num_seqs", self.max_num_seqs, "null (vLLM's default) or an integer >= 1")
