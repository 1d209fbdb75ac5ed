"""The HF engine: a manual decode loop over one batched transformers `DynamicCache` (see kv.py).

State between calls (one row per live path, rows left-padded to a common width T):
  cache  KV of context[:-1] of every live path, layers [rows, heads, T, head_dim]
  mask   [rows, T] 1 where the cache column is a real token, 0 for left padding
  last   [rows] the pending last context token, not fed yet (its KV is computed by the next forward)
  pos    [rows] the position of that pending token (= len(context) - 1)
Keeping the last token pending makes every call uniform: forked rows and freshly prefilled rows all
start with one forward over their pending tokens, whose logits give the first new token.

A call consumes the previous state: requests naming a live parent continue from its row, requests
with no parent are prefilled (identical contexts once), and every path not named as a parent is
released. Within a call, the children of one row (siblings) either
  - share it as a sibling group: the row holds their common context once, child j of g appends its
    tokens at columns width + step * g + j, and the attention mask keeps each child to the common
    context and its own columns. A fork copies nothing, and a step reads the shared context once for
    the whole group. At the end every surviving child gets a row of its own (kv.materialize). Used
    where the shared context is at least as long as the g - 1 siblings' columns each query skips
    (a tree's segments; not the sequential sampler's one long call over w copies of a prompt), or
  - get a copy of the row each (kv.fork_cache), so their continuations never mix.
Children that sample EOS leave the batch at once (a group's row once all of its children have), so
finished paths cost no compute. Decode steps run the lean step (decode_step.py) where the model
allows, else the model forward with the same 4-D masks (q_len = g per row for groups).
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from treepo_lab.engines import draws, kv
from treepo_lab.engines.decode_step import HOOKED, LeanDecodeStep, unsupported_reason
from treepo_lab.engines.base import EngineCounters, SamplingParams, SegmentOut, SegmentRequest
from treepo_lab.engines.logprobs import sampling_logprobs
from treepo_lab.seeding import stream_key


_log = logging.getLogger(__name__)
_LOGGED: set[str] = set()


def _log_once(reason: str) -> None:
    if reason not in _LOGGED:
        _LOGGED.add(reason)
        _log.info("hf engine: decode steps run the model forward (%s)", reason)


@dataclass
class _Live:
    row: int
    length: int  # context length a child must bring (parent context + its new tokens)
    last: int  # the pending token (= that context's last token)


@dataclass
class _Batch:
    """The rows of one generate call (see the module doc for cache, mask, last, pos)."""

    g: int  # slots per row: 1 = one row per child; > 1 = sibling groups
    cache: object = None
    mask: torch.Tensor | None = None
    last: torch.Tensor | None = None
    pos: torch.Tensor | None = None
    row2req: torch.Tensor | None = None  # the request of each live child
    flat: torch.Tensor | None = None  # g > 1: each live child's place, row * g + slot
    width: int = 0  # columns of the shared context (the decoded columns follow)
    bias: torch.Tensor | None = None  # the additive attention mask of the call, where the attention takes one
    ones: torch.Tensor | None = None


@dataclass
class _Outputs:
    """Per request: the tokens, log-probs and entropies decoded so far, how many, and whether it hit EOS."""

    tok: torch.Tensor
    lp: torch.Tensor
    ent: torch.Tensor
    n: torch.Tensor
    ended: torch.Tensor

    @classmethod
    def empty(cls, n_req: int, max_tokens: int, dev) -> _Outputs:
        return cls(torch.zeros((n_req, max_tokens), dtype=torch.long, device=dev),
                   torch.zeros((n_req, max_tokens), device=dev), torch.zeros((n_req, max_tokens), device=dev),
                   torch.zeros(n_req, dtype=torch.long, device=dev), torch.zeros(n_req, dtype=torch.bool, device=dev))

    def segments(self) -> tuple[list[SegmentOut], list[list[int]], list[int]]:
        toks, lps, ents = self.tok.tolist(), self.lp.tolist(), self.ent.tolist()
        lens, eos = self.n.tolist(), self.ended.tolist()
        outs = [SegmentOut(toks[q][: lens[q]], lps[q][: lens[q]], ents[q][: lens[q]], eos[q]) for q in range(len(lens))]
        return outs, toks, lens


class HFEngine:
    """Engine protocol over any transformers causal LM with full attention (see module doc)."""

    def __init__(self, model, eos_token_id: int, pad_token_id: int | None = None, device=None,
                 lean_decode: bool = True):
        if device is not None:
            model.to(device)
        self.model = model
        self.device = next(model.parameters()).device
        self.eos_token_id = int(eos_token_id)
        self.pad_token_id = int(eos_token_id if pad_token_id is None else pad_token_id)
        self.counters = EngineCounters()
        if self.device.type == "cpu":
            kv.keep_freed_memory()
        # a decode step passes its padding mask as a prepared 4-D additive mask where the attention
        # applies one as given: transformers then skips building it from the 2-D mask at every call
        # (~2 ms of a ~25 ms call at 128 rows on CPU, a larger share of the tree's smaller calls)
        impl = getattr(model.config, "_attn_implementation", None)
        self._mask_dtype = next(model.parameters()).dtype if impl in ("sdpa", "eager") else None
        # decode steps through the model's own modules without the transformers forward around them
        # (decode_step.py): the fixed cost per call is what the tree's wall time paid for its savings
        reason = unsupported_reason(model) if lean_decode else None
        self._lean = LeanDecodeStep(model) if lean_decode and reason is None else None
        if reason is not None and reason != HOOKED:  # hooks are looked at again at every call
            _log_once(reason)
        self._drop_state()

    # -- protocol -------------------------------------------------------------------------------

    def release(self) -> None:
        self._drop_state()

    def load_weights(self, weights) -> None:
        """New weights: a state dict or (name, tensor) pairs, copied one at a time."""
        own = self.model.state_dict()
        with torch.no_grad():
            for name, t in weights.items() if isinstance(weights, Mapping) else weights:
                if name not in own:
                    raise KeyError(f"load_weights: {name!r} is not a weight of {type(self.model).__name__}")
                if own[name].data_ptr() != t.data_ptr():  # the trainer may own the very same model
                    own[name].copy_(t)
        self._drop_state()  # caches were computed by the old weights

    @torch.inference_mode()
    def generate(
        self, requests: list[SegmentRequest], max_tokens: int, sampling: SamplingParams, seed: int
    ) -> list[SegmentOut]:
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        self._check(requests)
        was_training = self.model.training
        # no dropout while sampling, whatever mode the trainer left; train()/eval() walk every module
        # (~1 ms a call on the tiny model), so only when some module is training
        switch = was_training or any(m.training for m in self.model.modules())
        if switch:
            self.model.eval()
        try:
            return self._generate(requests, max_tokens, sampling, seed)
        finally:
            if switch:
                self.model.train(was_training)

    # -- internals ------------------------------------------------------------------------------

    def _drop_state(self) -> None:
        self._cache = self._mask = self._last = self._pos = None
        self._paths: dict[int, _Live] = {}

    def _check(self, requests: list[SegmentRequest]) -> None:
        ids = [r.path_id for r in requests]
        if len(set(ids)) != len(ids):
            raise ValueError("path_id values must be unique within one generate call")
        for r in requests:
            if not r.context:
                raise ValueError(f"path {r.path_id}: empty context")
            if r.parent_id is None:
                continue
            live = self._paths.get(r.parent_id)
            if live is None:
                raise ValueError(
                    f"path {r.path_id}: parent {r.parent_id} is not live (ended on EOS, released, "
                    "or not continued in the previous call); pass parent_id=None to prefill it"
                )
            if len(r.context) != live.length or r.context[-1] != live.last:
                raise ValueError(f"path {r.path_id}: context does not continue parent {r.parent_id}")

    def _timed(self, run) -> torch.Tensor:
        """run() counted as one forward call, with its wall time."""
        t0 = time.perf_counter()
        out = run()
        if self.device.type == "cuda":  # CUDA is asynchronous: charge the kernels to the forward
            torch.cuda.synchronize(self.device)
        self.counters.forward_s += time.perf_counter() - t0
        self.counters.forward_calls += 1
        return out

    def _forward(self, ids, mask, positions, cache, keep=1) -> torch.Tensor:
        """One model forward: logits of the last `keep` positions ([rows, V] when keep == 1)."""
        logits = self._timed(lambda: self.model(
            input_ids=ids, attention_mask=mask, position_ids=positions,
            past_key_values=cache, use_cache=True, logits_to_keep=keep,
        ).logits)
        return logits[:, -1] if keep == 1 else logits

    def _sibling_bias(self, mask: torch.Tensor, g: int, max_tokens: int) -> torch.Tensor:
        """The additive attention mask of a call's group rows, [groups, g, width + g * max_tokens]:
        every slot sees the group's real context columns (mask [groups, width]); decoded column
        width + s * g + j belongs to slot j alone (a sibling never sees another's tokens)."""
        groups, width = mask.shape
        low = torch.finfo(self._mask_dtype).min
        bias = torch.full((groups, g, width + g * max_tokens), low, dtype=self._mask_dtype, device=mask.device)
        bias[:, :, :width].masked_fill_(mask[:, None, :] == 1, 0)
        bias[:, :, width:].view(groups, g, max_tokens, g).diagonal(dim1=1, dim2=3).fill_(0)
        return bias

    def _decode(self, last, pos, cache, step_mask, flat, g, lean) -> torch.Tensor:
        """Logits [children, V] of one decode step. With g > 1 the cache rows are sibling groups and
        `flat` places each child in its group's slots (group * g + slot); with g == 1 rows are children."""
        if lean is not None:
            return self._timed(lambda: lean(last, pos, cache, step_mask, flat, g))
        if g == 1:
            mask = step_mask if step_mask.dim() == 2 else step_mask[:, None]
            return self._forward(last[:, None], mask, pos[:, None], cache)
        groups = step_mask.shape[0]
        ids = torch.full((groups * g,), self.pad_token_id, dtype=last.dtype, device=last.device)
        positions = torch.zeros_like(ids)
        ids[flat], positions[flat] = last, pos
        logits = self._forward(ids.view(groups, g), step_mask[:, None], positions.view(groups, g), cache, keep=g)
        return logits.reshape(groups * g, -1)[flat]

    def _prefill(self, contexts: list[list[int]], headroom: int):
        """KV of context[:-1] for fresh rows (left-padded); the last token stays pending."""
        n = torch.tensor([len(c) - 1 for c in contexts])
        width = int(n.max())
        ids = torch.tensor([[self.pad_token_id] * (width - len(c) + 1) + c[:-1] for c in contexts])
        mask = (torch.arange(width) >= (width - n)[:, None]).long()
        positions = (torch.arange(width) - (width - n)[:, None]).clamp(min=0)
        cache = kv.new_cache(width + headroom)  # room for the prefill and the tokens to decode
        if width:
            dev = self.device
            self._forward(ids.to(dev), mask.to(dev), positions.to(dev), cache)
        last = torch.tensor([c[-1] for c in contexts], device=self.device)
        return cache, mask.to(self.device), last, n.to(self.device)

    def _generate(self, requests, max_tokens, sampling, seed) -> list[SegmentOut]:
        """One call, in named steps: group the requests, gather their rows (forked or prefilled), place
        the children, decode up to max_tokens steps (finished children leave at once), keep the survivors."""
        parents, contexts, group, slot, g = self._sibling_groups(requests, max_tokens)
        b = self._gather_rows(parents, contexts, g, max_tokens)
        self._place_children(b, group, slot, len(requests), max_tokens)
        out = _Outputs.empty(len(requests), max_tokens, self.device)
        lean = self._lean_for_call(b, max_tokens)
        # each request's own stream (SegmentRequest.seed): its draws do not depend on its neighbours
        keys = torch.tensor([r.seed if r.seed is not None else stream_key(seed, r.path_id) for r in requests],
                            dtype=torch.long, device=self.device)
        for step in range(max_tokens):
            tok = self._decode_step(b, step, lean, sampling, keys, out)
            done = tok == self.eos_token_id
            if bool(done.any()):  # the one host sync per step: compact only when a child finished
                out.ended[b.row2req[done]] = True
                if bool(done.all()):
                    b.row2req = b.row2req[:0]
                    break
                self._drop_finished(b, ~done, step, max_tokens)
        self.counters.decoded_tokens += int(out.n.sum())
        outs, toks, lens = out.segments()
        if len(b.row2req):  # survivors (all ran max_tokens steps) become the live paths of the next call
            self._keep_survivors(b, requests, toks, lens, max_tokens)
        return outs

    def _sibling_groups(self, requests, max_tokens):
        """The live parents (in row order) and fresh contexts of the call; each request's group (its
        parent's or its context's index, parents first), its slot among the group's children, and g: the
        slots per group row, 1 for no grouping."""
        # sibling groups (module doc): a fork copies nothing, the shared context is read once per step
        parents = sorted({r.parent_id for r in requests if r.parent_id is not None}, key=lambda p: self._paths[p].row)
        contexts = list(dict.fromkeys(tuple(r.context) for r in requests if r.parent_id is None))
        index = {("live", p): i for i, p in enumerate(parents)}
        index.update({("fresh", c): len(parents) + i for i, c in enumerate(contexts)})
        group = [index[("live", r.parent_id) if r.parent_id is not None else ("fresh", tuple(r.context))]
                 for r in requests]
        size: Counter[int] = Counter()
        slot = []  # each request's place among its group's children
        for x in group:
            slot.append(size[x])
            size[x] += 1
        g = max(size.values())
        # Grouping pays where the shared context is long next to what the call decodes: each of a
        # group's queries also scores the g - 1 siblings' columns (masked), which for a long call
        # (the sequential sampler's one call of d*l tokens, g = w) costs more than copying rows.
        shared = max(len(r.context) for r in requests) - 1  # the widest context in the cache
        if self._mask_dtype is None or (g - 1) * max_tokens > shared:
            g = 1  # one row per child (the attention takes no custom mask, or grouping would not pay)
        return parents, contexts, group, slot, g

    def _gather_rows(self, parents: list[int], contexts: list[tuple], g: int, max_tokens: int) -> _Batch:
        """One row per group: live parents' rows forked out of the previous state (which is consumed:
        every path not continued is released), then fresh contexts prefilled (identical ones once)."""
        dev = self.device
        b = _Batch(g=g)
        if parents:
            rows = torch.tensor([self._paths[p].row for p in parents], device=dev)
            kv.reserve(self._cache, g * max_tokens)
            b.cache = kv.fork_cache(self._cache, rows)  # distinct rows, ascending: moved in place
            b.mask, b.last, b.pos = self._mask[rows], self._last[rows], self._pos[rows]
        self._drop_state()  # consumed: every path not continued above is released here
        if contexts:  # identical contexts (a prompt's first paths, repeated fallback cuts) are prefilled once
            pcache, pmask, plast, ppos = self._prefill([list(c) for c in contexts], g * max_tokens)
            self.counters.prefill_tokens += sum(len(c) for c in contexts)
            b.cache, b.mask = kv.merge(b.cache, b.mask, pcache, pmask, g * max_tokens)
            b.last = plast if b.last is None else torch.cat([b.last, plast])
            b.pos = ppos if b.pos is None else torch.cat([b.pos, ppos])
        return b

    def _place_children(self, b: _Batch, group: list[int], slot: list[int], n_req: int, max_tokens: int) -> None:
        """g == 1: each child gets its group's row (copied for a group of several); g > 1: each child
        takes its slot of its group's row. Then the shared width and the attention bias of the call."""
        dev = self.device
        if b.g == 1:  # rows are children: each group's own row (a group of several is forked: copies)
            order = kv.fork_order(group)
            rows = torch.tensor([group[j] for j in order], device=dev)
            b.cache = kv.fork_cache(b.cache, rows)  # rows that stay put are not copied
            b.mask, b.last, b.pos = b.mask[rows], b.last[rows], b.pos[rows]
            b.row2req, b.flat = torch.tensor(order, device=dev), None
        else:  # children in request order, each at its slot of its group's row
            group_t = torch.tensor(group, device=dev)
            b.flat = group_t * b.g + torch.tensor(slot, device=dev)
            b.last, b.pos = b.last[group_t], b.pos[group_t]
            b.row2req = torch.arange(n_req, device=dev)
        b.mask = kv.trim(b.cache, b.mask)
        kv.reserve(b.cache, b.g * max_tokens)
        b.width = b.mask.shape[1]
        b.bias = None if self._mask_dtype is None else self._sibling_bias(b.mask, b.g, max_tokens)
        b.ones = torch.ones((len(b.mask), max_tokens), dtype=b.mask.dtype, device=dev)

    def _lean_for_call(self, b: _Batch, max_tokens: int):
        """The lean step, prepared for this call's weights and positions; None where the model forward runs."""
        lean, last = self._lean, int(b.pos.max()) + max_tokens
        reason = lean.declines(last) if lean is not None else None
        if reason is not None:
            _log_once(reason)
            return None
        if lean is not None:
            lean.prepare(last)
        return lean

    def _decode_step(self, b: _Batch, step: int, lean, sampling: SamplingParams, keys: torch.Tensor,
                     out: _Outputs) -> torch.Tensor:
        """Sample one token per live child; record token, log-prob and entropy; advance last and pos."""
        if b.bias is None:  # a 2-D padding mask for attentions that build their own
            step_mask = torch.cat([b.mask, b.ones[: len(b.mask), : step + 1]], dim=1)
        else:
            step_mask = b.bias[:, :, : b.width + b.g * (step + 1)]
        logp = sampling_logprobs(self._decode(b.last, b.pos, b.cache, step_mask, b.flat, b.g, lean), sampling)
        probs = logp.exp()  # shared by sampling and the entropy (= entropy_of(logp), one exp less)
        tok = draws.sample(probs, draws.uniforms(keys[b.row2req], step))
        out.tok[b.row2req, step] = tok
        out.lp[b.row2req, step] = logp.gather(1, tok[:, None]).squeeze(1)
        out.ent[b.row2req, step] = torch.special.entr(probs).sum(dim=-1)
        out.n[b.row2req] = step + 1
        b.last, b.pos = tok, b.pos + 1
        return tok

    def _drop_finished(self, b: _Batch, alive: torch.Tensor, step: int, max_tokens: int) -> None:
        """Finished children leave the batch; a row goes once none of its children is alive."""
        dev = self.device
        g = b.g
        if g == 1:  # rows are children: drop the finished rows
            keep = kv.compaction_order(alive)
            b.last, b.pos, b.row2req = b.last[keep], b.pos[keep], b.row2req[keep]
        else:  # children leave; a group row goes once all its children have
            b.last, b.pos, b.row2req, b.flat = b.last[alive], b.pos[alive], b.row2req[alive], b.flat[alive]
            live = torch.zeros(len(b.mask), dtype=torch.bool, device=dev)
            live[b.flat // g] = True
            keep = kv.compaction_order(live)
            renumber = torch.empty(len(b.mask), dtype=torch.long, device=dev)
            renumber[keep] = torch.arange(len(keep), device=dev)
            b.flat = renumber[b.flat // g] * g + b.flat % g
        if len(keep) < len(b.mask):
            kv.reserve(b.cache, g * (max_tokens - step - 1))
            b.cache.batch_select_indices(keep)
            b.mask = b.mask[keep]
            if b.bias is not None:
                b.bias = b.bias[keep]
        trimmed = kv.trim(b.cache, b.mask)
        if b.bias is not None:
            b.bias = b.bias[:, :, b.mask.shape[1] - trimmed.shape[1]:]
        b.width -= b.mask.shape[1] - trimmed.shape[1]
        b.mask = trimmed

    def _keep_survivors(self, b: _Batch, requests, toks, lens, max_tokens: int) -> None:
        """The children that ran all max_tokens steps become the live paths of the next call, one row each."""
        if b.g == 1:
            mask = torch.cat([b.mask, b.ones[: len(b.mask)]], dim=1)
            cache, last, pos, row2req = b.cache, b.last, b.pos, b.row2req
        else:
            cache, mask, order = kv.materialize(b.cache, b.mask, b.flat, b.g, max_tokens)
            last, pos, row2req = b.last[order], b.pos[order], b.row2req[order]
        self._cache, self._mask, self._last, self._pos = cache, mask, last, pos
        for row, q in enumerate(row2req.tolist()):
            r = requests[q]
            self._paths[r.path_id] = _Live(row, len(r.context) + lens[q], toks[q][lens[q] - 1])
