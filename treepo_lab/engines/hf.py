"""The HF engine: a manual decode loop over one batched transformers `DynamicCache` (see kv.py).

State between calls (one row per live path, rows left-padded to a common width T):
  cache  KV of context[:-1] of every live path, layers [rows, heads, T, head_dim]
  mask   [rows, T] 1 where the cache column is a real token, 0 for left padding
  last   [rows] the pending last context token, not fed yet (its KV is computed by the next forward)
  pos    [rows] the position of that pending token (= len(context) - 1)
Keeping the last token pending makes every call uniform: forked rows and freshly prefilled rows all
start with one forward over their pending tokens, whose logits give the first new token.

A call consumes the previous state: requests naming a live parent get copies of its rows (siblings
each their own copy, so their continuations never mix), requests with no parent are prefilled, and
every path not named as a parent is released. Rows that sample EOS leave the batch at once
(compaction), so finished paths cost no compute.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from treepo_lab.engines import kv
from treepo_lab.engines.decode_step import LeanDecodeStep, unsupported_reason
from treepo_lab.engines.base import EngineCounters, SamplingParams, SegmentOut, SegmentRequest
from treepo_lab.engines.logprobs import sampling_logprobs


_log = logging.getLogger(__name__)
_LOGGED: set[str] = set()


def _sample(probs: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One token per row by inverting the CDF: 3-5x cheaper than torch.multinomial on CPU at these
    sizes. right=True never lands on a zero-probability token (its CDF step is flat), and u is
    scaled just below 1 so rounding cannot reach the CDF's end (an index past the last token)."""
    cdf = probs.cumsum(dim=-1)
    u = torch.rand((probs.shape[0], 1), generator=gen, device=probs.device, dtype=cdf.dtype)
    return torch.searchsorted(cdf, u * (1 - 2**-20) * cdf[:, -1:], right=True).squeeze(1)


