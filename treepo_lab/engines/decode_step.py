"""A lean one-token decode step for Llama-family models: the model's own weights, without the
transformers forward around them.

On the tiny model a transformers forward of one token costs ~2.5 ms whatever the batch: output
dataclasses, kwargs plumbing, the decorators, the rotary module, the attention dispatch. The tree
sampler and the sequential sampler make the same number of decode calls, so that fixed cost is what
kept the tree's wall time from following its token saving (issue #12, item 6). This step runs the
model's embedding, RMSNorm weights, projections, MLP activation and head; only the glue is ours:
rotary embeddings read from a table computed once by the model's own rotary module, the KV append
into the engine's cache, and attention over it as batched matmuls with the engine's additive mask.
Its logits equal the model forward's to float rounding (tests/test_decode_step.py).

Only architectures whose forward is exactly this are accepted (`unsupported_reason` says why not);
everything else keeps the model forward.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# causal LMs whose decoder layer is: x + attn(norm1(x)); x + mlp(norm2(x)), full attention, RoPE
# on q and k, no q/k norms; Qwen2 and Mistral only without a sliding window
ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM")
# Gemma 3: x + norm(attn(norm(x))); x + norm(mlp(norm(x))) with (1 + w) RMSNorms (the model's own modules run
# them), q/k norms before RoPE, a RoPE table per layer type; its sliding-window layers attend like full ones
# while every position is inside the window (`covers`), else the engine takes the model forward
GEMMA = ("Gemma3ForCausalLM",)
# RoPE variants whose cos/sin depend on the position alone (dynamic / longrope rescale with length)
STATIC_ROPE = ("default", "linear", "llama3", "yarn")
FUSE_MAX_PARAMS = 50_000_000  # decoder parameters up to which weights are concatenated (prepare)
ATTENTION = ("sdpa", "eager")  # both take the engine's additive 4-D mask and compute plain softmax


PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


HOOKED = "the model carries forward hooks (offloading, adapters or probes) that a forward must run"


def has_forward_hooks(model) -> bool:
    """Hooks can come and go after the engine is built, so the engine asks this at every call."""
    return any(getattr(m, "_hf_hook", None) is not None or m._forward_hooks or m._forward_pre_hooks
               for m in model.modules())


def unsupported_reason(model) -> str | None:
    """Why the lean step cannot stand in for this model's forward (None: it can)."""
    name, cfg = type(model).__name__, model.config
    if name not in ARCHITECTURES + GEMMA:
        return f"{name} is not one of {', '.join(ARCHITECTURES + GEMMA)}"
    if getattr(cfg, "_attn_implementation", None) not in ATTENTION:
        return f"attention {cfg._attn_implementation!r} is not one of {ATTENTION}"
    if name not in GEMMA and (getattr(cfg, "use_sliding_window", False)
                              or (name == "MistralForCausalLM" and cfg.sliding_window)):
        return "sliding-window attention"
    if getattr(cfg, "attn_logit_softcapping", None):
        return "attention logit soft-capping"
    ropes = getattr(cfg, "rope_parameters", None) or {}
    for rope in ([r.get("rope_type", "default") for r in ropes.values()] if name in GEMMA else
                 [ropes.get("rope_type", "default")]):
        if rope not in STATIC_ROPE:
            return f"rope_type {rope!r} changes with the sequence length"
    if has_forward_hooks(model):
        return HOOKED
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        if name not in GEMMA and any(hasattr(attn, a) for a in ("q_norm", "k_norm")):
            return "q/k norms"
        # plain Linear weights are concatenated (q|k|v, gate|up); quantized or adapted layers are not
        if any(type(getattr(m, p, None)) is not torch.nn.Linear for m, ps in ((attn, PROJECTIONS), (mlp, MLP)) for p in ps):
            return "projections that are not plain torch.nn.Linear (quantized or adapted)"
    return None


