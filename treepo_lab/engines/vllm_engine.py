"""The vLLM engine: the engine protocol on vLLM (V1), with automatic prefix caching.

Like the official TreePO rollout (TreePO, arXiv 2508.17445), it keeps no per-path state: every
request resubmits its full token context (prompt + response so far) as a token-id prompt, and all the
requests of one call go to one `LLM.generate`, so siblings' shared prefixes are served from vLLM's
prefix cache instead of being prefilled again. `parent_id` is ignored and `release` is a no-op.

What each output means (the protocol's fields, as vLLM can give them):
- tokens: the sampled ids, EOS included when it was sampled (it is a stop token, which vLLM keeps).
- logprobs: vLLM runs with `logprobs_mode="processed_logprobs"`, so the log-prob is taken after the
  OOV mask, temperature, top-k and top-p, i.e. under the distribution the token was sampled from.
  The default ("raw_logprobs") would report the untempered, unfiltered model distribution instead.
- entropies: vLLM has no cheap full-distribution entropy. With `n_logprobs=-1` it returns the whole
  processed distribution and the entropy is exact (fine for small vocabularies, costly for 150k);
  with `n_logprobs=k>0` it is the sum over the top-k tokens only, a lower bound (exact when the
  processed distribution has at most k tokens, e.g. top_k <= k); with `n_logprobs=0` it is NaN.
- top_logprobs (VLLMSegmentOut only): {token id: log-prob} of the top-k per position (+ the sampled
  token) when n_logprobs != 0, else None.

Sampling is seeded per request from (call seed, path_id), so the same seed gives the same tree
whatever the batch around a path looks like.

Ids >= len(tokenizer) are never sampled (models pad their embedding matrix beyond
the tokenizer, and a sampled padding id makes the next resubmission fail as "out of vocabulary").
A batch-wide logits processor sets their logits to -inf; a per-request `allowed_token_ids` list
would do the same at the cost of one vocabulary-sized list per request.

vLLM is imported lazily: importing this module costs nothing, and building the engine without vLLM
installed raises an ImportError that names the install command.
"""
from __future__ import annotations

import math
import os
import tempfile
import time
import warnings
from contextlib import contextmanager
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from treepo_lab.engines.base import EngineCounters, SamplingParams, SegmentOut, SegmentRequest
from treepo_lab.engines.config import EngineConfig
from treepo_lab.engines.factory import ENGINES, special_ids

INSTALL_HINT = ("pip install -e '.[vllm]' (or `make setup-vllm`) in its own virtual environment; "
                "on a GPU machine use the [vllm-gpu] extra instead")
_VOCAB_LIMIT_KEY = "treepo_vocab_limit"  # passed to the OOV mask through vLLM's additional_config


def import_vllm():
    """The vllm module, or an ImportError that says how to install it."""
    try:
        import vllm

        vllm.LLM  # noqa: B018 (the package imports lazily: this is the real, slow import)
    except ImportError as err:
        raise ImportError(f"engine 'vllm' needs vLLM, which is not importable here ({err}). "
                          f"Install it with: {INSTALL_HINT}") from err
    except Exception as err:  # installed but broken, e.g. by a torchvision built for another torch
        raise ImportError(f"vLLM is installed but fails to import ({err!r}). If torchvision, torchaudio "
                          "or torchcodec are installed, remove them: "
                          "pip uninstall -y torchvision torchaudio torchcodec") from err
    return vllm


def resolve_options(cfg: EngineConfig, gpu: bool) -> EngineConfig:
    """A copy with every null platform default filled in for a GPU (True) or CPU (False) machine, as
    the EngineConfig comments say."""
    pick = (lambda value, cpu, cuda: (cuda if gpu else cpu) if value is None else value)
    return replace(cfg, dtype=pick(cfg.dtype, "float32", "bfloat16"), block_size=pick(cfg.block_size, 32, 16),
                   enforce_eager=pick(cfg.enforce_eager, True, False))


@dataclass
class VLLMSegmentOut(SegmentOut):
    top_logprobs: list[dict[int, float]] | None = None  # per position, when n_logprobs != 0


def request_seed(seed: int, path_id: int) -> int:
    """The sampling seed of one request: a well-mixed function of (call seed, path id)."""
    return int(np.random.SeedSequence([seed, path_id]).generate_state(1, np.uint64)[0] >> 1)


