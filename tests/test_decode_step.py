"""The lean decode step equals the model forward it stands in for, and stands aside where it cannot.

Each case prefills the same left-padded batch into two caches with the model forward, then decodes
several tokens with the lean step on one and the model forward on the other: logits and the cache
contents must agree. Architectures: Llama with grouped KV heads, Qwen2 (q/k/v biases), Mistral.
"""
from __future__ import annotations

import pytest
import torch
from transformers import (
    Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config, Qwen3ForCausalLM,
)

from treepo_lab.engines import kv
from treepo_lab.engines.base import SamplingParams, SegmentRequest
from treepo_lab.engines.decode_step import LeanDecodeStep, unsupported_reason
from treepo_lab.engines.hf import HFEngine

torch.set_num_threads(1)
SMALL = dict(vocab_size=50, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
             initializer_range=0.3)


def build(cls, cfg_cls, attn="sdpa", **extra):
    torch.manual_seed(0)
    cfg = cfg_cls(**{**SMALL, **extra})
    cfg._attn_implementation = attn
    return cls(cfg).eval()


CASES = {
    "llama-gqa": lambda: build(LlamaForCausalLM, LlamaConfig),
    "llama-eager": lambda: build(LlamaForCausalLM, LlamaConfig, attn="eager", num_key_value_heads=4),
    "llama-rope-linear": lambda: build(LlamaForCausalLM, LlamaConfig,
                                       rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0}),
    "qwen2-bias": lambda: build(Qwen2ForCausalLM, Qwen2Config),
    "mistral": lambda: build(MistralForCausalLM, MistralConfig, sliding_window=None),
    # q/k norms, four (1 + w) norms per layer, sliding and full layers with their own RoPE bases, 1 KV head
    "gemma3": lambda: build(Gemma3ForCausalLM, Gemma3TextConfig, attn="eager", num_key_value_heads=1, head_dim=32,
                            sliding_window=64, layer_types=["sliding_attention", "full_attention"],
                            query_pre_attn_scalar=32, hidden_activation="gelu_pytorch_tanh"),
}


def additive(mask: torch.Tensor) -> torch.Tensor:
    return torch.zeros(mask.shape).masked_fill_(mask == 0, torch.finfo(torch.float32).min)[:, None, None, :]


@pytest.mark.parametrize("case", sorted(CASES))
@torch.inference_mode()
def test_lean_step_equals_model_forward(case):
    model = CASES[case]()
    assert unsupported_reason(model) is None
    step = LeanDecodeStep(model)
    g = torch.Generator().manual_seed(1)
    lens = torch.tensor([7, 3, 11, 1])  # left-padded to 11; the 1-token row is all padding but its own
    width = int(lens.max())
    ids = torch.randint(2, 50, (4, width), generator=g)
    mask = (torch.arange(width) >= (width - lens)[:, None]).long()
    pos = (torch.arange(width) - (width - lens)[:, None]).clamp(min=0)
    caches = [kv.new_cache(16), kv.new_cache(16)]
    for cache in caches:
        model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True)
    last, p = torch.randint(2, 50, (4,), generator=g), lens.clone()
    for _ in range(6):
        mask = torch.cat([mask, torch.ones(4, 1, dtype=mask.dtype)], dim=1)
        want = model(input_ids=last[:, None], attention_mask=additive(mask), position_ids=p[:, None],
                     past_key_values=caches[0], use_cache=True).logits[:, -1]
        got = step(last, p, caches[1], additive(mask)[:, 0])
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        assert want.std() > 0.1  # a sharp model: a wrong position or KV row would show far above this
        last, p = want.argmax(-1), p + 1
    for a, b in zip(caches[0].layers, caches[1].layers):
        torch.testing.assert_close(a.keys, b.keys, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a.values, b.values, rtol=1e-5, atol=1e-5)


def test_a_wrong_rotary_position_is_caught():
    """The comparison above can fail: the lean step fed positions off by one differs far above 1e-5."""
    model = CASES["llama-gqa"]()
    step = LeanDecodeStep(model)
    ids, mask, pos = torch.tensor([[5, 6, 7]]), torch.ones(1, 4, dtype=torch.long), torch.tensor([[0, 1, 2]])
    caches = [kv.new_cache(4), kv.new_cache(4)]
    with torch.inference_mode():
        for cache in caches:
            model(input_ids=ids, attention_mask=mask[:, :3], position_ids=pos, past_key_values=cache, use_cache=True)
        want = model(input_ids=torch.tensor([[8]]), attention_mask=additive(mask), position_ids=torch.tensor([[3]]),
                     past_key_values=caches[0], use_cache=True).logits[:, -1]
        got = step(torch.tensor([8]), torch.tensor([4]), caches[1], additive(mask)[:, 0])
    assert (got - want).abs().max() > 1e-3