class LeanDecodeStep:
    """`step(ids, pos, cache, bias, flat, g)`: logits [children, vocab] of one new token per child.

    ids, pos [children] the tokens to feed and their positions; cache the engine's DynamicCache
    (appended to); bias [rows, g, T + g] the additive mask over the cache's T columns plus this
    step's. With g == 1 the cache rows are the children (flat None); with g > 1 they are sibling
    groups and child c sits in slot flat[c] % g of row flat[c] // g (hf.py): the slots' queries
    attend to their row's columns in one batch entry, so a shared context is read once.
    Call `prepare(max_position)` whenever the weights may have changed (the engine does, once per
    generate call).

    Fewer torch calls per layer is the point (each costs microseconds whatever its size): q, k and v
    come from one matmul over the concatenated weights, as do gate and up (small models); RoPE rotates q and k in
    one go; the residual adds ride in the output matmuls (addmm); RMSNorm is torch's fused op.
    """

    def __init__(self, model):
        reason = unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"lean decode step: {reason}")
        self.model = model
        cfg = model.config
        attn = model.model.layers[0].self_attn
        self.head_dim, self.scaling = attn.head_dim, attn.scaling
        self.n_q, self.n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.gemma = type(model).__name__ in GEMMA
        # Gemma: a table per layer type; its sliding layers equal full ones only while positions fit the window
        self.layer_types = list(getattr(cfg, "layer_types", None) or []) if self.gemma else []
        self.window = getattr(cfg, "sliding_window", None) if "sliding_attention" in self.layer_types else None
        self._cos = self._sin = None
        self._tables: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._layers: list[tuple] = []

    def prepare(self, max_position: int | None = None) -> None:
        """Take this moment's weights (the trainer updates them in place between calls) and make
        sure the RoPE table reaches max_position.

        Small models get q|k|v and gate|up as concatenated copies (a few hundred microseconds, redone
        only when a weight changed): there the number of calls is what costs. Above FUSE_MAX_PARAMS
        the matmuls dominate and a copy of most of the weights would cost memory: separate calls."""
        weights = [p for layer in self.model.model.layers for p in layer.parameters()]
        # inference tensors (a model built under inference_mode) keep no version counter: redo it
        version = None if any(p.is_inference() for p in weights) else tuple((p.data_ptr(), p._version) for p in weights)
        if version is None or version != getattr(self, "_version", None):
            fuse = sum(p.numel() for p in weights) <= FUSE_MAX_PARAMS
            self._layers = []
            for layer in self.model.model.layers:
                a, m = layer.self_attn, layer.mlp
                if self.gemma:  # its norms are the model's modules: (1 + w) in float32, then the cast
                    self._layers.append((
                        layer.input_layernorm, _joined(fuse, a.q_proj, a.k_proj, a.v_proj), a.o_proj,
                        layer.post_attention_layernorm, layer.pre_feedforward_layernorm,
                        _joined(fuse, m.gate_proj, m.up_proj), m.down_proj, layer.post_feedforward_layernorm,
                        m.act_fn, m.gate_proj.out_features, a.q_norm, a.k_norm))
                    continue
                self._layers.append((
                    _norm(layer.input_layernorm), _joined(fuse, a.q_proj, a.k_proj, a.v_proj), _out(a.o_proj),
                    _norm(layer.post_attention_layernorm), _joined(fuse, m.gate_proj, m.up_proj), _out(m.down_proj),
                    m.act_fn, m.gate_proj.out_features,
                ))
            self._version = version
        weight = self.model.model.embed_tokens.weight
        need = max(max_position or 0, self.model.config.max_position_embeddings) + 1
        if self._cos is None or self._cos.shape[0] < need or self._cos.dtype != weight.dtype:
            # the model's rotary module over every position: the same elementwise float ops as its
            # per-call forward, so the same values. The sin's first half is negated, so that
            # rotate_half(x) * sin = x.roll(half) * signed sin.
            positions = torch.arange(need, device=weight.device)[None]
            half = self.head_dim // 2
            for kind in self.layer_types and dict.fromkeys(self.layer_types) or [None]:
                rope = self.model.model.rotary_emb
                cos, sin = rope(weight[:1], position_ids=positions, **({"layer_type": kind} if kind else {}))
                self._tables[kind] = cos[0], torch.cat([-sin[0, :, :half], sin[0, :, half:]], dim=-1)
            self._cos, self._sin = self._tables[self.layer_types[0] if self.layer_types else None]

    def covers(self, max_position: int) -> bool:
        """Every position up to max_position is inside the sliding window (models without one: always)."""
        return self.window is None or max_position < self.window

    def declines(self, max_position: int) -> str | None:
        """Why a call reaching max_position must take the model forward (None: this step runs): hooks added
        since the engine was built (a probe, an adapter) must run; Gemma's sliding layers would see past
        their window."""
        if has_forward_hooks(self.model):
            return HOOKED
        if not self.covers(max_position):
            return f"positions up to {max_position} reach the sliding window ({self.window}): the model forward runs"
        return None

    def _attend(self, q, k, v, mask3):
        """softmax(q k^T * scale + mask) v as two batched matmuls, one batch entry per (row, KV head)
        with its queries (slots x the heads sharing that KV head) as the entry's rows: on CPU, over
        the strided windows of the engine's KV buffers, faster than SDPA's flash kernel."""
        rows, n_kv, t, hd = k.shape
        w = torch.baddbmm(mask3, q, k.reshape(rows * n_kv, t, hd).transpose(1, 2), alpha=self.scaling)
        # softmax in float32 whatever the model dtype, as transformers' eager attention does
        return torch.bmm(w.softmax(-1, dtype=torch.float32).to(v.dtype), v.reshape(rows * n_kv, t, hd))

    def _layer_attention(self, i, x, cos, sin, cache, mask3, flat, rows, g) -> torch.Tensor:
        """Layer i's attention output [children, n_q * hd] from x [children, q|k|v heads, hd] (q and k
        normed already where the model norms them): RoPE, the slots, the cache append, the attention."""
        hd, n_q, n_kv = self.head_dim, self.n_q, self.n_kv
        n_qk, gq = n_q + n_kv, n_q // n_kv
        qk = x[:, :n_qk]
        qk = torch.addcmul(qk * cos, qk.roll(hd // 2, dims=-1), sin)
        if flat is not None:  # children into their slots (empty slots stay zero: finite, masked)
            qk = qk.new_zeros((rows * g, n_qk, hd)).index_copy_(0, flat, qk)
            vs = x.new_zeros((rows * g, n_kv, hd)).index_copy_(0, flat, x[:, n_qk:])
        else:
            vs = x[:, n_qk:]
        qk, vs = qk.view(rows, g, n_qk, hd), vs.view(rows, g, n_kv, hd)
        k, v = cache.update(qk[:, :, n_q:].transpose(1, 2), vs.transpose(1, 2), i)  # [rows, n_kv, T, hd]
        q = qk[:, :, :n_q].reshape(rows, g, n_kv, gq, hd).transpose(1, 2).reshape(rows * n_kv, g * gq, hd)
        a = self._attend(q, k, v, mask3)  # [rows * n_kv, g * gq, hd]
        a = a.view(rows, n_kv, g, gq, hd).transpose(1, 2).reshape(rows * g, n_q * hd)
        return a if flat is None else a[flat]

    def __call__(self, ids, pos, cache, bias, flat=None, g=1) -> torch.Tensor:
        if not self._layers:
            self.prepare(int(pos.max()))
        base = self.model.model
        h = base.embed_tokens(ids)  # [children, hidden] (Gemma's module scales by sqrt(hidden) itself)
        n, hd, n_q, n_kv = h.shape[0], self.head_dim, self.n_q, self.n_kv
        rows, gq, cols = bias.shape[0], n_q // n_kv, bias.shape[-1]
        tables = {kind: (cos[pos][:, None], sin[pos][:, None]) for kind, (cos, sin) in self._tables.items()}
        # one batch entry per (row, KV head): its g slots x gq query heads share the row's keys
        mask3 = bias[:, None, :, None, :].expand(rows, n_kv, g, gq, cols).reshape(rows * n_kv, g * gq, cols)
        for i, layer in enumerate(self._layers):
            if self.gemma:
                norm1, qkv, o_proj, post_attn, pre_ff, gate_up, down, post_ff, act, inter, q_norm, k_norm = layer
                x = qkv(norm1(h)).view(n, -1, hd)
                x = torch.cat([q_norm(x[:, :n_q]), k_norm(x[:, n_q:n_q + n_kv]), x[:, n_q + n_kv:]], dim=1)
                cos, sin = tables[self.layer_types[i]]
                h = h + post_attn(o_proj(self._layer_attention(i, x, cos, sin, cache, mask3, flat, rows, g)))
                gu = gate_up(pre_ff(h))
                h = h + post_ff(down(act(gu[:, :inter]) * gu[:, inter:]))
                continue
            norm1, qkv, out, norm2, gate_up, down, act, inter = layer
            x = qkv(norm1(h)).view(n, -1, hd)  # [children, q|k|v heads, hd]
            cos, sin = tables[None]
            h = out(h, self._layer_attention(i, x, cos, sin, cache, mask3, flat, rows, g))
            gu = gate_up(norm2(h))
            h = down(h, act(gu[:, :inter]) * gu[:, inter:])
        logits = self.model.lm_head(base.norm(h))
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits


def _joined(fuse: bool, *linears):
    """x -> the outputs of `linears` side by side: one matmul over concatenated weights (fuse) or
    one call each, joined."""
    if not fuse:
        return lambda x: torch.cat([m(x) for m in linears], dim=-1)
    weight = torch.cat([m.weight for m in linears])
    bias = None if linears[0].bias is None else torch.cat([m.bias for m in linears])
    return lambda x: F.linear(x, weight, bias)


def _norm(module):
    """The model's RMSNorm as one fused torch op (same formula: weight * x / sqrt(mean(x^2) + eps),
    computed in float32 and cast back before the weight, as the module does)."""
    weight, eps = module.weight, module.variance_epsilon
    if weight.dtype == torch.float32:  # no casts to make: the weight rides in the fused op
        return lambda x: F.rms_norm(x, (x.shape[-1],), weight, eps)

    def norm(x):
        return weight * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)

    return norm


def _out(linear):
    """residual + linear(x) as one addmm (no bias) or a linear and an add."""
    weight_t, bias = linear.weight.t(), linear.bias
    if bias is None:
        return lambda residual, x: torch.addmm(residual, x, weight_t)
    return lambda residual, x: residual + F.linear(x, linear.weight, bias)
