"""The HF engine: a manual decode loop over one batched transformers `DynamicCache`.

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

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from treepo_lab.engines.base import EngineCounters, SamplingParams, SegmentOut, SegmentRequest
from treepo_lab.engines.logprobs import entropy_of, sampling_logprobs


class AppendLayer(DynamicLayer):
    """A DynamicLayer that appends new KV in place into spare capacity.

    DynamicLayer.update re-concatenates the whole cache at every step: O(length) copies per token,
    over half of CPU decode time at batch 64-128. Here keys/values are a window of columns of larger
    buffers: an append writes in place right after the window while capacity lasts, dropping
    leading padding columns just narrows the window, and a row selection (fork, compaction) moves
    only the rows that change, in place; a batch that outgrows the buffers gets fresh ones, filled
    by one copy. Anything else that replaces keys/values (the merge of forked and prefilled rows)
    makes the next append reallocate. The engine sets `headroom` to the columns its call will
    still append, so a reallocation leaves at least that much room.
    """

    _kbuf = _vbuf = None
    headroom: int | None = None  # columns the current call will still append (None: unknown)

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n, q = self.get_seq_length(), key_states.shape[-2]
        end = self._window_end()
        if end is None or end + q > self._kbuf.shape[2]:
            capacity = _capacity(n, max(q, self.headroom or 0))
            self._kbuf = _alloc(key_states, key_states.shape[0], capacity)
            self._vbuf = _alloc(value_states, value_states.shape[0], capacity)
            if n:
                self._kbuf[:, :, :n], self._vbuf[:, :, :n] = self.keys, self.values
            end = n
        b = key_states.shape[0]  # the buffers may hold more rows: those left by compaction
        self._kbuf[:b, :, end : end + q] = key_states
        self._vbuf[:b, :, end : end + q] = value_states
        self.keys, self.values = self._kbuf[:b, :, end - n : end + q], self._vbuf[:b, :, end - n : end + q]
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        n = self.get_seq_length()
        if n == 0:
            return
        end, rows = self._window_end(), len(indices)
        room = self.headroom if self.headroom is not None else 0
        if end is not None and rows <= self._kbuf.shape[0] and end + room <= self._kbuf.shape[2]:
            # in place: buffer row i becomes old row indices[i]; only rows that change are copied.
            # The right side is gathered before the write, so overlapping sources are safe, and
            # repeated sources (siblings) land in distinct rows: each child owns a copy.
            moved = (indices != torch.arange(rows, device=indices.device)).nonzero().squeeze(1)
            if len(moved):
                src = indices[moved]
                for buf in (self._kbuf, self._vbuf):
                    buf[moved, :, end - n : end] = buf[src, :, end - n : end]
            self.keys, self.values = self._kbuf[:rows, :, end - n : end], self._vbuf[:rows, :, end - n : end]
            return
        self._kbuf = _alloc(self.keys, rows, _capacity(n, room))
        self._vbuf = _alloc(self.values, rows, _capacity(n, room))
        # index_select with out=: one copy straight into the new buffers, and on CPU ~4x faster
        # than the advanced indexing DynamicLayer uses
        self.keys = torch.index_select(self.keys, 0, indices, out=self._kbuf[:, :, :n])
        self.values = torch.index_select(self.values, 0, indices, out=self._vbuf[:, :, :n])

    def _window_end(self) -> int | None:
        """The buffer column right after keys/values, or None when they are not a window of them."""
        ends = set()
        for t, buf in ((self.keys, self._kbuf), (self.values, self._vbuf)):
            if (
                buf is None or t.dim() != 4 or t.stride() != buf.stride()
                or t.shape[0] > buf.shape[0] or (t.shape[1], t.shape[3]) != (buf.shape[1], buf.shape[3])
                or t.untyped_storage().data_ptr() != buf.untyped_storage().data_ptr()
            ):
                return None
            start, rest = divmod(t.storage_offset() - buf.storage_offset(), buf.stride(2))
            if rest or not 0 <= start <= buf.shape[2] - t.shape[2]:
                return None
            ends.add(start + t.shape[2])
        return ends.pop() if len(ends) == 1 else None


def _capacity(n: int, need: int) -> int:
    """Columns for a new buffer holding n: at least `need` spare, and at least double, so that the
    next calls' forks still find room and move rows in place (untouched columns cost no memory
    traffic; on CPU their pages are never even faulted in)."""
    return max(n + need, 2 * n)


def _alloc(like: torch.Tensor, rows: int, capacity: int) -> torch.Tensor:
    return like.new_empty((rows, like.shape[1], capacity, like.shape[3]))


def _compaction_order(alive: torch.Tensor) -> torch.Tensor:
    """The rows to keep, ordered so that most stay where they are: live rows from the tail fill the
    holes finished rows leave in front. AppendLayer then moves only those rows (cost grows with
    the rows that finished, not with the batch) and drops the tail by narrowing its view."""
    n = int(alive.sum())
    order = torch.arange(n, device=alive.device)
    order[(~alive[:n]).nonzero().squeeze(1)] = alive[n:].nonzero().squeeze(1) + n
    return order


def _fork_order(parent_rows: list[int]) -> list[int]:
    """An order of fork requests (indices into parent_rows) that puts the first child of each
    parent into its parent's own row where it can: AppendLayer then copies only the other
    children's rows (most paths continue with a single child)."""
    slots: list[int | None] = [None] * len(parent_rows)  # new row -> request
    rest = []
    for j, row in enumerate(parent_rows):
        if row < len(slots) and slots[row] is None:
            slots[row] = j
        else:
            rest.append(j)
    fill = iter(rest)
    return [j if j is not None else next(fill) for j in slots]


