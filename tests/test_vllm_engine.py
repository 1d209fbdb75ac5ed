"""The vLLM engine on a tiny random Llama (CPU build of vLLM; one LLM instance for the whole module).

The model's vocabulary is padded beyond the tokenizer (as Qwen's is), so every test below also runs
through the OOV mask; test_oov_ids_never_sampled... makes padding ids as likely as any other.

Log-prob tolerance: the engine and the HF recompute both run in float32 on the same weights, and
differ only by kernel order (vLLM's CPU attention vs eager PyTorch): about 2e-5 is seen, 1e-3 allowed.
A bfloat16 engine (not tested here) would need a much looser bound.
"""
from __future__ import annotations

import importlib.util
import math
import sys
from dataclasses import replace

import pytest
import torch

from treepo_lab.engines.base import SamplingParams, SegmentRequest
from treepo_lab.engines.logprobs import sequence_stats

HAS_VLLM = importlib.util.find_spec("vllm") is not None


def needs_vllm(test):
    skip = pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed (pip install -e '.[vllm]' or make setup-vllm)")
    return pytest.mark.vllm(pytest.mark.slow(skip(test)))


PAD_IDS = 27  # model vocabulary = tokenizer length + this
TOL = 1e-3  # float32, see the module docstring


def test_missing_vllm_names_the_install_command(monkeypatch):
    from treepo_lab.engines import vllm_engine

    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` fail
    with pytest.raises(ImportError, match=r"pip install -e '\.\[vllm\]'"):
        vllm_engine.VLLMEngine("/nonexistent")


def test_vllm_options_are_the_engine_config_with_one_set_of_defaults():
    from treepo_lab.engines import vllm_engine
    from treepo_lab.engines.config import EngineConfig

    cpu, gpu = (vllm_engine.resolve_options(EngineConfig(name="vllm"), g) for g in (False, True))
    assert (cpu.dtype, cpu.block_size, cpu.enforce_eager) == ("float32", 32, True)
    assert (gpu.dtype, gpu.block_size, gpu.enforce_eager) == ("bfloat16", 16, False)
    explicit = EngineConfig(name="vllm", dtype="float16", block_size=64, enforce_eager=True)
    assert vllm_engine.resolve_options(explicit, True) == explicit  # an explicit value is never replaced
    # the builder takes EngineConfig fields and nothing else: a device is not an engine setting
    with pytest.raises(TypeError, match="device"):
        vllm_engine.build("/nonexistent", _tokenizer(), device="cpu")


def _tokenizer():
    from treepo_lab.models.tokenizer import build_char_tokenizer

    return build_char_tokenizer()


def _tiny_model(tok):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=len(tok) + PAD_IDS, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4,  # head_dim 32: the CPU attention's smallest
        max_position_embeddings=512, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, tie_word_embeddings=False,
        initializer_range=0.2)  # peaked next-token distributions, so log-prob checks mean something
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        model = LlamaForCausalLM(cfg).eval()
    return model


class _Masked(torch.nn.Module):
    """The HF model with ids >= len(tokenizer) masked, as the engine samples it."""

    def __init__(self, model, limit):
        super().__init__()
        self.model, self.limit = model, limit

    def forward(self, **kw):
        out = self.model(**kw)
        out.logits[..., self.limit:] = float("-inf")
        return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    if not HAS_VLLM:
        pytest.skip("vLLM is not installed")
    from treepo_lab.engines.config import EngineConfig
    from treepo_lab.engines.vllm_engine import VLLMEngine

    tok = _tokenizer()
    model = _tiny_model(tok)
    path = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    engine = VLLMEngine(path, EngineConfig(name="vllm", n_logprobs=-1, max_model_len=512))  # -1: exact entropies
    return engine, model, tok


def _prompt(tok, text="what is 12+7? let us think step by step, slowly. "):
    return tok(text * 2)["input_ids"]  # > 2 blocks of 32 tokens


@needs_vllm
@pytest.mark.parametrize("sampling", [SamplingParams(temperature=0.7),
                                      SamplingParams(temperature=1.0, top_k=20, top_p=0.9)],
                         ids=["temp0.7", "topk20-topp0.9"])
def test_logprobs_and_entropies_match_hf_recompute(setup, sampling):
    engine, model, tok = setup
    prompt = _prompt(tok)
    reqs = [SegmentRequest(path_id=i, context=prompt) for i in range(6)]
    outs = engine.generate(reqs, 24, sampling, seed=5)
    with torch.no_grad():
        lps, ents = sequence_stats(_Masked(model, len(tok)), [prompt] * len(outs), [o.tokens for o in outs],
                                   sampling)
    for o, lp, ent in zip(outs, lps, ents):
        assert max(o.tokens) < len(tok)
        assert len(o.tokens) == len(o.logprobs) == len(o.entropies) > 0
        assert (lp - torch.tensor(o.logprobs)).abs().max() < TOL
        assert (ent - torch.tensor(o.entropies, dtype=torch.float32)).abs().max() < TOL


@needs_vllm
def test_seeded_determinism(setup):
    engine, _, tok = setup
    reqs = [SegmentRequest(path_id=10 + i, context=_prompt(tok)) for i in range(6)]
    sp = SamplingParams(temperature=1.0)
    first = [o.tokens for o in engine.generate(reqs, 16, sp, seed=7)]
    assert first == [o.tokens for o in engine.generate(reqs, 16, sp, seed=7)]
    assert first != [o.tokens for o in engine.generate(reqs, 16, sp, seed=8)]
    assert len(set(map(tuple, first))) > 1  # siblings differ (seeded by path_id)
    # a path's tokens depend on (seed, path_id) only, not on the batch around it
    assert first[2:4] == [o.tokens for o in engine.generate(reqs[2:4], 16, sp, seed=7)]


@needs_vllm
def test_fewer_logprobs_same_tokens_and_entropy_bounds(setup):
    engine, _, tok = setup
    reqs = [SegmentRequest(path_id=i, context=_prompt(tok)) for i in range(4)]
    sp = SamplingParams(temperature=1.0)
    full = engine.generate(reqs, 12, sp, seed=3)
    saved = engine.options
    try:
        engine.options = replace(saved, n_logprobs=3)
        top3 = engine.generate(reqs, 12, sp, seed=3)
        engine.options = replace(saved, n_logprobs=0)
        none = engine.generate(reqs, 12, sp, seed=3)
    finally:
        engine.options = saved
    for f, t, n in zip(full, top3, none):
        assert f.tokens == t.tokens == n.tokens and f.logprobs == t.logprobs == n.logprobs
        assert all(te <= fe + 1e-6 for te, fe in zip(t.entropies, f.entropies))  # top-k: a lower bound
        assert all(3 <= len(pos) <= 4 for pos in t.top_logprobs)  # top 3 + the sampled token
        assert all(math.isnan(e) for e in n.entropies) and n.top_logprobs is None


@needs_vllm
def test_prefix_cache_hits_between_siblings_and_continuations(setup):
    engine, _, tok = setup
    engine.llm.reset_prefix_cache()
    prompt = tok("siblings share this prompt of more than two blocks. " * 2)["input_ids"]
    assert len(prompt) >= 2 * 32 + 1
    sp = SamplingParams(temperature=1.0)
    before = engine.counters.snapshot()
    outs = engine.generate([SegmentRequest(path_id=i, context=prompt) for i in range(4)], 16, sp, seed=1)
    c = engine.counters.since(before)
    assert c.prefill_tokens + c.prefill_cached_tokens == 4 * len(prompt)
    assert c.prefill_cached_tokens >= 3 * 64  # every sibling after the first reuses >= 2 blocks
    assert c.decoded_tokens == sum(len(o.tokens) for o in outs)
    assert c.forward_calls >= 16 and c.forward_s > 0
    # continuations resubmit prompt + segment: the prompt's blocks are still cached
    before = engine.counters.snapshot()
    engine.generate([SegmentRequest(path_id=10 + i, context=prompt + o.tokens, parent_id=i)
                     for i, o in enumerate(outs)], 8, sp, seed=2)
    assert engine.counters.since(before).prefill_cached_tokens >= 4 * 64


@needs_vllm
def test_load_weights_changes_outputs_and_resets_cache(setup):
    engine, model, tok = setup
    original = {k: v.clone() for k, v in model.state_dict().items()}
    reqs = [SegmentRequest(path_id=i, context=_prompt(tok)) for i in range(3)]
    sp = SamplingParams(temperature=1.0)
    base = engine.generate(reqs, 12, sp, seed=4)
    gen = torch.Generator().manual_seed(0)
    perturbed = {k: v + 0.2 * torch.randn(v.shape, generator=gen) if "mlp" in k else v
                 for k, v in original.items()}
    try:
        engine.load_weights(perturbed)
        before = engine.counters.snapshot()
        changed = engine.generate(reqs[:1], 12, sp, seed=4)[0]
        assert engine.counters.since(before).prefill_cached_tokens == 0  # old KV was dropped
        assert changed.logprobs != base[0].logprobs
    finally:
        engine.load_weights(original)
    again = engine.generate(reqs, 12, sp, seed=4)
    assert [o.tokens for o in again] == [o.tokens for o in base]
    assert [o.logprobs for o in again] == [o.logprobs for o in base]


@needs_vllm
def test_oov_ids_never_sampled_and_eos_ends_a_segment(setup):
    engine, model, tok = setup
    original = model.state_dict()
    assert model.config.vocab_size > len(tok)
    # a flat output layer: every id gets the same logit. Unmasked, 27 of 128 ids would be padding and
    # ~400 of the ~1500 sampled tokens would be out of vocabulary.
    flat = dict(original, **{"lm_head.weight": torch.zeros_like(original["lm_head.weight"])})
    reqs = [SegmentRequest(path_id=i, context=_prompt(tok)) for i in range(48)]
    try:
        engine.load_weights(flat)
        outs = engine.generate(reqs, 40, SamplingParams(temperature=1.0), seed=9)
    finally:
        engine.load_weights(original)
    ids = [t for o in outs for t in o.tokens]
    assert max(ids) < len(tok)
    # uniform over the tokenizer's ids only: the mask renormalises over len(tok), not the model vocab
    assert max(abs(lp + math.log(len(tok))) for o in outs for lp in o.logprobs) < 1e-4
    eos = tok.eos_token_id
    assert sum(o.eos for o in outs) >= 3  # P(EOS) = 1/101 per token: ~16 of 48 segments end on it
    for o in outs:
        assert o.eos == (o.tokens[-1] == eos)
        assert eos not in o.tokens[:-1]
        assert o.eos or len(o.tokens) == 40


def _rollout(engine, tok, seed):
    from treepo_lab.rollout.config import SamplerConfig
    from treepo_lab.rollout.sampler import build_sampler

    cfg = SamplerConfig(width=4, max_depth=3, segment_len=16, branch=2, fallback_block_size=8)
    sampler = build_sampler(cfg, engine, tok.decode, tok.eos_token_id)
    prompts = [_prompt(tok), _prompt(tok, "a second, different prompt for the tree sampler. ")]
    return cfg, prompts, sampler.rollout(prompts, seed=seed)


@needs_vllm
def test_tree_sampler_on_vllm_gives_valid_trees(setup):
    engine, _, tok = setup
    cfg, prompts, result = _rollout(engine, tok, seed=11)
    for _prompt, tree in zip(prompts, result.trees):
        assert len(tree.leaves) == cfg.width
        for leaf in tree.leaves:
            assert 1 <= len(leaf.node_path) <= cfg.max_depth
            assert leaf.node_path == tree.path_to(leaf.node_path[-1])
            resp = tree.response_tokens(leaf)
            assert 0 < len(resp) <= cfg.max_depth * cfg.segment_len and max(resp) < len(tok)
            assert len(tree.response_logprobs(leaf)) == len(resp)
    # siblings resubmit shared prefixes: the cache served part of the prefill
    assert result.stats.counters.prefill_cached_tokens > 0


@needs_vllm
def test_tree_sampler_on_vllm_same_seed_same_tree(setup):
    engine, _, tok = setup
    first = [t.to_dict() for t in _rollout(engine, tok, seed=21)[2].trees]
    assert first == [t.to_dict() for t in _rollout(engine, tok, seed=21)[2].trees]
