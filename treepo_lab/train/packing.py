"""Tree packing for the policy update: every shared token forwarded, and back-propagated, once.

The leaves of a batch (prompt + response token lists) form a token trie: an identical prefix is one run
of unique tokens, be it a tree's shared segments, the partial copy that a fallback cut made of a segment,
or the prompt that GRPO's independent samples share. A pack is a set of leaves whose trie fits a token
budget; it is forwarded as one sequence of its unique tokens with a tree attention mask (a token sees
only its ancestors and itself) and tree position ids (a token's depth = its position in every sequence
through it), so each unique token gets exactly the hidden state it gets in each of those sequences.

Exactness of the loss: the log-prob of a response token depends only on its context, so a token that
k leaves share has one log-prob, one entropy and one importance ratio. `pack_forward` expands these
per-unique-token values back to a per-leaf [leaves, response] layout with an index gather; the PPO loss
then runs on that layout unchanged, each leaf contributing its own clipped term with its own advantage
and aggregation weight, and autograd sums those contributions into the shared token. The packed loss is
therefore the flat per-leaf loss for every `loss_agg_mode`, KL and entropy terms included, as long as
`seq-mean-token-sum-norm` has a constant horizon (the flat default is the padded width of a batch).

Packing: sequences are sorted lexicographically, which is the trie's depth-first order. In that order a
sequence shares with the pack built so far exactly its longest common prefix with the previous sequence,
so a pack grows by len - lcp tokens, and a full pack is closed: packs split along subtrees, and a prefix
that two packs need is forwarded in both (and counted). A sequence longer than the budget gets a pack of
its own. The trie holds each sequence without its last token: that token is only ever a target.

Attention: a 4-D additive float mask [1, 1, T, T] goes through transformers' "sdpa" and "eager"
attention as it is (a 4-D mask is taken as prepared). FlexAttention block masks would skip the masked
blocks, but this torch build has no FlexAttention backward on CPU; attention implementations that
ignore a custom mask (flash attention) cannot be packed: `tree_unsupported` says why and the update
falls back to flat.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from treepo_lab.engines.base import SamplingParams
from treepo_lab.engines import logprobs
from treepo_lab.engines.logprobs import chunked_logprobs, entropy_of, sampling_logprobs

log = logging.getLogger(__name__)

# attention implementations that apply a prepared 4-D additive mask to every query/key pair
MASKED_ATTENTION = ("sdpa", "eager")


@dataclass
class Pack:
    """One forward's worth of unique tokens, and how the packed leaves read their values back."""

    input_ids: torch.Tensor  # [T] unique tokens in trie preorder (a parent before its children)
    position_ids: torch.Tensor  # [T] depth in the trie
    subtree_end: torch.Tensor  # [T] one past the preorder index of the last token below each token
    leaves: list[int]  # indices (into the planned sequences) of the leaves packed here: the rows below
    logit_rows: torch.Tensor  # [P] pack positions whose next-token distribution scores a response token
    slot: torch.Tensor  # [rows, R] index into logit_rows of each response token's context (0 = padding)
    target: torch.Tensor  # [rows, R] each response token (0 = padding)
    response_mask: torch.Tensor  # [rows, R] True where a response token is

    @property
    def n_tokens(self) -> int:
        return int(self.input_ids.numel())

    def to(self, device) -> Pack:
        move = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in vars(self).items()}
        return Pack(**move)


