"""Log-probs of sampled tokens: the one logits-processing function, and a from-scratch recompute.

`sampling_logprobs` is the only place where temperature, top-k and top-p turn logits into the
distribution that is sampled from. The HF engine samples from it, and `sequence_logprobs` recomputes
full sequences through it, so the two cannot drift apart. With `top_k` off and `top_p=1` it is the
plain temperature-scaled log-softmax that the trainer uses for old/new policy log-probs.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from treepo_lab.engines.base import SamplingParams


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


def _as_lists(batch) -> list[list[int]]:
    return [x.tolist() if isinstance(x, torch.Tensor) else list(x) for x in batch]


def sequence_stats(
    model,
    prompt_ids_batch: Sequence,
    response_ids_batch: Sequence,
    sampling: SamplingParams,
    pad_token_id: int = 0,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per sequence: log-prob [len(response)] of each response token under `sampling`, and the
    entropy of the processed next-token distribution at each response position.

    One batched forward over prompt+response, right-padded (causal attention never lets a real token
    see the padding after it, so positions are plain 0..n-1). Gradients flow when the caller allows
    them; wrap in torch.no_grad() for old log-probs.
    """
    prompts, responses = _as_lists(prompt_ids_batch), _as_lists(response_ids_batch)
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (the first response token is predicted from it)")
    device = next(model.parameters()).device
    seqs = [p + r for p, r in zip(prompts, responses)]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    # scored[i, t]: position t's logits predict response token at t+1 of sequence i
    scored = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, (p, s) in enumerate(zip(prompts, seqs)):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
        scored[i, len(p) - 1 : len(s) - 1] = True
    ids, mask, scored = ids.to(device), mask.to(device), scored.to(device)
    positions = torch.arange(width, device=device).expand(len(seqs), width)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    targets = ids[:, 1:][scored[:, :-1]]
    logp = sampling_logprobs(logits[:, :-1][scored[:, :-1]], sampling)
    token_lp = logp.gather(-1, targets[:, None]).squeeze(-1)
    lengths = [len(r) for r in responses]
    return list(token_lp.split(lengths)), list(entropy_of(logp).split(lengths))


def sequence_logprobs(
    model,
    prompt_ids_batch: Sequence,
    response_ids_batch: Sequence,
    sampling: SamplingParams,
    pad_token_id: int = 0,
) -> list[torch.Tensor]:
    """Per sequence, the log-prob of each response token under `sampling` (see `sequence_stats`)."""
    return sequence_stats(model, prompt_ids_batch, response_ids_batch, sampling, pad_token_id)[0]