@pytest.mark.parametrize("model, reason", [
    (lambda: build(Qwen3ForCausalLM, Qwen3Config, head_dim=16), "Qwen3ForCausalLM is not one of"),
    (lambda: build(MistralForCausalLM, MistralConfig, sliding_window=8), "sliding-window"),
    (lambda: build(Qwen2ForCausalLM, Qwen2Config, use_sliding_window=True, sliding_window=8), "sliding-window"),
    (lambda: build(LlamaForCausalLM, LlamaConfig, rope_parameters={"rope_type": "dynamic", "factor": 2.0,
                                                                   "rope_theta": 1e4}), "rope_type 'dynamic'"),
    (lambda: build(LlamaForCausalLM, LlamaConfig, attn="flex_attention"), "attention 'flex_attention'"),
], ids=["qwen3", "mistral-window", "qwen2-window", "dynamic-rope", "flex"])
def test_unsupported_models_keep_the_model_forward(model, reason):
    model = model()
    assert reason in unsupported_reason(model)
    with pytest.raises(ValueError, match="lean decode step"):
        LeanDecodeStep(model)
    assert HFEngine(model, eos_token_id=1)._lean is None


def test_a_hook_added_later_runs_in_every_decode_step():
    """A forward hook registered after the engine was built (a probe, a timer) must see every
    decode call, so the engine goes back to the model forward while it is there."""
    model = CASES["llama-gqa"]()
    engine = HFEngine(model, eos_token_id=1)
    assert engine._lean is not None
    calls = []
    handle = model.register_forward_hook(lambda *_: calls.append(1))
    reqs = [SegmentRequest(0, [3, 4, 5]), SegmentRequest(1, [6, 7])]
    engine.generate(reqs, 5, SamplingParams(temperature=1.0), seed=0)
    assert len(calls) == engine.counters.forward_calls
    handle.remove()
    calls.clear()
    engine.generate(reqs, 5, SamplingParams(temperature=1.0), seed=0)
    assert calls == []


def test_lean_and_model_forward_sample_the_same_tokens():
    """Same seed, same requests: the two decode paths agree token for token (their logits differ by
    float rounding only, far below what would flip a sample at these sizes)."""
    model = CASES["qwen2-bias"]()
    reqs = [SegmentRequest(i, [2 + i, 9, 4, 7][: 1 + i]) for i in range(4)]
    outs = [HFEngine(model, eos_token_id=1, lean_decode=lean).generate(reqs, 12, SamplingParams(temperature=1.0), seed=3)
            for lean in (True, False)]
    assert [o.tokens for o in outs[0]] == [o.tokens for o in outs[1]]
    for a, b in zip(*outs):
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fuse", [True, False], ids=["fused-weights", "separate-matmuls"])
def test_weights_changed_in_place_are_used_at_the_next_call(monkeypatch, fuse):
    """The concatenated weight copies follow an in-place update (an optimizer step); with fusion
    off (large models) the step calls the projections one by one, with the same result."""
    from treepo_lab.engines import decode_step

    monkeypatch.setattr(decode_step, "FUSE_MAX_PARAMS", 10**12 if fuse else 0)
    model = CASES["qwen2-bias"]()
    step = LeanDecodeStep(model)
    ids, pos = torch.tensor([3, 4]), torch.tensor([0, 0])

    def logits():
        step.prepare(8)
        with torch.inference_mode():
            return step(ids, pos, kv.new_cache(4), torch.zeros(2, 1, 1))

    def reference():
        with torch.inference_mode():
            return model(input_ids=ids[:, None], position_ids=pos[:, None]).logits[:, -1]

    torch.testing.assert_close(logits(), reference(), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.k_proj.weight.mul_(1.5)
            layer.mlp.up_proj.weight.add_(0.1)
    torch.testing.assert_close(logits(), reference(), rtol=1e-5, atol=1e-5)


def test_gemma_takes_the_lean_step_only_inside_its_sliding_window():
    """Its sliding layers attend like full ones while every position is inside the window: beyond it, the
    engine's call runs the model forward (the lean step has no window mask)."""
    step = LeanDecodeStep(CASES["gemma3"]())
    assert step.covers(63) and not step.covers(64)
    assert LeanDecodeStep(CASES["llama-gqa"]()).covers(10 ** 6)