def _lcp(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def split_packs(seqs: list[tuple[list[int], list[int]]], rows: list[int], budget: int | None) -> list[list[int]]:
    """Cut `rows` (indices into `seqs`) into packs whose tries hold at most `budget` tokens (None: one).

    Each pack lists its rows in ascending order; a row longer than the budget is a pack of its own.
    """
    if budget is not None and budget < 1:
        raise ValueError(f"packing budget must be >= 1 token, got {budget}")
    ctx = {j: _context(seqs, j) for j in rows}
    packs, members, size, prev = [], [], 0, None
    for j in sorted(rows, key=lambda j: ctx[j]):  # the trie's depth-first order
        grow = len(ctx[j]) - (_lcp(prev, ctx[j]) if prev is not None else 0)
        if members and budget is not None and size + grow > budget:
            packs.append(sorted(members))
            members, size, grow = [], 0, len(ctx[j])
        members.append(j)
        size += grow
        prev = ctx[j]
    if members:
        packs.append(sorted(members))
    return packs


def _context(seqs, j: int) -> list[int]:
    """The forwarded part of sequence j: prompt + response without its last token (only a target)."""
    p, r = seqs[j]
    if not p:
        raise ValueError(f"sequence {j}: empty prompt (the first response token is predicted from it)")
    return list(p) + list(r)[:-1]


def build_pack(seqs: list[tuple[list[int], list[int]]], rows: list[int]) -> Pack:
    """One pack of the sequences `rows` (its output rows in that order): their trie in preorder, and
    each row's gather indices."""
    ctx = {j: _context(seqs, j) for j in rows}
    tokens: list[int] = []
    depth: list[int] = []
    paths: dict[int, list[int]] = {}  # per row: pack position of each of its forwarded tokens
    prev_ctx, prev_path = [], []
    for j in sorted(rows, key=lambda j: ctx[j]):  # depth-first: each shares exactly its lcp with the last
        c = ctx[j]
        k = _lcp(prev_ctx, c)
        start = len(tokens)
        tokens += c[k:]
        depth += range(k, len(c))
        paths[j] = prev_path[:k] + list(range(start, len(tokens)))
        prev_ctx, prev_path = c, paths[j]
    # subtree end in preorder: the next position not deeper than this one
    end = [len(tokens)] * len(tokens)
    stack: list[int] = []
    for pos, d in enumerate(depth):
        while stack and depth[stack[-1]] >= d:
            end[stack.pop()] = pos
        stack.append(pos)
    # response token t of a row (sequence index n_p + t) is scored by the distribution at n_p + t - 1
    ctx_pos = [paths[j][len(seqs[j][0]) - 1:] for j in rows]
    width = max(1, max(len(seqs[j][1]) for j in rows))
    flat_ctx = torch.tensor([q for cp in ctx_pos for q in cp], dtype=torch.long)
    logit_rows, inverse = torch.unique(flat_ctx, sorted=True, return_inverse=True)
    slot = torch.zeros((len(rows), width), dtype=torch.long)
    target = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    at = 0
    for r, j in enumerate(rows):
        n = len(seqs[j][1])
        slot[r, :n] = inverse[at: at + n]
        target[r, :n] = torch.tensor(list(seqs[j][1]), dtype=torch.long)
        mask[r, :n] = True
        at += n
    return Pack(torch.tensor(tokens, dtype=torch.long), torch.tensor(depth, dtype=torch.long),
                torch.tensor(end, dtype=torch.long), list(rows), logit_rows, slot, target, mask)


def tree_mask(pack: Pack, dtype: torch.dtype) -> torch.Tensor:
    """[1, 1, T, T] additive mask: 0 where key k is an ancestor of (or is) query q, the dtype's min elsewhere.

    In preorder, k is an ancestor-or-self of q exactly when k <= q < subtree_end[k].
    """
    pos = torch.arange(pack.n_tokens, device=pack.input_ids.device)
    sees = (pos[None, :] <= pos[:, None]) & (pos[:, None] < pack.subtree_end[None, :])
    zero = torch.zeros((), dtype=dtype, device=sees.device)
    return torch.where(sees, zero, torch.finfo(dtype).min)[None, None]


def tree_unsupported(model) -> str | None:
    """Why `model` cannot run a tree-packed forward (None: it can)."""
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if impl in MASKED_ATTENTION:
        return None
    if impl == "flex_attention" and next(model.parameters()).device.type == "cpu":
        return "attention is FlexAttention, which has no backward on CPU in this torch build"
    return (f"attention implementation {impl!r} does not take a custom 4-D mask "
            f"(tree packing needs one of {', '.join(MASKED_ATTENTION)})")


_warned: set[str] = set()


def resolve_packing(requested: str, model) -> str:
    """The packing to use: `requested` ("tree" | "flat"), or "flat" with the reason logged once."""
    if requested != "tree":
        return requested
    reason = tree_unsupported(model)
    if reason is None:
        return "tree"
    if reason not in _warned:
        _warned.add(reason)
        log.warning("trainer.packing=tree falls back to flat: %s", reason)
    return "flat"


def pack_forward(model, pack: Pack, temperature: float = 1.0, with_entropy: bool = False):
    """Per-leaf log-probs (and entropies) [rows, R] of the pack's leaves, from one forward of its unique tokens.

    Padding entries (where `pack.response_mask` is False) hold finite filler values. Gradients flow
    when the caller allows them; each shared token's gradient is the sum over the leaves through it.
    """
    param = next(model.parameters())
    dtype = param.dtype
    if pack.input_ids.device != param.device:
        pack = pack.to(param.device)
    inputs = {"input_ids": pack.input_ids[None], "attention_mask": tree_mask(pack, dtype),
              "position_ids": pack.position_ids[None], "use_cache": False}
    sampling = SamplingParams(temperature=temperature)
    parts = logprobs.head_of(model)  # looked up here: a benchmark or test may switch chunking off
    if parts is None:  # the full forward: logits [P, V] of the kept positions at once
        logp_all = sampling_logprobs(model(**inputs, logits_to_keep=pack.logit_rows).logits[0], sampling)
        logp = logp_all[pack.slot, pack.target]  # the gather that expands unique tokens to leaves
        ent = entropy_of(logp_all)[pack.slot] if with_entropy else None
        return logp, ent
    decoder, head, softcap = parts  # a chunk of the kept positions' logits at a time (engines/logprobs.py)
    hidden = decoder(**inputs).last_hidden_state[0, pack.logit_rows]  # [P, H]
    logp, ent = chunked_logprobs(head, softcap, hidden, pack.slot.reshape(-1), pack.target.reshape(-1), sampling,
                                 with_entropy)
    return logp.view(pack.slot.shape), ent[pack.slot] if with_entropy else None


def forward_packed(model, batch, rows: list[int], temperature: float, with_entropy: bool = False):
    """`update.forward_leaves`' contract, tree-packed: log-probs, entropies (or None) and the response
    mask of leaves `rows` of `batch` (prompts, responses), one pack, rows in the given order, [n, R]."""
    pack = build_pack(list(zip(batch.prompts, batch.responses)), rows)
    logp, ent = pack_forward(model, pack, temperature, with_entropy)
    return logp, ent, pack.response_mask
