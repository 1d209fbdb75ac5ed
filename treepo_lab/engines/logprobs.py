"""Log-probs of sampled tokens: the one logits-processing function, and a from-scratch recompute.

`sampling_logprobs` is the only place where temperature, top-k and top-p turn logits into the
distribution that is sampled from. The HF engine samples from it, and `token_logprobs` recomputes
full sequences through it (the trainer's old/new policy log-probs, `sequence_stats` for checks), so
the two cannot drift apart. `pad_right` is the one padding of prompt+response rows. With `top_k` off
and `top_p=1` it is the plain temperature-scaled log-softmax that the trainer uses.

Large vocabularies (Gemma 3: 262k tokens): the trainer's forwards (`token_logprobs`, the tree-packed
`train/packing.pack_forward`) never hold full-vocabulary logits for every position at once. They run the
model's decoder for its last hidden states, then `chunked_logprobs` applies the output head to
LOGIT_CHUNK_ELEMENTS / V positions at a time under activation checkpointing, keeping only the sampled
tokens' log-probs and the entropies; the backward recomputes one chunk's logits at a time.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from treepo_lab.engines.base import SamplingParams


def _as_lists(batch) -> list[list[int]]:
    return [x.tolist() if isinstance(x, torch.Tensor) else list(x) for x in batch]


def sampling_logprobs(logits: torch.Tensor, sampling: SamplingParams) -> torch.Tensor:
    """Log-probs [..., V] (float32) of the distribution actually sampled from.

    Order as in HF and vLLM: temperature, then top-k, then top-p on what top-k left. Filtered tokens
    get -inf. Ties at the top-k threshold are all kept (a rule shared by sampler and recompute).
    """
    # float32 at least (bf16 logits), float64 kept: an exactness check in float64 stays float64
    x = logits.to(torch.promote_types(logits.dtype, torch.float32)) / sampling.temperature
    k = sampling.top_k
    if 0 < k < x.shape[-1]:
        kth = x.topk(k, dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if sampling.top_p < 1.0:
        srt, order = x.sort(dim=-1, descending=True)
        probs = srt.softmax(dim=-1)
        # drop a token when the tokens ranked above it already hold top_p of the mass, so the most
        # likely token always survives
        drop_sorted = (probs.cumsum(dim=-1) - probs) >= sampling.top_p
        drop = torch.empty_like(drop_sorted).scatter_(-1, order, drop_sorted)
        x = x.masked_fill(drop, float("-inf"))
    return x.log_softmax(dim=-1)


def entropy_of(logp: torch.Tensor) -> torch.Tensor:
    """Entropy of each distribution given as log-probs [..., V]; -inf entries count as 0."""
    return torch.special.entr(logp.exp()).sum(dim=-1)


@dataclass
class Padded:
    """Prompt+response rows, right-padded into one batch.

    Position t of the [B, L-1] outputs scores token t+1, and `response_mask[i, t]` is True where
    that token is a response token of row i. Causal attention never lets a real token see the
    padding after it, so the default positions 0..n-1 are right.
    """

    input_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, L]
    response_mask: torch.Tensor  # [B, L-1] bool

    @property
    def lengths(self) -> list[int]:
        return self.response_mask.sum(-1).tolist()


def pad_right(prompts: Sequence, responses: Sequence, pad_token_id: int, device=None) -> Padded:
    """The one padding of (prompt, response) rows (trainer, recompute, warm start)."""
    prompts, responses = _as_lists(prompts), _as_lists(responses)
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (the first response token is predicted from it)")
    width = max(len(p) + len(r) for p, r in zip(prompts, responses))
    ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    attn = torch.zeros((len(prompts), width), dtype=torch.long)
    resp = torch.zeros((len(prompts), width - 1), dtype=torch.bool)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        n = len(p) + len(r)
        ids[i, :n] = torch.tensor(p + r, dtype=torch.long)
        attn[i, :n] = 1
        resp[i, len(p) - 1 : n - 1] = True
    return Padded(ids.to(device), attn.to(device), resp.to(device))


# logits computed at once by chunked_logprobs (positions x vocabulary): 2^25 float32 = 128 MB, ~128 positions of
# a 262k vocabulary, every position of a small one
LOGIT_CHUNK_ELEMENTS = 2 ** 25


def head_of(model):
    """(decoder, output head, final logit soft-cap or None) of a transformers causal LM (through a peft
    wrapper too), or None when the model does not expose them or is wrapped for ranks (DDP and FSDP must see
    the whole forward to synchronise): then its full forward gives the logits."""
    from torch.distributed.fsdp import FSDPModule
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(model, (DistributedDataParallel, FSDPModule)):
        return None
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    get_decoder, get_head = getattr(base, "get_decoder", None), getattr(base, "get_output_embeddings", None)
    decoder, head = (get_decoder(), get_head()) if get_decoder and get_head else (None, None)
    if decoder is None or head is None or decoder is base:
        return None
    return decoder, head, getattr(base.config, "final_logit_softcapping", None)


def _chunk(head, softcap, sampling: SamplingParams, hidden, rows, tokens, with_entropy: bool):
    logits = head(hidden)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    logp_all = sampling_logprobs(logits, sampling)
    ent = entropy_of(logp_all) if with_entropy else logits.new_zeros(0)
    return logp_all[rows, tokens], ent


def chunked_logprobs(head, softcap, hidden: torch.Tensor, rows: torch.Tensor, tokens: torch.Tensor,
                     sampling: SamplingParams, with_entropy: bool = False):
    """log-probs [n] of token `tokens[i]` at position `rows[i]` of `hidden` [P, H] under `sampling`, and the
    entropy [P] of each position's distribution (or None), LOGIT_CHUNK_ELEMENTS logits at a time."""
    size = max(1, LOGIT_CHUNK_ELEMENTS // head.weight.shape[0])
    # checkpointing (the backward recomputes each chunk) only pays when there are several chunks: one chunk
    # holds what the full forward held, and a recompute would cost a second head matmul every update
    recompute = torch.is_grad_enabled() and hidden.requires_grad and hidden.shape[0] > size
    pieces, order, ents = [], [], []
    for a in range(0, hidden.shape[0], size):
        pick = ((rows >= a) & (rows < a + size)).nonzero().squeeze(-1)
        args = (head, softcap, sampling, hidden[a: a + size], rows[pick] - a, tokens[pick], with_entropy)
        lp, ent = checkpoint(_chunk, *args, use_reentrant=False) if recompute else _chunk(*args)
        pieces.append(lp)
        order.append(pick)
        ents.append(ent)
    logp = torch.cat(pieces)
    logp = logp.new_empty(logp.shape).index_copy(0, torch.cat(order), logp)  # back in the order of `rows`
    return logp, torch.cat(ents) if with_entropy else None


def token_logprobs(model, batch: Padded, sampling: SamplingParams, with_entropy: bool = False):
    """log pi(x_{t+1} | x_<=t) under `sampling` at every position [B, L-1], and (optionally) the entropy
    of each processed next-token distribution. Gradients flow when the caller allows them."""
    # no KV cache: nothing decodes after this forward (and gradient checkpointing refuses one)
    parts = head_of(model)
    if parts is None:
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits[:, :-1]
        logp_all = sampling_logprobs(logits, sampling)
        logp = logp_all.gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
        return logp, entropy_of(logp_all) if with_entropy else None
    decoder, head, softcap = parts
    hidden = decoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).last_hidden_state
    b, length = batch.input_ids.shape
    flat = hidden[:, :-1].reshape(b * (length - 1), -1)
    rows = torch.arange(flat.shape[0], device=flat.device)
    logp, ent = chunked_logprobs(head, softcap, flat, rows, batch.input_ids[:, 1:].reshape(-1), sampling, with_entropy)
    return logp.view(b, length - 1), ent.view(b, length - 1) if with_entropy else None


def sequence_stats(
    model,
    prompt_ids_batch: Sequence,
    response_ids_batch: Sequence,
    sampling: SamplingParams,
    pad_token_id: int = 0,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per sequence: log-prob [len(response)] of each response token under `sampling`, and the
    entropy of the processed next-token distribution at each response position (one batched forward)."""
    batch = pad_right(prompt_ids_batch, response_ids_batch, pad_token_id, next(model.parameters()).device)
    logp, ent = token_logprobs(model, batch, sampling, with_entropy=True)
    mask, lengths = batch.response_mask, batch.lengths
    return list(logp[mask].split(lengths)), list(ent[mask].split(lengths))
