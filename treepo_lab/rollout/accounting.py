"""Compute accounting of one rollout (README "Benchmarks"; the TreePO paper §3).

What the model actually did (engine counters) against two references for the same leaves, plus the
tree shape:
  rollout/token_saving                  vs independent sampling: every leaf prefills its own prompt and
                                        decodes its own response (what a plain `generate` per leaf costs);
  rollout/token_saving_vs_sequential    vs the sequential sampler on the same engine: each prompt is
                                        prefilled once and shared by its w independent responses, so
                                        only the sharing of response segments counts as the tree's.
Over several generation rounds of one step (DAPO dynamic sampling) every metric is computed from
the rounds' summed counts and all their trees (`merge_stats`), never from one round.
Every key is a legal MLflow key (letters, digits, _ - . / and space); verl/TreePO names are kept
where they exist (timing_s/gen, tree/depth-k_ratio, train/prompt_fallback_ratio).
"""
from __future__ import annotations

import dataclasses
import re

import numpy as np

from treepo_lab.rollout.tree import FinishReason, Tree

_LEGAL_KEY = re.compile(r"[A-Za-z0-9_\-./ ]+")


def unique_tree_tokens(tree: Tree) -> int:
    """Prompt + every generated segment once. A partial copy (fallback cut inside a segment) repeats
    tokens of its original and is not counted."""
    originals = (n for n in tree.nodes.values() if n.group_id is None or n.group_id == n.node_id)
    generated = sum(len(n.tokens) for n in originals)
    return len(tree.prompt_ids) + generated


def _ratio(a: float, b: float) -> float:
    return float(a) / b if b else 0.0


def _saving(processed: float, reference: float) -> float:
    return 1.0 - _ratio(processed, reference) if reference else 0.0


def merge_stats(stats: list) -> object:
    """The RolloutStats of several rollout calls of one step, as if they were one call: counts and
    times add up, per-prompt and per-step lists are concatenated (their trees go in the same order)."""
    if not stats:
        raise ValueError("merge_stats needs at least one RolloutStats")
    first = stats[0]
    lists = ("requests_per_step", "children_per_active_path", "fallback_requests", "fallback_rounds",
             "finished_at_first_fallback")
    sums = ("n_prompts", "steps", "short_prompts", "dropped_short", "pruned", "gen_s")
    counters = first.counters.snapshot()
    for s in stats[1:]:
        for k, v in vars(s.counters).items():
            setattr(counters, k, getattr(counters, k) + v)
    return dataclasses.replace(
        first, counters=counters, max_depth=max(s.max_depth for s in stats),
        **{k: [x for s in stats for x in getattr(s, k)] for k in lists},
        **{k: sum(getattr(s, k) for s in stats) for k in sums})


def rollout_metrics(trees: list[Tree], stats) -> dict[str, float]:
    """All rollout metrics of one call: compute, throughput, tree shape, fallback, finish reasons."""
    c = stats.counters
    leaves = [(t, lf) for t in trees for lf in t.leaves]
    resp_lens = [sum(t.segment_lengths(lf)) for t, lf in leaves]
    generated = sum(resp_lens)
    independent = sum(len(t.prompt_ids) for t, _ in leaves) + generated  # prefill + decode per leaf
    sequential = sum(len(t.prompt_ids) for t in trees if t.leaves) + generated  # prompt prefilled once
    processed = c.decoded_tokens + c.prefill_tokens
    unique = sum(unique_tree_tokens(t) for t in trees)
    gen_s = stats.gen_s
    m = {
        "rollout/generated_tokens": generated,
        "rollout/decoded_tokens": c.decoded_tokens,
        "rollout/prefill_tokens": c.prefill_tokens,
        "rollout/prefill_cached_tokens": c.prefill_cached_tokens,
        "rollout/independent_tokens": independent,
        "rollout/sequential_tokens": sequential,
        "rollout/token_saving": _saving(processed, independent),
        "rollout/token_saving_vs_sequential": _saving(processed, sequential),
        "rollout/unique_tree_tokens": unique,
        "rollout/recompute_ratio": _ratio(processed, unique),
        "rollout/forward_calls": c.forward_calls,
        "rollout/steps": stats.steps,
        "rollout/n_traj": len(leaves),
        "rollout/traj_per_s": _ratio(len(leaves), gen_s),
        "rollout/tokens_per_s": _ratio(processed, gen_s),
        "rollout/decode_tokens_per_s": _ratio(c.decoded_tokens, gen_s),
        "rollout/forward_s": c.forward_s,
        "rollout/overhead_s": max(gen_s - c.forward_s, 0.0),
        "rollout/overhead_share": _ratio(max(gen_s - c.forward_s, 0.0), gen_s),
        "rollout/dropped_short": stats.dropped_short,
        "rollout/pruned": stats.pruned,
        "rollout/short_prompts": stats.short_prompts,
        "rollout/div_temperature": stats.div_temperature,
        "timing_s/gen": gen_s,
        "timing_s/gen_avg_traj": _ratio(gen_s, len(leaves)),
    }
    m.update(_shape(trees, stats, resp_lens))
    bad = [k for k in m if not _LEGAL_KEY.fullmatch(k)]
    assert not bad, f"illegal MLflow keys: {bad}"
    return {k: float(v) for k, v in m.items()}


