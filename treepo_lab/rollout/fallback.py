"""Fallback ("depth-first search fallback", the TreePO paper (arXiv 2508.17445)): refill a tree that has no active path
and fewer than w leaves by restarting from a prefix of one of its finished leaves.

Per root: order the candidate leaves (registry `CANDIDATE_POLICIES`), choose a cut position in each
candidate's response (registry `CUT_POLICIES`), apply the depth guard, truncate the node path to the
cut, and enqueue min(b, R) copies per candidate until the R = w - f missing leaves are in flight.
What is still missing after the last candidate is refilled the next time the root runs dry.

Fixed with respect to the official code: a null window means W = l (B3; upstream -1 broke it), the
block policies work with max_fallback_window set (B4), finished_first_strict takes the BEST leaves
first (B7). `boxed_ge_window` is a plain name with its integer in `fallback_min_windows` (upstream
`boxed_ge_window_{n}`).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from treepo_lab.registry import Registry
from treepo_lab.rollout.tree import FinishReason, Leaf, Node, Tree

def window(cfg) -> int:
    """W, the cut granularity of the random policy: fallback_window, or l when null (B3 fixed)."""
    return cfg.segment_len if cfg.fallback_window is None else cfg.fallback_window


@dataclass
class Candidate:
    leaf: Leaf
    length: int  # response tokens
    logprobs: list[float]  # the response's sampled-token log-probs


# ---- candidate order ------------------------------------------------------------------------------------

# name -> policy(candidates, cfg, rng) -> the candidates to try, in order (may drop some)
CANDIDATE_POLICIES: Registry = Registry("fallback candidate policy")


def _shuffled(items: list, rng: np.random.Generator) -> list:
    return [items[i] for i in rng.permutation(len(items))]


def _gumbel_order(items: list, weights, rng: np.random.Generator) -> list:
    """A Gumbel-top-k permutation: item i comes first with probability proportional to weights[i]."""
    w = np.maximum(np.asarray(weights, dtype=float), 1e-12)  # a zero weight still gets a (last) place
    scores = np.log(w) + rng.gumbel(size=len(items))
    return [items[i] for i in np.argsort(-scores, kind="stable")]


def _priority(c: Candidate) -> int:
    return FinishReason.PRIORITY[c.leaf.finish_reason]


@CANDIDATE_POLICIES.register("soft_boxed_and_eos")
def soft_boxed_and_eos(cands: list[Candidate], cfg, rng) -> list[Candidate]:
    """Only leaves that ended with an answer or EOS, in random order (the paper's fallback)."""
    keep = {FinishReason.FINISHED, FinishReason.EOS}
    return _shuffled([c for c in cands if c.leaf.finish_reason in keep], rng)


@CANDIDATE_POLICIES.register("finished_first")
def finished_first(cands: list[Candidate], cfg, rng) -> list[Candidate]:
    """All leaves, better-finished ones first with probability proportional to the priority."""
    return _gumbel_order(cands, [_priority(c) for c in cands], rng)


@CANDIDATE_POLICIES.register("finished_first_strict")
def finished_first_strict(cands: list[Candidate], cfg, rng) -> list[Candidate]:
    """All leaves, best priority first (B7 fixed: upstream sorts worst first); ties keep leaf order."""
    return sorted(cands, key=lambda c: -_priority(c))


@CANDIDATE_POLICIES.register("random_all")
def random_all(cands: list[Candidate], cfg, rng) -> list[Candidate]:
    return _shuffled(cands, rng)


@CANDIDATE_POLICIES.register("longer_first")
def longer_first(cands: list[Candidate], cfg, rng) -> list[Candidate]:
    """All leaves, longer ones first with probability proportional to the response length."""
    return _gumbel_order(cands, [c.length for c in cands], rng)


@CANDIDATE_POLICIES.register("boxed_ge_window")
def boxed_ge_window(cands: list[Candidate], cfg, rng) -> list[Candidate]:
    """Only boxed-answer leaves at least fallback_min_windows windows W long, in random order."""
    long_enough = [c for c in cands if c.leaf.finish_reason == FinishReason.FINISHED
                   and c.length >= cfg.fallback_min_windows * window(cfg)]
    return _shuffled(long_enough, rng)


# ---- cut position ------------------------------------------------------------------------------------------

# name -> policy(candidate, cfg, rng) -> tokens of its response to keep
CUT_POLICIES: Registry = Registry("fallback cut policy")


def _logprobs(cand: Candidate, policy: str) -> list[float]:
    if len(cand.logprobs) != cand.length:
        raise RuntimeError(f"fallback_cut={policy} needs an engine that reports a log-prob per token")
    return cand.logprobs


@CUT_POLICIES.register("random", label="")
def cut_random(cand: Candidate, cfg, rng) -> int:
    """Back off a uniform number of W-blocks (at least the last, possibly partial, one; at most
    max_fallback_window when set). A cut of 0 restarts from the prompt."""
    w = window(cfg)
    total_blocks = math.ceil(cand.length / w)
    if total_blocks == 0:
        return 0
    most = total_blocks if cfg.max_fallback_window is None else min(cfg.max_fallback_window, total_blocks)
    back = int(rng.integers(1, most + 1))
    return (total_blocks - back) * w


@CUT_POLICIES.register("min_logprob_token", label="fb-minlp")
def cut_min_logprob_token(cand: Candidate, cfg, rng) -> int:
    """Cut just before the least likely sampled token, so that it is resampled (not segment-aligned)."""
    return int(np.argmin(_logprobs(cand, "min_logprob_token")))


def _cut_block(sign: float):
    def policy(cand: Candidate, cfg, rng) -> int:
        # max_fallback_window overrides the block size (the upstream intent; there it crashed, B4)
        size = cfg.fallback_block_size if cfg.max_fallback_window is None else cfg.max_fallback_window
        logprobs = _logprobs(cand, "block / inverse_block")
        means = np.array([np.mean(logprobs[i:i + size]) for i in range(0, len(logprobs), size)])
        z = sign * means
        p = np.exp(z - z.max())
        block = int(rng.choice(len(means), p=p / p.sum()))
        return block * size

    return policy


# block: low-probability blocks are cut more often; inverse_block: high-probability blocks
CUT_POLICIES.register("block", label="fb-block")(_cut_block(-1.0))
CUT_POLICIES.register("inverse_block", label="fb-invblock")(_cut_block(+1.0))


@CUT_POLICIES.register("from_start", label="fb-start")
def cut_from_start(cand: Candidate, cfg, rng) -> int:
    return 0


@CUT_POLICIES.register("no_fallback", label="nofb")
def cut_none(cand: Candidate, cfg, rng) -> int:
    raise RuntimeError("fallback_cut=no_fallback: fallback must not trigger")


# ---- apply -------------------------------------------------------------------------------------------------

def depth_guard(seg_lens: list[int], cut: int, max_depth: int) -> int:
    """Keep at most d-1 segments so that at least one more step is possible.

    Upstream: if ceil(cut/l) >= d then cut = l*(d-1). Here counted in nodes (the segments the kept
    prefix touches), which is the same for segment-aligned paths and stays right after a partial copy.
    """
    start, touched = 0, 0
    for n in seg_lens:
        if start >= cut:
            break
        touched, start = touched + 1, start + n
    return sum(seg_lens[:max_depth - 1]) if touched >= max_depth else cut


def truncate_path(tree: Tree, node_path: list[int], cut: int, new_id: Callable[[], int],
                  decode: Callable[[list[int]], str]) -> int | None:
    """The node a path restarted at token `cut` continues (None: the prompt).

    Whole segments before the cut are shared as they are. A cut inside a segment makes a partial copy
    of it, a new node with the kept tokens whose group_id is the original's, so subgroups stay keyed on
    the segment the path branched from (tree.py).
    """
    last, start = None, 0
    for nid in node_path:
        node = tree.nodes[nid]
        if start + len(node.tokens) <= cut:
            last, start = nid, start + len(node.tokens)
            continue
        keep = cut - start
        if keep > 0:
            part = Node(node_id=new_id(), parent_id=last, depth=node.depth, step=node.step,
                        tokens=node.tokens[:keep], logprobs=node.logprobs[:keep],
                        entropies=node.entropies[:keep], text=decode(node.tokens[:keep]), group_id=node.gid)
            last = tree.add(part).node_id
        break
    return last


@dataclass
class Restart:
    """A fallback start point: `copies` new paths continue node `last` (None: the prompt)."""

    last: int | None
    copies: int
    fallback_count: int  # fallback restarts on the way (the source leaf's + 1)


def plan_fallback(tree: Tree, remaining: int, cfg, rng: np.random.Generator, copies: Callable[[], int],
                  new_id: Callable[[], int], decode: Callable[[list[int]], str]) -> list[Restart]:
    """Restart points for one root with no active path and `remaining` = w - f > 0 missing leaves.

    `copies()` gives b for one candidate (drawn per candidate under budget.kind=random_div).
    """
    cands = [Candidate(leaf, sum(tree.segment_lengths(leaf)), tree.response_logprobs(leaf))
             for leaf in tree.leaves]
    ordered = CANDIDATE_POLICIES.get(cfg.fallback_candidates, "sampler.fallback_candidates")(cands, cfg, rng)
    if not ordered:
        ordered = [None]  # nothing qualifies: restart from the prompt
    cut_policy = CUT_POLICIES.get(cfg.fallback_cut, "sampler.fallback_cut")
    plan = []
    for cand in ordered:
        if remaining <= 0:
            break
        last, count = None, 1
        if cand is not None:
            count = cand.leaf.fallback_count + 1
            length = cand.length
            # an explicit window longer than the response restarts from the prompt (upstream rule)
            if length > 0 and not (cfg.fallback_window is not None and length < cfg.fallback_window):
                cut = cut_policy(cand, cfg, rng)
                cut = depth_guard(tree.segment_lengths(cand.leaf), cut, cfg.max_depth)
                last = truncate_path(tree, cand.leaf.node_path, cut, new_id, decode)
        n = min(copies(), remaining)
        plan.append(Restart(last, n, count))
        remaining -= n
        if cfg.fallback_cut == "from_start":
            break  # upstream: one start point per fallback round, b copies
    return plan
