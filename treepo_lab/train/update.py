"""The PPO policy update of one training step (TreePO, arXiv 2508.17445), as plain functions.

Every leaf is one row: its prompt + its response, with its own per-token advantages. With
`trainer.packing: flat` a prefix shared by k leaves is trained k times, as the official code does (§1.8);
with `tree` (the default) it is forwarded once. Mini-batches are drawn by prompt
(a prompt's leaves stay together); micro-batches only bound memory: each micro-batch loss is weighted
so that the mini-batch gradient is the same whatever the micro-batch size, in every loss_agg_mode.

`forward_leaves` is the one per-leaf forward; `packing.forward_packed` has its contract and forwards
each micro-batch (then a pack of at most `pack_tokens` trie tokens) as one token trie, every shared
prefix once, with the same loss and gradients (FORWARDS maps `trainer.packing` to them).
Old log-probs are computed over the same micro-batches as the first epoch's, so the first mini-batch
of the first epoch sees ratio exactly 1.

Data parallel (train/distributed.py): a mini-batch's prompts are cut into one share per rank, each share
into its own micro-batches; a rank forwards its share, its micro-batch weights use the whole mini-batch's
normaliser, and gradients are summed across ranks at the mini-batch's last backward. Every rank runs the
same number of forwards (padding ones, loss times 0), as FSDP's per-forward all-gathers require.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from treepo_lab.algo.config import LossConfig
from treepo_lab.engines.base import SamplingParams
from treepo_lab.engines.logprobs import pad_right, token_logprobs
from treepo_lab.rollout.tree import Tree
from treepo_lab.train import distributed
from treepo_lab.train.packing import forward_packed, split_packs

Plan = list[list[list[list[list[int]]]]]  # epoch -> mini-batch -> rank's share -> micro-batch -> leaf indices


class TrainingDiverged(RuntimeError):
    """A NaN/inf loss or gradient: the run stops; the last good checkpoint stays as it was."""


@dataclass
class LeafBatch:
    """The leaves of one update, tree-major: row j is (prompts[j], responses[j]) of prompt groups[j]."""

    prompts: list[list[int]]
    responses: list[list[int]]
    groups: list[int]
    pad_id: int

    @classmethod
    def from_trees(cls, trees: list[Tree], pad_id: int) -> LeafBatch:
        rows = [(i, t.prompt_ids, t.response_tokens(lf)) for i, t in enumerate(trees) for lf in t.leaves]
        return cls([p for _, p, _ in rows], [r for _, _, r in rows], [i for i, _, _ in rows], pad_id)

    def __len__(self) -> int:
        return len(self.responses)


def forward_leaves(model, batch: LeafBatch, rows: list[int], temperature: float, with_entropy: bool = False):
    """Token log-probs [n, L-1] of leaves `rows` under the temperature-scaled policy, the entropy (or
    None) and the response mask, in the right-padded layout of `engines.logprobs.pad_right`."""
    padded = pad_right([batch.prompts[j] for j in rows], [batch.responses[j] for j in rows], batch.pad_id,
                       next(model.parameters()).device)
    logp, ent = token_logprobs(model, padded, SamplingParams(temperature=temperature), with_entropy)
    return logp, ent, padded.response_mask


FORWARDS = {"flat": forward_leaves, "tree": forward_packed}  # trainer.packing -> the per-leaf forward


def place(values: list[torch.Tensor], response_mask: torch.Tensor) -> torch.Tensor:
    """Scatter per-leaf response vectors (one value per response token) into the [n, width] layout of
    the forward (either). float32, or float64 when a value is (a float64 check must stay float64)."""
    dtype = torch.float64 if any(v.dtype == torch.float64 for v in values) else torch.float32
    out = torch.zeros(response_mask.shape, dtype=dtype, device=response_mask.device)
    for i, v in enumerate(values):
        out[i, response_mask[i]] = v.to(out.device, dtype)
    return out


def plan_minibatches(batch: LeafBatch, epochs: int, prompts_per_minibatch: int, micro_batch_size: int,
                     generator: torch.Generator, pack_tokens: int | None = None, shares: int = 1) -> Plan:
    """Each epoch: prompts in a fresh random order, cut into mini-batches of `prompts_per_minibatch`
    prompts; a mini-batch's prompts (in prompt order) cut into `shares` near-equal shares, one per rank;
    a share's leaves (in leaf order) cut into micro-batches of `micro_batch_size` leaves, or, with
    `pack_tokens` (tree packing), into packs of at most that many unique trie tokens. The order does not
    depend on `shares`: the same generator gives the same mini-batches at any world size."""
    seqs = list(zip(batch.prompts, batch.responses))
    n_prompts = max(batch.groups, default=-1) + 1
    plan = []
    for _ in range(epochs):
        order = torch.randperm(n_prompts, generator=generator).tolist()
        epoch = []
        for m in range(0, n_prompts, prompts_per_minibatch):
            chosen = sorted(order[m: m + prompts_per_minibatch])
            minibatch = []
            for part in np.array_split(np.array(chosen, dtype=int), shares):
                part = set(part.tolist())
                rows = [j for j, g in enumerate(batch.groups) if g in part]
                if pack_tokens is None:
                    minibatch.append([rows[s: s + micro_batch_size] for s in range(0, len(rows), micro_batch_size)])
                else:
                    minibatch.append(split_packs(seqs, rows, pack_tokens) if rows else [])
            epoch.append(minibatch)
        plan.append(epoch)
    return plan


def first_epoch(plan: Plan, rank: int = 0) -> list[list[int]]:
    """This rank's micro-batches of the first epoch: the forwards of the old (and reference) log-probs."""
    return [mic for minibatch in plan[0] for mic in minibatch[rank]]