def _oov_mask_class():
    """Build the logits processor that masks ids >= the tokenizer length.

    It subclasses a vLLM class, so it is made on first use (see the module `__getattr__`), and vLLM
    loads it by name (`treepo_lab.engines.vllm_engine:OOVMask`), which also works when the engine
    core runs in another process. It reads the limit from vLLM's `additional_config`.
    """
    from vllm.v1.sample.logits_processor import LogitsProcessor

    class OOVMask(LogitsProcessor):
        def __init__(self, vllm_config, device, is_pin_memory):
            self.limit = int(vllm_config.additional_config[_VOCAB_LIMIT_KEY])

        def is_argmax_invariant(self) -> bool:
            return False  # it changes the argmax whenever a padding id scores highest

        def update_state(self, batch_update) -> None:
            pass  # the same mask for every request: nothing per request to track

        def apply(self, logits):
            if logits.shape[-1] > self.limit:
                logits[:, self.limit:] = float("-inf")
            return logits

    OOVMask.__module__, OOVMask.__qualname__ = __name__, "OOVMask"
    return OOVMask


def __getattr__(name: str):
    # PEP 562: `OOVMask` exists as a module attribute only once asked for, so that importing this
    # module never imports vLLM.
    if name == "OOVMask":
        globals()[name] = cls = _oov_mask_class()
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _entropy(position: dict[int, Any], k: int) -> float:
    """Entropy from one position's returned log-probs: all of them (k == -1) or the top-k by rank."""
    lps = [lp.logprob for lp in position.values() if k < 0 or lp.rank <= k]
    return -sum(math.exp(x) * x for x in lps if x > -math.inf)