def _sample(probs: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One token per row by inverting the CDF: 3-5x cheaper than torch.multinomial on CPU at these
    sizes. right=True skips zero-probability tokens (their CDF step is flat)."""
    cdf = probs.cumsum(dim=-1)
    u = torch.rand((probs.shape[0], 1), generator=gen, device=probs.device, dtype=cdf.dtype)
    return torch.searchsorted(cdf, u * cdf[:, -1:], right=True).squeeze(1).clamp_(max=probs.shape[1] - 1)


def _reserve(cache: DynamicCache, columns: int) -> None:
    """Tell the layers how many more columns this call will append (see AppendLayer.headroom)."""
    for layer in cache.layers:
        layer.headroom = columns


def new_cache(headroom: int | None = None) -> DynamicCache:
    """An empty DynamicCache whose layers (created on first use) are AppendLayers."""

    def layer() -> AppendLayer:
        new = AppendLayer()
        new.headroom = headroom
        return new

    cache = DynamicCache()
    cache.layer_class_to_replicate = layer
    return cache


def fork_cache(cache: DynamicCache, rows: torch.Tensor) -> DynamicCache:
    """Row i of the result is a copy of row rows[i] of `cache` (repeats allowed).

    Done in place: the engine's previous state is consumed by each call, so nothing else reads the
    old rows. Every result row is its own storage (AppendLayer moves rows within its buffers or
    copies them into fresh ones), so siblings forked from one parent never see each other's tokens.
    """
    cache.batch_select_indices(rows)
    return cache


def _left_pad(x: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """Zero-pad `x` on the left of `dim` up to `width` (the padding is masked out)."""
    missing = width - x.shape[dim]
    if missing == 0:
        return x
    pad = [0, 0] * (x.dim() - 1 - dim % x.dim()) + [missing, 0]
    return F.pad(x, pad)


def _merge(a: DynamicCache | None, a_mask, b: DynamicCache | None, b_mask):
    """Stack the rows of two left-padded caches (a first), padding the narrower one on the left.

    `a` (forked rows) always has KV; `b` (prefilled rows) may have none when every fresh context is
    one token long. `a` is extended in place so its cache object is the one that is decoded.
    """
    if a is None:
        return b, b_mask
    if b is None:
        return a, a_mask
    width = max(a_mask.shape[1], b_mask.shape[1])
    for i, layer in enumerate(a.layers):
        if i < len(b.layers) and b.layers[i].is_initialized:
            bk, bv = b.layers[i].keys, b.layers[i].values
        else:
            bk = layer.keys.new_zeros((b_mask.shape[0], *layer.keys.shape[1:2], 0, layer.keys.shape[-1]))
            bv = layer.values.new_zeros((b_mask.shape[0], *layer.values.shape[1:2], 0, layer.values.shape[-1]))
        layer.keys = torch.cat([_left_pad(layer.keys, width, 2), _left_pad(bk, width, 2)])
        layer.values = torch.cat([_left_pad(layer.values, width, 2), _left_pad(bv, width, 2)])
    return a, torch.cat([_left_pad(a_mask, width, 1), _left_pad(b_mask, width, 1)])


def _trim(cache: DynamicCache, mask: torch.Tensor) -> torch.Tensor:
    """Drop the leading columns that are padding in every row (after rows left, or a merge):
    positions are explicit, so the columns carry nothing."""
    if mask.shape[1] == 0:
        return mask
    cut = int(mask.any(dim=0).long().argmax())  # first column some row uses
    if cut:
        for layer in cache.layers:
            layer.keys, layer.values = layer.keys[:, :, cut:], layer.values[:, :, cut:]
        mask = mask[:, cut:]
    return mask


@dataclass
class _Live:
    row: int
    length: int  # context length a child must bring (parent context + its new tokens)
    last: int  # the pending token (= that context's last token)


class HFEngine:
    """Engine protocol over any transformers causal LM with full attention (see module doc)."""

    def __init__(self, model, eos_token_id: int, pad_token_id: int | None = None, device=None):
        if device is not None:
            model.to(device)
        self.model = model
        self.device = next(model.parameters()).device
        self.eos_token_id = int(eos_token_id)
        self.pad_token_id = int(eos_token_id if pad_token_id is None else pad_token_id)
        self.counters = EngineCounters()
        self._drop_state()

    # -- protocol -------------------------------------------------------------------------------

    def release(self, path_ids: list[int] | None = None) -> None:
        if path_ids is None:
            return self._drop_state()
        gone = set(path_ids)
        keep = [p for p in self._paths if p not in gone]
        if not keep:
            return self._drop_state()
        rows = torch.tensor([self._paths[p].row for p in keep], device=self.device)
        self._cache = fork_cache(self._cache, rows)
        self._mask, self._last, self._pos = self._mask[rows], self._last[rows], self._pos[rows]
        self._mask = _trim(self._cache, self._mask)
        self._paths = {p: _Live(r, self._paths[p].length, self._paths[p].last) for r, p in enumerate(keep)}

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
        self.model.eval()  # no dropout while sampling, whatever mode the trainer left
        try:
            return self._generate(requests, max_tokens, sampling, seed)
        finally:
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

    def _forward(self, ids, mask, positions, cache) -> torch.Tensor:
        """One model forward; returns the logits of the last position [rows, V]."""
        t0 = time.perf_counter()
        out = self.model(
            input_ids=ids, attention_mask=mask, position_ids=positions,
            past_key_values=cache, use_cache=True, logits_to_keep=1,
        )
        if self.device.type == "cuda":  # CUDA is asynchronous: charge the kernels to the forward
            torch.cuda.synchronize(self.device)
        self.counters.forward_s += time.perf_counter() - t0
        self.counters.forward_calls += 1
        return out.logits[:, -1]

    def _prefill(self, contexts: list[list[int]], headroom: int):
        """KV of context[:-1] for fresh rows (left-padded); the last token stays pending."""
        n = torch.tensor([len(c) - 1 for c in contexts])
        width = int(n.max())
        ids = torch.tensor([[self.pad_token_id] * (width - len(c) + 1) + c[:-1] for c in contexts])
        mask = (torch.arange(width) >= (width - n)[:, None]).long()
        positions = (torch.arange(width) - (width - n)[:, None]).clamp(min=0)
        cache = new_cache(headroom)  # room for the tokens this call will decode
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
            order = _fork_order(parent_rows)
            forks = [forks[j] for j in order]
            rows = torch.tensor([parent_rows[j] for j in order], device=dev)
            _reserve(self._cache, max_tokens)
            cache = fork_cache(self._cache, rows)
            mask, last, pos = self._mask[rows], self._last[rows], self._pos[rows]
        self._drop_state()  # consumed: every path not forked above is released here
        if fresh:
            pcache, pmask, plast, ppos = self._prefill([requests[i].context for i in fresh], max_tokens)
            self.counters.prefill_tokens += sum(len(requests[i].context) for i in fresh)
            cache, mask = _merge(cache, mask, pcache, pmask)
            last = plast if last is None else torch.cat([last, plast])
            pos = ppos if pos is None else torch.cat([pos, ppos])
        mask = _trim(cache, mask)
        _reserve(cache, max_tokens)
        row2req = torch.tensor(forks + fresh, device=dev)  # request index of each batch row

        n_req = len(requests)
        out_tok = torch.zeros((n_req, max_tokens), dtype=torch.long, device=dev)
        out_lp = torch.zeros((n_req, max_tokens), device=dev)
        out_ent = torch.zeros((n_req, max_tokens), device=dev)
        n_out = torch.zeros(n_req, dtype=torch.long, device=dev)
        ended = torch.zeros(n_req, dtype=torch.bool, device=dev)
        gen = torch.Generator(device=dev).manual_seed(seed)
        ones = torch.ones((len(row2req), 1), dtype=mask.dtype, device=dev)

        for step in range(max_tokens):
            mask = torch.cat([mask, ones[: mask.shape[0]]], dim=1)
            logp = sampling_logprobs(self._forward(last[:, None], mask, pos[:, None], cache), sampling)
            tok = _sample(logp.exp(), gen)
            out_tok[row2req, step] = tok
            out_lp[row2req, step] = logp.gather(1, tok[:, None]).squeeze(1)
            out_ent[row2req, step] = entropy_of(logp)
            n_out[row2req] = step + 1
            last, pos = tok, pos + 1
            done = tok == self.eos_token_id
            if bool(done.any()):  # the one host sync per step: compact only when a row finished
                ended[row2req[done]] = True
                keep = _compaction_order(~done)
                if keep.numel() == 0:
                    row2req = keep
                    break
                _reserve(cache, max_tokens - step - 1)
                cache.batch_select_indices(keep)
                mask, last, pos, row2req = mask[keep], last[keep], pos[keep], row2req[keep]
                mask = _trim(cache, mask)

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
