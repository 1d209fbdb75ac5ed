"""The KV cache of the HF engine: one batched transformers DynamicCache whose layers append in place.

Rows are paths (or sibling groups within a call, see hf.py), left-padded to a common width; the
engine keeps the padding mask and explicit positions. Everything here edits the batch of rows: fork
(copy rows, repeats allowed), compact (drop finished rows), merge (stack forked and freshly
prefilled rows), trim (drop columns that are padding in every row), materialize (a row per child
out of its group's row). Each result row is its own storage: siblings never see each other's tokens.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


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
        b = key_states.shape[0]  # the buffers may hold more rows (spare, or left by compaction)
        end = self._known_end()
        if end is None or end + q > self._kbuf.shape[2]:
            capacity = _capacity(n, max(q, self.headroom or 0))
            self._kbuf = _alloc(key_states, b, capacity)
            self._vbuf = _alloc(value_states, b, capacity)
            if n:
                self._kbuf[:b, :, :n], self._vbuf[:b, :, :n] = self.keys, self.values
            end = n
        self._kbuf[:b, :, end : end + q] = key_states
        self._vbuf[:b, :, end : end + q] = value_states
        self.keys, self.values = self._kbuf[:b, :, end - n : end + q], self._vbuf[:b, :, end - n : end + q]
        self._remember(end + q)
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        n = self.get_seq_length()
        if n == 0:
            return
        end, rows = self._known_end(), len(indices)
        room = self.headroom if self.headroom is not None else 0
        if end is not None and rows <= self._kbuf.shape[0] and end + room <= self._kbuf.shape[2]:
            # in place: buffer row i becomes old row indices[i]; only rows that change are copied.
            # The sources are gathered before the write, so overlapping rows are safe, and
            # repeated sources (siblings) land in distinct rows: each child owns a copy.
            moved = (indices != torch.arange(rows, device=indices.device)).nonzero().squeeze(1)
            if len(moved):
                src = indices[moved]
                lo, count = int(moved[0]), len(moved)
                # a growing fork moves rows only into new rows past every source row: then one
                # gather straight into that block, no temporary (half the copies)
                tail = int(moved[-1]) == lo + count - 1 and int(src.max()) < lo
                for buf in (self._kbuf, self._vbuf):
                    window = buf[:, :, end - n : end]
                    if tail:
                        torch.index_select(window[:lo], 0, src, out=window[lo : lo + count])
                    else:
                        window.index_copy_(0, moved, window.index_select(0, src))
            self.keys, self.values = self._kbuf[:rows, :, end - n : end], self._vbuf[:rows, :, end - n : end]
            self._remember(end)
            return
        # the batch grew (or ran out of columns): fresh buffers, filled by one copy
        self._kbuf = _alloc(self.keys, rows, _capacity(n, room))
        self._vbuf = _alloc(self.values, rows, _capacity(n, room))
        # index_select with out=: one copy straight into the new buffers, and on CPU ~4x faster
        # than the advanced indexing DynamicLayer uses
        self.keys = torch.index_select(self.keys, 0, indices, out=self._kbuf[:rows, :, :n])
        self.values = torch.index_select(self.values, 0, indices, out=self._vbuf[:rows, :, :n])
        self._remember(n)

    def _remember(self, end: int) -> None:
        """Note that keys/values (these very objects) end at buffer column `end`."""
        self._known = (self.keys, self.values, end)

    def _known_end(self) -> int | None:
        """_window_end without its checks while keys/values are the views this layer last set
        (identity: anything that replaces them, e.g. trim or merge, makes a new object): a few
        microseconds per layer per decode step."""
        known = getattr(self, "_known", None)
        if known is not None and known[0] is self.keys and known[1] is self.values:
            return known[2]
        return self._window_end()

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
    """An uninitialised buffer for at least `rows` rows and `capacity` columns. On CPU with as many
    spare rows, so that later forks that grow the batch still move rows in place: fresh memory is
    what costs there (page faults, ~9x a copy into warm memory), and rows never written are never
    faulted in. On GPU the caching allocator recycles memory, so rows are exact."""
    spare = rows if like.device.type == "cpu" else 0
    return like.new_empty((rows + spare, like.shape[1], capacity, like.shape[3]))


def compaction_order(alive: torch.Tensor) -> torch.Tensor:
    """The rows to keep, ordered so that most stay where they are: live rows from the tail fill the
    holes finished rows leave in front. AppendLayer then moves only those rows (cost grows with
    the rows that finished, not with the batch) and drops the tail by narrowing its view."""
    n = int(alive.sum())
    order = torch.arange(n, device=alive.device)
    order[(~alive[:n]).nonzero().squeeze(1)] = alive[n:].nonzero().squeeze(1) + n
    return order


def fork_order(parent_rows: list[int]) -> list[int]:
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


def reserve(cache: DynamicCache, columns: int) -> None:
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


def merge(a: DynamicCache | None, a_mask, b: DynamicCache | None, b_mask, headroom: int):
    """Stack the rows of two left-padded caches (a first), padding the narrower one on the left.

    `a` (forked rows) always has KV; `b` (prefilled rows) may have none when every fresh context is
    one token long. The result is written once, straight into buffers with room for `headroom`
    more columns, and installed in `a`'s layers (AppendLayers append there without a copy).
    """
    if a is None:
        return b, b_mask
    if b is None:
        return a, a_mask
    width = max(a_mask.shape[1], b_mask.shape[1])
    for i, layer in enumerate(a.layers):
        kv = []
        for t, name in ((layer.keys, "keys"), (layer.values, "values")):
            other = getattr(b.layers[i], name) if i < len(b.layers) and b.layers[i].is_initialized else None
            if other is None:  # prefilled rows without KV: all padding
                other = t.new_empty((b_mask.shape[0], t.shape[1], 0, t.shape[3]))
            kv.append(_stack([t, other], width, _capacity(width, headroom)))
        (layer._kbuf, layer.keys), (layer._vbuf, layer.values) = kv
    return a, torch.cat([_left_pad(a_mask, width, 1), _left_pad(b_mask, width, 1)])


def _stack(parts: list[torch.Tensor], width: int, capacity: int):
    """(buffer, window): rows of `parts` stacked and left-padded with zeros to `width` columns,
    in a buffer of `capacity` columns; the window views its first `width` columns."""
    rows = sum(len(p) for p in parts)
    buf = _alloc(parts[0], rows, capacity)
    row = 0
    for p in parts:
        pad = width - p.shape[2]
        buf[row : row + len(p), :, :pad] = 0  # masked, yet a NaN left in a value would give 0 * NaN
        buf[row : row + len(p), :, pad:width] = p
        row += len(p)
    return buf, buf[:rows, :, :width]


def trim(cache: DynamicCache, mask: torch.Tensor) -> torch.Tensor:
    """Drop the leading columns that are padding in every row (after rows left, or a merge):
    positions are explicit, so the columns carry nothing."""
    if mask.shape[1] == 0:
        return mask
    used = mask.any(dim=0)
    cut = int(used.long().argmax()) if bool(used.any()) else mask.shape[1]  # first column some row uses
    if cut:
        for layer in cache.layers:
            layer.keys, layer.values = layer.keys[:, :, cut:], layer.values[:, :, cut:]
        mask = mask[:, cut:]
    return mask


def materialize(cache: DynamicCache, mask: torch.Tensor, flat: torch.Tensor, g: int, steps: int):
    """One row per child from sibling-group rows: child c (slot flat[c] % g of group flat[c] // g)
    gets its group's context columns followed by its own decoded columns width + s * g + slot.

    Every group has a surviving child (emptied groups were compacted away). The first survivor of
    each group keeps the group's row, where only its own columns move; the others get the rows
    after the groups, inside the same buffers where they have room. Returns the cache, the new
    rows' padding mask [children, width + steps] and `order`: the child of each new row.
    """
    groups, width = mask.shape
    rows = flat // g
    firsts: dict[int, int] = {}
    extras = [c for c, r in enumerate(rows.tolist()) if firsts.setdefault(r, c) != c]
    order = torch.tensor([firsts[r] for r in range(groups)] + extras, device=flat.device)
    n = len(order)
    for layer in cache.layers:
        end = layer._known_end()
        in_place = end is not None and n <= layer._kbuf.shape[0]
        bufs = []
        for t, buf in ((layer.keys, layer._kbuf), (layer.values, layer._vbuf)):
            # decoded columns by slot: [groups, heads, steps, g, hd] -> [groups * g, heads, steps, hd]
            # (a small copy, taken before anything is overwritten; index_select then beats advanced
            # indexing ~4x on CPU)
            slots = t[:, :, width : width + g * steps].unflatten(2, (steps, g)).permute(0, 3, 1, 2, 4)
            own = t.new_empty((groups * g, *slots.shape[2:]))
            own.view(slots.shape).copy_(slots)  # a copy even where a reshape could be a view (1 group)
            if in_place:
                start = end - t.shape[2]
                window = buf[:, :, start : start + width + steps]
                torch.index_select(t[:, :, :width], 0, rows[order[groups:]], out=window[groups:n, :, :width])
            else:
                start, buf = 0, _alloc(t, n, _capacity(width + steps, steps))
                window = buf[:, :, : width + steps]
                torch.index_select(t[:, :, :width], 0, rows[order], out=window[:n, :, :width])
            torch.index_select(own, 0, flat[order], out=window[:n, :, width:])
            bufs.append((buf, window[:n]))
        (layer._kbuf, layer.keys), (layer._vbuf, layer.values) = bufs
    ones = torch.ones((n, steps), dtype=mask.dtype, device=mask.device)
    return cache, torch.cat([mask[rows[order]], ones], dim=1), order


_KEPT = False


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed blocks up to 32 MiB in the heap instead of returning them to the OS.

    Forks and compaction allocate fresh KV buffers every segment; by default glibc unmaps every freed
    block >= 128 KiB, so each new buffer page-faults all its pages in again. Measured on CPU: ~20 ms
    of a 300 ms tree rollout (time outside forward 16% -> 10%). Process-wide, Linux/glibc only, once.
    """
    global _KEPT
    if _KEPT:
        return True
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # mallopt parameter numbers (malloc.h)
    _KEPT = bool(libc.mallopt(m_mmap_threshold, 32 << 20)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))
    return _KEPT