def forwards_per_rank(plan: Plan) -> int:
    """The most first-epoch micro-batches any rank has: every rank runs that many old-log-prob forwards."""
    return max(sum(len(mb[r]) for mb in plan[0]) for r in range(len(plan[0][0]))) if plan and plan[0] else 0


def minibatch_prompts(n_prompts: int, mini_batch_prompts: int, prompts_per_step: int) -> int:
    """Prompts per mini-batch when dynamic sampling kept fewer than prompts_per_step: the same number
    of optimizer steps per epoch as a full batch."""
    return max(1, math.ceil(n_prompts * mini_batch_prompts / prompts_per_step))


@torch.no_grad()
def leaf_logprobs(model, batch: LeafBatch, micro_batches: list[list[int]], temperature: float,
                  forward=forward_leaves, n_forwards: int = 0) -> list[torch.Tensor]:
    """Per leaf, the log-prob of each response token (no gradient), over the given micro-batches (None for
    leaves in none of them); then padding forwards up to `n_forwards` in all (data parallel)."""
    out: list[torch.Tensor | None] = [None] * len(batch)
    for mic in micro_batches:
        lp, _, mask = forward(model, batch, mic, temperature)
        for r, j in enumerate(mic):
            out[j] = lp[r][mask[r]]
    for _ in range(n_forwards - len(micro_batches)):
        forward(model, batch, [0], temperature)
    return out


def _n_rows(batch: LeafBatch, rows: list[int], mode: str) -> int:
    """What a micro-batch adds to the mini-batch normaliser: tokens (token-mean) or non-empty rows."""
    if mode == "token-mean":
        return sum(len(batch.responses[j]) for j in rows)
    return sum(len(batch.responses[j]) > 0 for j in rows)


def ppo_update(model, optimizer, batch: LeafBatch, plan: Plan, old_logp: list[torch.Tensor],
               advantages: list[torch.Tensor], loss_fn, loss_cfg: LossConfig, *, temperature: float,
               max_response_len: int, grad_clip: float, ref_logp: list[torch.Tensor] | None = None,
               step: int = 0, forward=forward_leaves, rank: int = 0) -> dict[str, list[float]]:
    """PPO epochs over the planned mini-batches: one optimizer step per mini-batch, this rank running its
    share of each. Returns every loss metric per micro-batch and the gradient norm per mini-batch
    (`actor/grad_norm`), to be averaged (`mean_stats`) once gathered from every rank. Raises
    TrainingDiverged on a non-finite loss or gradient, before the optimizer step. `forward`: a value of
    FORWARDS; `model` may be DDP- or FSDP-wrapped (train/distributed.py)."""
    sums: dict[str, list[float]] = {}
    mode = loss_cfg.loss_agg_mode
    world = len(plan[0][0]) if plan and plan[0] else 1
    model.train()
    for epoch in plan:
        for shares in epoch:
            total = sum(_n_rows(batch, mic, mode) for share in shares for mic in share)
            mine, n_forwards = shares[rank], max(len(share) for share in shares)
            optimizer.zero_grad(set_to_none=True)
            for i in range(n_forwards):
                with distributed.grad_sync(model, enabled=i == n_forwards - 1):
                    if i >= len(mine):  # padding: the collectives of a forward and backward, no gradient
                        lp, _, _ = forward(model, batch, [0], temperature)
                        (lp.sum() * 0.0).backward()
                        continue
                    _micro_step(model, batch, mine[i], forward, old_logp, advantages, ref_logp, loss_fn, loss_cfg,
                                temperature, max_response_len, total, world, step, sums)
            gnorm = distributed.full(torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip))
            if not torch.isfinite(gnorm):
                raise TrainingDiverged(f"non-finite gradient norm ({gnorm.item()}) at step {step}; "
                                       "the last good checkpoint is kept; try a lower trainer.lr")
            sums.setdefault("actor/grad_norm", []).append(gnorm.item())
            optimizer.step()
    model.eval()
    return sums


def mean_stats(parts: list[dict[str, list[float]]]) -> dict[str, float]:
    """The mean of every metric over the values of every rank (ppo_update's returns, in rank order)."""
    keys = dict.fromkeys(k for part in parts for k in part)
    return {k: float(np.mean([v for part in parts for v in part.get(k, [])])) for k in keys}


def _micro_step(model, batch, mic, forward, old_logp, advantages, ref_logp, loss_fn, loss_cfg, temperature,
                max_response_len, total, world, step, sums) -> None:
    lp, ent, mask = forward(model, batch, mic, temperature, with_entropy=True)
    loss, stats = loss_fn(
        lp, place([old_logp[j] for j in mic], mask), place([advantages[j] for j in mic], mask), mask,
        loss_cfg, ref_logp=place([ref_logp[j] for j in mic], mask) if ref_logp else None,
        entropy=ent, max_response_len=max_response_len)
    if not torch.isfinite(loss):
        raise TrainingDiverged(f"non-finite loss ({loss.item()}) at step {step}; "
                               "the last good checkpoint is kept; try a lower trainer.lr")
    # the micro-batch's share of the mini-batch normaliser: the sum of the weighted micro-batch losses
    # is the mini-batch loss, whatever the micro-batch size or world size; x world because DDP and
    # FSDP average gradients over ranks, and the mini-batch gradient is their sum
    (loss * (_n_rows(batch, mic, loss_cfg.loss_agg_mode) * world / total if total else 0.0)).backward()
    for k, v in stats.items():
        sums.setdefault(k, []).append(v)
