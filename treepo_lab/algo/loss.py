"""Policy losses (TreePO, arXiv 2508.17445), registered by name; verl core_algos semantics.

All tensors are [batch, time] with a response mask (1 = a valid response token). A loss returns the
scalar to minimise and a dict of float metrics under verl's names (`actor/...`). Every leaf of a
tree is its own row: a prefix shared by k leaves is trained k times, each with that leaf's
advantage, exactly as the official code does (§1.8).
"""
from __future__ import annotations

import torch

from treepo_lab.algo.config import LossConfig
from treepo_lab.algo.registries import POLICY_LOSSES


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1)


def agg_loss(loss_mat: torch.Tensor, mask: torch.Tensor, mode: str, horizon: int | None = None) -> torch.Tensor:
    """Reduce a per-token loss matrix to a scalar.

    token-mean: sum over valid tokens / number of valid tokens (every token weighs the same).
    seq-mean-token-sum: mean over sequences of each sequence's token sum.
    seq-mean-token-mean: mean over sequences of each sequence's token mean (every sequence the same).
    seq-mean-token-sum-norm: sum over valid tokens / (n_seqs * H), H = `horizon` (required): a
        constant (Dr.GRPO: the max response length), so a token's weight does not depend on how the
        batch happened to be padded or cut into micro-batches.
    A "sequence" is a row with at least one valid token: fully masked rows (padding) are not
    averaged in, which would otherwise scale the loss by the padding fraction (or give NaN).
    """
    mask = mask.to(loss_mat.dtype)
    if mode == "token-mean":
        return masked_mean(loss_mat, mask)
    tok_sum = (loss_mat * mask).sum(-1)
    n_tok = mask.sum(-1)
    n_seq = (n_tok > 0).sum().clamp(min=1).to(loss_mat.dtype)
    if mode == "seq-mean-token-sum":
        return tok_sum.sum() / n_seq
    if mode == "seq-mean-token-mean":
        return (tok_sum / n_tok.clamp(min=1)).sum() / n_seq
    if mode == "seq-mean-token-sum-norm":
        if not horizon or horizon < 1:
            raise ValueError(f"loss_agg_mode seq-mean-token-sum-norm needs a horizon >= 1, got {horizon!r}")
        return tok_sum.sum() / (n_seq * horizon)
    raise ValueError(f"unknown loss_agg_mode {mode!r}")


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-token KL(pi || ref) estimate from sampled-token log-probs (Schulman's k1 / k3)."""
    if kind == "k1":
        return logp - ref_logp
    if kind in ("k3", "low_var_kl"):
        # k3 = exp(ref - logp) - (ref - logp) - 1 >= 0, unbiased and low variance. The inner clamp
        # keeps exp finite; the outer +-10 clamp bounds rare outliers, as verl does.
        d = (ref_logp - logp).clamp(-20, 20)
        return (torch.exp(d) - d - 1).clamp(-10, 10)
    raise ValueError(f"unknown kl_type {kind!r}")


@POLICY_LOSSES.implements("ppo")
def ppo_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
             cfg: LossConfig, ref_logp: torch.Tensor | None = None, entropy: torch.Tensor | None = None,
             max_response_len: int | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO clipped surrogate with clip-higher (eps_low, eps_high) and dual clip, + KL and entropy terms.

    per token: l = max(-A r, -A clip(r, 1-eps_low, 1+eps_high)); for A < 0 also l = min(l, -A c)
    (dual clip: a huge ratio on a bad token cannot blow the loss up). loss = agg(l)
    - entropy_coef * agg(entropy) + kl_coef * agg(kl(logp, ref)). `entropy` is the per-token entropy of
    the current policy (needed when entropy_coef > 0); `ref_logp` the reference policy's log-probs
    (needed when kl_coef > 0). Either, when given, is also logged. `max_response_len` (d*l) is the
    horizon of seq-mean-token-sum-norm when `cfg.norm_horizon` is None (its documented meaning).
    """
    mask = mask.to(logp.dtype)
    horizon = cfg.norm_horizon if cfg.norm_horizon is not None else max_response_len
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio.clamp(-20, 20))  # clamp: one stale token must not overflow exp
    loss_plain = -advantages * ratio
    loss_clip = -advantages * ratio.clamp(1 - cfg.clip_low, 1 + cfg.clip_high)
    pg = torch.maximum(loss_plain, loss_clip)
    clipfrac = masked_mean((loss_clip > loss_plain).to(logp.dtype), mask)
    clipfrac_lower = torch.zeros((), dtype=logp.dtype)
    if cfg.dual_clip_on:
        cap = -advantages * cfg.dual_clip_c
        neg = advantages < 0
        clipfrac_lower = masked_mean((neg & (pg > cap)).to(logp.dtype), mask)
        pg = torch.where(neg, torch.minimum(pg, cap), pg)
    pg_loss = agg_loss(pg, mask, cfg.loss_agg_mode, horizon)
    loss = pg_loss
    metrics = {
        "actor/pg_loss": pg_loss.item(),
        "actor/pg_clipfrac": clipfrac.item(),
        "actor/pg_clipfrac_lower": clipfrac_lower.item(),
        "actor/ppo_kl": masked_mean(-log_ratio, mask).item(),  # approx KL(old || new), k1
    }
    if cfg.entropy_coef > 0 and entropy is None:
        raise ValueError("loss.entropy_coef > 0 needs the per-token entropy")
    if entropy is not None:
        metrics["actor/entropy"] = masked_mean(entropy, mask).item()  # plain token mean, whatever the mode
        if cfg.entropy_coef > 0:
            loss = loss - cfg.entropy_coef * agg_loss(entropy, mask, cfg.loss_agg_mode, horizon)
    if cfg.kl_coef > 0 and ref_logp is None:
        raise ValueError("loss.kl_coef > 0 needs the reference log-probs")
    if ref_logp is not None:
        kl_loss = agg_loss(kl_penalty(logp, ref_logp, cfg.kl_type), mask, cfg.loss_agg_mode, horizon)
        metrics["actor/kl_loss"] = kl_loss.item()
        if cfg.kl_coef > 0:
            loss = loss + cfg.kl_coef * kl_loss
    return loss, metrics