class VLLMEngine:
    """Continues token contexts with vLLM; see the module docstring for what the outputs mean."""

    def __init__(self, model_dir: str | Path, options: EngineConfig | None = None,
                 eos_token_id: int | None = None, tokenizer=None):
        vllm = import_vllm()
        import torch
        from transformers import AutoConfig, AutoTokenizer

        self._vllm = vllm
        self.model_dir = str(model_dir)
        self.gpu = torch.cuda.is_available()
        self.options = opts = resolve_options(options or EngineConfig(name="vllm"), self.gpu)
        tokenizer = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(self.model_dir)
        self.vocab_limit = len(tokenizer)
        eos = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
        if eos is None:
            raise ValueError("no eos_token_id: the tokenizer has none and none was given")
        self.eos_token_id = int(eos)
        self.counters = EngineCounters()

        limit = getattr(AutoConfig.from_pretrained(self.model_dir), "max_position_embeddings", None)
        max_len = opts.max_model_len or limit  # None: vLLM derives it
        if max_len and limit and max_len > limit:
            warnings.warn(f"vllm: max_model_len={max_len} exceeds the model's {limit}; using {limit}", stacklevel=2)
            max_len = limit
        self.max_model_len = max_len  # prompt + response; a longer context is refused by vLLM
        # In-process engine core: weights are loaded by a direct call (load_weights) and no worker
        # process has to be started or fed pickled tensors.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        if not self.gpu:
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(opts.cpu_kv_cache_gib)
        kwargs = {
            "model": self.model_dir, "dtype": opts.dtype, "seed": opts.seed, "block_size": opts.block_size,
            "max_model_len": max_len, "enforce_eager": opts.enforce_eager,
            "enable_prefix_caching": opts.enable_prefix_caching,
            "tensor_parallel_size": opts.tensor_parallel_size,
            "logprobs_mode": "processed_logprobs",  # log-probs under the distribution sampled from
            "max_logprobs": -1 if opts.n_logprobs < 0 else max(20, opts.n_logprobs),
            "logits_processors": [f"{__name__}:OOVMask"],
            "additional_config": {_VOCAB_LIMIT_KEY: self.vocab_limit},
        }
        if self.gpu:
            kwargs["gpu_memory_utilization"] = opts.gpu_memory_utilization
        # under torchrun: one in-process engine per rank (tensor_parallel_size > 1: one per group of that
        # many ranks), joined to the trainer's process group rather than spawning workers of its own
        self.external = int(os.environ.get("WORLD_SIZE", "1")) > 1
        if self.external:
            kwargs["distributed_executor_backend"] = "external_launcher"
        if opts.max_num_seqs is not None:
            kwargs["max_num_seqs"] = opts.max_num_seqs
        kwargs.update(opts.extra)
        set_num_threads = torch.set_num_threads
        t0 = time.perf_counter()
        self.llm = vllm.LLM(**kwargs)
        self.startup_s = time.perf_counter() - t0
        # vLLM's CPU worker replaces torch.set_num_threads process-wide with a no-op (it pins its
        # threads, as a server process would). In-process that would silently ignore the trainer's
        # and the tests' thread settings, so the real function is put back.
        torch.set_num_threads = set_num_threads
        self._count_steps()

    def _count_steps(self) -> None:
        # LLM.generate loops over LLMEngine.step, and each step is one scheduler step, i.e. one
        # batched model forward (prefill chunks and decodes together). LLM offers no per-step hook, so
        # this instance's step is wrapped to count them as forward_calls.
        engine = self.llm.llm_engine
        step = engine.step

        def counted_step(*args, **kwargs):
            self.counters.forward_calls += 1
            return step(*args, **kwargs)

        engine.step = counted_step

    def _params(self, req: SegmentRequest, max_tokens: int, sampling: SamplingParams, seed: int):
        return self._vllm.SamplingParams(
            n=1, max_tokens=max_tokens, temperature=sampling.temperature, top_p=sampling.top_p,
            top_k=max(sampling.top_k, 0),  # vLLM: 0 = off
            seed=req.seed if req.seed is not None else request_seed(seed, req.path_id),
            logprobs=self.options.n_logprobs,  # 0: the sampled token's only
            stop_token_ids=[self.eos_token_id],  # kept in the output, as the protocol wants
            detokenize=False,  # token ids in, token ids out: no text round trip
        )

    def generate(self, requests: list[SegmentRequest], max_tokens: int, sampling: SamplingParams,
                 seed: int) -> list[SegmentOut]:
        """Continue every request by up to `max_tokens` tokens (stop early at EOS), in one batch."""
        if not requests:
            return []
        from vllm.inputs import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=list(r.context)) for r in requests]
        params = [self._params(r, max_tokens, sampling, seed) for r in requests]
        with self._generation_threads():
            t0 = time.perf_counter()
            outs = self.llm.generate(prompts, params, use_tqdm=False)  # in request order
            self.counters.forward_s += time.perf_counter() - t0
        return [self._segment(req, out) for req, out in zip(requests, outs)]

    @contextmanager
    def _generation_threads(self):
        import torch

        threads, before = self.options.cpu_threads, torch.get_num_threads()
        if self.gpu or threads is None or threads == before:
            yield
            return
        torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def _segment(self, req: SegmentRequest, out) -> VLLMSegmentOut:
        gen = out.outputs[0]
        tokens = list(gen.token_ids)
        k = self.options.n_logprobs
        logprobs = [pos[t].logprob for pos, t in zip(gen.logprobs, tokens)]
        entropies = [_entropy(pos, k) if k else math.nan for pos in gen.logprobs]
        top = [{t: lp.logprob for t, lp in pos.items()} for pos in gen.logprobs] if k else None
        cached = out.num_cached_tokens or 0  # vLLM's own count of prompt tokens served from cache
        self.counters.prefill_cached_tokens += cached
        self.counters.prefill_tokens += len(req.context) - cached
        self.counters.decoded_tokens += len(tokens)
        return VLLMSegmentOut(tokens=tokens, logprobs=logprobs, entropies=entropies,
                              eos=gen.finish_reason == "stop", top_logprobs=top)

    def release(self, path_ids: list[int] | None = None) -> None:
        """Nothing to free: vLLM owns its cache, and unreferenced blocks are evicted as needed."""

    def load_weights(self, weights) -> None:
        """Take new policy weights: a full HF-named state dict of the same architecture, or (name, tensor)
        pairs (under FSDP each gathered whole as it is consumed: never a second whole copy).

        vLLM's in-place reload (`Worker.reload_weights`) runs the model's own `load_weights` and then
        redoes the post-load processing: on CPU the linear weights are repacked for the CPU kernels,
        so copying into the parameters directly (model.load_weights alone) fails. Layers missing from
        the dict keep their old weights (vLLM warns). On GPU the same call goes to every worker through
        collective_rpc (with tensor_parallel_size > 1 the tensors are pickled to each worker). The
        prefix cache is reset afterwards: cached KV was computed by the old weights.
        """
        pairs = weights.items() if isinstance(weights, Mapping) else weights
        weights = ((name, tensor.detach()) for name, tensor in pairs)
        if self.options.tensor_parallel_size > 1 and not self.external:
            weights = list(weights)  # pickled to the engine's own worker processes
        self.llm.collective_rpc("reload_weights",
                                kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
        if not self.llm.reset_prefix_cache():
            raise RuntimeError("vllm: could not reset the prefix cache after loading weights")


@ENGINES.implements("vllm")
def build(model, tokenizer, **opts) -> VLLMEngine:
    """Engine-factory entry: `model` is a save_pretrained directory or a transformers model object
    (saved with `tokenizer` to a temporary directory that lives as long as the engine). `opts` are
    EngineConfig fields (plus eos_token_id / pad_token_id)."""
    eos, _ = special_ids(tokenizer, opts)
    known = {f.name for f in fields(EngineConfig)}
    unknown = set(opts) - known
    if unknown:
        raise TypeError(f"vllm engine: unknown options {sorted(unknown)}; options are EngineConfig fields")
    tmp = None
    if not isinstance(model, (str, os.PathLike)):
        tmp = tempfile.TemporaryDirectory(prefix="treepo_vllm_")
        model.save_pretrained(tmp.name, safe_serialization=True)
        tokenizer.save_pretrained(tmp.name)
        model = tmp.name
    engine = VLLMEngine(model, EngineConfig(**{"name": "vllm", **opts}), eos_token_id=eos, tokenizer=tokenizer)
    engine._tmp_dir = tmp  # keeps the saved copy alive with the engine
    return engine