@dataclass
class _Live:
    row: int
    length: int  # context length a child must bring (parent context + its new tokens)
    last: int  # the pending token (= that context's last token)


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
        self.lean_decode = lean_decode
        self._lean = LeanDecodeStep(model) if lean_decode and self._lean_reason() is None else None
        self._drop_state()

    # -- protocol -------------------------------------------------------------------------------

    def release(self) -> None:
        self._drop_state()

    def load_weights(self, state_dict: dict) -> None:
        own = self.model.state_dict()
        shared = all(k in own and own[k].data_ptr() == v.data_ptr() for k, v in state_dict.items())
        if not shared:  # the trainer may own the very same model: then the weights are already here
            self.model.load_state_dict(state_dict)
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

    def _lean_reason(self) -> str | None:
        """Why decode steps run the model forward (None: the lean step runs them); logged once."""
        reason = unsupported_reason(self.model)
        if reason is not None and reason not in _LOGGED:
            _LOGGED.add(reason)
            _log.info("hf engine: decode steps run the model forward (%s)", reason)
        return reason

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

    def _forward(self, ids, mask, positions, cache, lean=None) -> torch.Tensor:
        """One forward (the lean step when given, for one token per row [rows] ids and positions;
        else the model's); returns the logits of the last position [rows, V]."""
        t0 = time.perf_counter()
        if lean is not None:
            logits = lean(ids, mask, positions, cache)
        else:
            logits = self.model(
                input_ids=ids, attention_mask=mask, position_ids=positions,
                past_key_values=cache, use_cache=True, logits_to_keep=1,
            ).logits[:, -1]
        if self.device.type == "cuda":  # CUDA is asynchronous: charge the kernels to the forward
            torch.cuda.synchronize(self.device)
        self.counters.forward_s += time.perf_counter() - t0
        self.counters.forward_calls += 1
        return logits

    def _step_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """The attention mask of a one-token step: [rows, 1, 1, T], 0 where a cache column is a real
        token and the dtype's min on left padding (or the 2-D mask where the attention needs that)."""
        if self._mask_dtype is None:
            return mask
        bias = torch.zeros(mask.shape, dtype=self._mask_dtype, device=mask.device)
        return bias.masked_fill_(mask == 0, torch.finfo(self._mask_dtype).min)[:, None, None, :]

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
        dev = self.device
        forks = [i for i, r in enumerate(requests) if r.parent_id is not None]
        fresh = [i for i, r in enumerate(requests) if r.parent_id is None]
        cache = mask = last = pos = None
        if forks:
            parent_rows = [self._paths[requests[i].parent_id].row for i in forks]
            order = kv.fork_order(parent_rows)
            forks = [forks[j] for j in order]
            rows = torch.tensor([parent_rows[j] for j in order], device=dev)
            kv.reserve(self._cache, max_tokens)
            cache = kv.fork_cache(self._cache, rows)
            mask, last, pos = self._mask[rows], self._last[rows], self._pos[rows]
        self._drop_state()  # consumed: every path not forked above is released here
        if fresh:
            # identical contexts (the first paths of one prompt, repeated fallback cuts) are
            # prefilled once and forked, as a prefix cache would serve them
            unique: dict[tuple, int] = {}
            copy_of = [unique.setdefault(tuple(requests[i].context), len(unique)) for i in fresh]
            pcache, pmask, plast, ppos = self._prefill([list(c) for c in unique], max_tokens)
            self.counters.prefill_tokens += sum(len(c) for c in unique)
            if len(unique) < len(fresh):
                rows = torch.tensor(copy_of, device=dev)
                pcache = kv.fork_cache(pcache, rows)
                pmask, plast, ppos = pmask[rows], plast[rows], ppos[rows]
            cache, mask = kv.merge(cache, mask, pcache, pmask, max_tokens)
            last = plast if last is None else torch.cat([last, plast])
            pos = ppos if pos is None else torch.cat([pos, ppos])
        mask = kv.trim(cache, mask)
        kv.reserve(cache, max_tokens)
        row2req = torch.tensor(forks + fresh, device=dev)  # request index of each batch row

        n_req = len(requests)
        out_tok = torch.zeros((n_req, max_tokens), dtype=torch.long, device=dev)
        out_lp = torch.zeros((n_req, max_tokens), device=dev)
        out_ent = torch.zeros((n_req, max_tokens), device=dev)
        n_out = torch.zeros(n_req, dtype=torch.long, device=dev)
        ended = torch.zeros(n_req, dtype=torch.bool, device=dev)
        gen = torch.Generator(device=dev).manual_seed(seed)
        ones = torch.ones((len(row2req), 1), dtype=mask.dtype, device=dev)
        # checked per call: hooks added since (a probe, an adapter) must run, so the model forward does
        lean = self._lean if self._lean is not None and self._lean_reason() is None else None
        if lean is not None:
            lean.prepare()  # this call's weights (the trainer updates them in place between calls)

        for step in range(max_tokens):
            mask = torch.cat([mask, ones[: mask.shape[0]]], dim=1)
            if lean is not None:
                logits = self._forward(last, self._step_mask(mask), pos, cache, lean)
            else:
                logits = self._forward(last[:, None], self._step_mask(mask), pos[:, None], cache)
            logp = sampling_logprobs(logits, sampling)
            probs = logp.exp()  # shared by sampling and the entropy (= entropy_of(logp), one exp less)
            tok = _sample(probs, gen)
            out_tok[row2req, step] = tok
            out_lp[row2req, step] = logp.gather(1, tok[:, None]).squeeze(1)
            out_ent[row2req, step] = torch.special.entr(probs).sum(dim=-1)
            n_out[row2req] = step + 1
            last, pos = tok, pos + 1
            done = tok == self.eos_token_id
            if bool(done.any()):  # the one host sync per step: compact only when a row finished
                ended[row2req[done]] = True
                keep = kv.compaction_order(~done)
                if keep.numel() == 0:
                    row2req = keep
                    break
                kv.reserve(cache, max_tokens - step - 1)
                cache.batch_select_indices(keep)
                mask, last, pos, row2req = mask[keep], last[keep], pos[keep], row2req[keep]
                mask = kv.trim(cache, mask)

        self.counters.decoded_tokens += int(n_out.sum())
        toks, lps, ents = out_tok.tolist(), out_lp.tolist(), out_ent.tolist()
        lens, eos = n_out.tolist(), ended.tolist()
        outs = [SegmentOut(toks[q][: lens[q]], lps[q][: lens[q]], ents[q][: lens[q]], eos[q]) for q in range(n_req)]
        if len(row2req):  # survivors become the live paths of the next call
            self._cache, self._mask, self._last, self._pos = cache, mask, last, pos
            for row, q in enumerate(row2req.tolist()):
                r = requests[q]
                self._paths[r.path_id] = _Live(row, len(r.context) + lens[q], toks[q][lens[q] - 1])
        return outs