def _stat(m: dict, key: str, xs) -> None:
    xs = list(xs)
    m[f"{key}/mean"] = float(np.mean(xs)) if xs else 0.0
    m[f"{key}/min"] = float(np.min(xs)) if xs else 0.0
    m[f"{key}/max"] = float(np.max(xs)) if xs else 0.0


def _shape(trees: list[Tree], stats, resp_lens: list[int]) -> dict[str, float]:
    m: dict[str, float] = {}
    n_leaves = sum(len(t.leaves) for t in trees)
    _stat(m, "tree/leaves_per_prompt", [len(t.leaves) for t in trees])
    _stat(m, "tree/requests_per_step", stats.requests_per_step)
    _stat(m, "tree/children_per_active_path", stats.children_per_active_path)
    _stat(m, "tree/response_length", resp_lens)
    depths = [len(lf.node_path) for t in trees for lf in t.leaves]
    for k in range(1, max(depths + [stats.max_depth]) + 1):  # every depth, so runs compare key by key
        m[f"tree/depth-{k}_ratio"] = _ratio(depths.count(k), n_leaves)
    m["tree/depth/mean"] = float(np.mean(depths)) if depths else 0.0
    finish_steps = [t.nodes[lf.node_path[-1]].step for t in trees for lf in t.leaves]
    m["tree/traj_finish_step/mean"] = float(np.mean(finish_steps)) if finish_steps else 0.0
    m["tree/traj_finish_step/max"] = float(np.max(finish_steps)) if finish_steps else 0.0
    for reason in FinishReason.PRIORITY:
        count = sum(lf.finish_reason == reason for t in trees for lf in t.leaves)
        m[f"tree/finish/{reason}_ratio"] = _ratio(count, n_leaves)
    n = max(stats.n_prompts, 1)
    m["tree/fallback_count"] = sum(stats.fallback_requests)
    m["tree/fallback_count/mean"] = _ratio(sum(stats.fallback_requests), n)
    m["train/prompt_fallback_ratio"] = _ratio(sum(r > 0 for r in stats.fallback_rounds), n)
    first = [x for x in stats.finished_at_first_fallback if x is not None]
    m["tree/n_finished_traj_at_first_fallback/mean"] = float(np.mean(first)) if first else 0.0
    return m


class CumulativeCompute:
    """Running totals of the additive compute metrics over training (logged next to the per-step ones)."""

    ADDITIVE = ("rollout/generated_tokens", "rollout/decoded_tokens", "rollout/prefill_tokens",
                "rollout/prefill_cached_tokens", "rollout/independent_tokens", "rollout/sequential_tokens",
                "rollout/forward_calls",
                "rollout/n_traj", "rollout/forward_s", "timing_s/gen")

    def __init__(self):
        self.totals = {k: 0.0 for k in self.ADDITIVE}

    def add(self, metrics: dict[str, float]) -> dict[str, float]:
        """Add one step's metrics; return the cumulative ones under `cumulative/...`."""
        for k in self.ADDITIVE:
            self.totals[k] += metrics.get(k, 0.0)
        t = self.totals
        out = {f"cumulative/{k}": v for k, v in t.items()}
        spent = t["rollout/decoded_tokens"] + t["rollout/prefill_tokens"]
        out["cumulative/rollout/token_saving"] = _saving(spent, t["rollout/independent_tokens"])
        out["cumulative/rollout/token_saving_vs_sequential"] = _saving(spent, t["rollout/sequential_tokens"])
        return out
