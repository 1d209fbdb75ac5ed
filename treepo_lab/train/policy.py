"""Token log-probs of (prompt, response) sequences under the policy, for the PPO update.

Sequences are right-padded into one [B, L] batch; position t of the [B, L-1] outputs scores token
t+1, and `response_mask` marks the positions whose target is a response token. Old and new log-probs
use the same plain temperature scaling, so the importance ratio is exact on-policy at the first step.
"""
from __future__ import annotations

import torch

from treepo_lab.engines.base import SamplingParams
from treepo_lab.engines.logprobs import entropy_of, sampling_logprobs


def pack(seqs: list[tuple[list[int], list[int]]], pad_id: int, device) -> dict[str, torch.Tensor]:
    """Right-pad prompt+response rows; mark response targets."""
    lengths = [len(p) + len(r) for p, r in seqs]
    L = max(lengths)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), L), dtype=torch.long)
    resp = torch.zeros((len(seqs), L - 1), dtype=torch.bool)
    for i, (p, r) in enumerate(seqs):
        n = len(p) + len(r)
        ids[i, :n] = torch.tensor(p + r, dtype=torch.long)
        attn[i, :n] = 1
        resp[i, len(p) - 1 : n - 1] = True
    return {"input_ids": ids.to(device), "attention_mask": attn.to(device), "response_mask": resp.to(device)}


def token_logprobs(model, input_ids, attention_mask, temperature: float = 1.0, with_entropy: bool = False):
    """log pi(x_{t+1} | x_<=t) for every position, [B, L-1]; and the entropy of each distribution."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
    logp_all = sampling_logprobs(logits, SamplingParams(temperature=temperature))
    logp = logp_all.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return logp, entropy_of(logp_all) if with_entropy else None


def place(values: list[torch.Tensor], response_mask: torch.Tensor) -> torch.Tensor:
    """Scatter per-sequence response vectors (one value per response token) into the [B, L-1] layout."""
    out = torch.zeros(response_mask.shape, dtype=_at_least_float32(values), device=response_mask.device)
    for i, v in enumerate(values):
        out[i, response_mask[i]] = v.to(out.device, out.dtype)
    return out


def _at_least_float32(values: list[torch.Tensor]) -> torch.dtype:
    """float32, or float64 when the values are (a float64 exactness check must not round to float32)."""
    return torch.float64 if any(v.dtype == torch.float64 for v in values) else torch.float32
