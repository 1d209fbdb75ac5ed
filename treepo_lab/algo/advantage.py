"""Advantage estimators (TreePO, arXiv 2508.17445), small pure functions registered by name.

Input: one `Tree` per prompt and the rewards of its leaves (`rewards[t][i]` belongs to
`trees[t].leaves[i]`). Every estimator returns, per leaf, its advantage as *runs*: a list of
(value, n_tokens) pieces that tile the leaf's response (one run for outcome estimators, one per
segment for segment estimators), plus the per-leaf scalar it computed before batch-global whitening
(`raw`, kept for logging). `compute_advantages` applies the whitening where the estimator (or
`AdvantageConfig.whiten`) asks for it and expands the runs into per-token tensors.

Tree structure comes from `tree.group_path(leaf)` (the subgroup ids) and token counts from
`tree.segment_lengths(leaf)`; both are aligned with the leaf's segments. Singleton-group conventions
follow verl's core_algos (the code is authoritative where the paper is vague, §2.3).
"""
from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from dataclasses import dataclass

import torch

from treepo_lab.algo.config import AdvantageConfig
from treepo_lab.algo.registries import ESTIMATORS
from treepo_lab.algo import tree_stats as ts
from treepo_lab.algo.tree_stats import Path, Runs
from treepo_lab.rollout.tree import Tree
from treepo_lab.validated import is_checked



@dataclass
class AdvantageResult:
    token_adv: list[list[torch.Tensor]]  # [tree][leaf] float32, length = leaf response length
    raw: list[list[float]]  # [tree][leaf] per-leaf scalar before whitening (see each estimator)

    def flat(self) -> list[torch.Tensor]:
        """Token advantages of all leaves, tree-major (the order the trainer stacks leaves in)."""
        return [a for per_tree in self.token_adv for a in per_tree]


def compute_advantages(trees: list[Tree], rewards: list[list[float]], cfg: AdvantageConfig) -> AdvantageResult:
    if len(rewards) != len(trees) or any(len(r) != len(t.leaves) for r, t in zip(rewards, trees)):
        raise ValueError("rewards must be a list per tree with one reward per leaf (aligned with tree.leaves)")
    # every step: a validated config's knobs were checked once (treepo_lab/config.py); only the defaults are added
    params = ESTIMATORS.filled(cfg.estimator, cfg.params) if is_checked(cfg) else \
        ESTIMATORS.knobs(cfg.estimator, cfg.params, "advantage.params")
    cfg = dataclasses.replace(cfg, params=params)
    runs, raw = ESTIMATORS.get(cfg.estimator, "advantage.estimator")(trees, rewards, cfg)
    if ESTIMATORS.info(cfg.estimator)["whiten"] if cfg.whiten is None else cfg.whiten:
        runs = whiten_runs(runs)
    return AdvantageResult(_expand(runs), raw)


def annotate_leaves(trees: list[Tree], rewards: list[list[float]], result: AdvantageResult, estimator: str) -> None:
    """Write reward, raw and final (token-mean) advantage onto the leaves, for logged trees."""
    for t, tree in enumerate(trees):
        for i, leaf in enumerate(tree.leaves):
            adv = result.token_adv[t][i]
            leaf.reward, leaf.raw_advantage, leaf.estimator = float(rewards[t][i]), float(result.raw[t][i]), estimator
            leaf.advantage = float(adv.mean()) if adv.numel() else 0.0


# ---- shared helpers -------------------------------------------------------------------------------
def whiten_runs(runs: list[list[Runs]], eps: float = 1e-8) -> list[list[Runs]]:
    """(x - mean) / sqrt(var + eps) over ALL valid tokens of the batch (REINFORCE++ global norm).

    Token-weighted: a run of n tokens counts n times, so long responses weigh more (as in verl's
    masked_whiten). Unbiased variance; with fewer than 2 tokens the variance is taken as 0.
    """
    pieces = [(v, n) for per_tree in runs for r in per_tree for v, n in r if n > 0]
    total = sum(n for _, n in pieces)
    if total == 0:
        return runs
    mean = sum(v * n for v, n in pieces) / total
    var = sum(n * (v - mean) ** 2 for v, n in pieces) / (total - 1) if total > 1 else 0.0
    scale = 1.0 / math.sqrt(var + eps)
    return [[[((v - mean) * scale, n) for v, n in r] for r in per_tree] for per_tree in runs]


def _expand(runs: list[list[Runs]]) -> list[list[torch.Tensor]]:
    """Runs -> one float32 tensor per leaf. One repeat_interleave for the whole batch, then split
    (per-leaf tensor building dominated the cost on batches of thousands of leaves)."""
    values = torch.tensor([v for per_tree in runs for r in per_tree for v, _ in r], dtype=torch.float64)
    counts = torch.tensor([n for per_tree in runs for r in per_tree for _, n in r], dtype=torch.long)
    flat = values.repeat_interleave(counts).to(torch.float32)
    leaf_lens = [sum(n for _, n in r) for per_tree in runs for r in per_tree]
    pieces = iter(flat.split(leaf_lens))
    return [[next(pieces) for _ in per_tree] for per_tree in runs]


# ---- outcome estimators (prompt-level groups) -----------------------------------------------------
@ESTIMATORS.implements("grpo")
def grpo(trees, rewards, cfg):
    """(R - mean) / (std + 1e-6) per prompt, unbiased std (§2.1). Singleton: mean 0, std 1.

    norm_by_std=False is Dr.GRPO: R - mean. raw = the final per-leaf value (nothing follows it).
    """
    raw = []
    for rs in rewards:
        mean, std = (ts.mean(rs), ts.std_unbiased(rs)) if len(rs) > 1 else (0.0, 1.0)
        raw.append([(r - mean) / (std + 1e-6) if cfg.norm_by_std else r - mean for r in rs])
    return ts.outcome_runs(trees, raw), raw


@ESTIMATORS.implements("rloo")
def rloo(trees, rewards, cfg):
    """R_i - mean of the other leaves of the prompt. Singleton: baseline 0 (verl)."""
    raw = []
    for rs in rewards:
        n, s = len(rs), sum(rs)
        raw.append([r - (s - r) / (n - 1) if n > 1 else r for r in rs])
    return ts.outcome_runs(trees, raw), raw


@ESTIMATORS.implements("reinforce_pp_baseline")
def reinforce_pp_baseline(trees, rewards, cfg):
    """R - prompt mean (singleton: mean 0), then global token whitening. raw = R - mean."""
    raw = [[r - (ts.mean(rs) if len(rs) > 1 else 0.0) for r in rs] for rs in rewards]
    return ts.outcome_runs(trees, raw), raw


# ---- treepo: nested subgroup baselines (§2.3) ------------------------------------------------------
@ESTIMATORS.implements("treepo")
def treepo(trees, rewards, cfg):
    """A_i = aggregate over levels j of (R_i - mean of the leaves sharing i's first j subgroup ids).

    Levels 0..Dmax-1 with Dmax = the deepest group path of the batch, capped by max_subgroup_depth
    (so the full path of the deepest leaves is never a level, as in the official uid scheme). The
    key at level j is the path prefix path[:j]; a leaf shorter than j keys on its whole path, as the
    official string slicing does. Level 0 (the prompt) is always used (singleton: mean 0) unless
    drop_root; deeper singleton groups are skipped; remove_zero_std_subgroups skips deeper groups
    whose rewards are all equal. A leaf with no used level gets 0. raw = A_i before whitening.
    """
    paths_all = [ts.paths(t) for t in trees]
    dmax = max((len(p) for ps in paths_all for p in ps), default=0)
    if cfg.max_subgroup_depth > 0:
        dmax = min(dmax, cfg.max_subgroup_depth)
    dmax = max(dmax, 1)  # the root level exists even when every path is empty
    raw = []
    for paths, rs in zip(paths_all, rewards):
        terms: list[list[tuple[float, int]]] = [[] for _ in rs]  # per leaf: (a_ij, |G_j|)
        for depth in range(dmax):
            if depth == 0 and cfg.drop_root:
                continue
            groups: dict[Path, list[int]] = defaultdict(list)
            for i, p in enumerate(paths):
                groups[p[:depth]].append(i)
            for members in groups.values():
                vals = [rs[i] for i in members]
                if depth > 0 and (len(members) == 1 or (cfg.remove_zero_std_subgroups and min(vals) == max(vals))):
                    continue
                mean = ts.mean(vals) if len(members) > 1 else 0.0
                for i in members:
                    terms[i].append((rs[i] - mean, len(members)))
        raw.append([_aggregate(ts, cfg.aggregation) for ts in terms])
    return ts.outcome_runs(trees, raw), raw


def _aggregate(terms: list[tuple[float, int]], how: str) -> float:
    if not terms:
        return 0.0
    if how == "average":
        return ts.mean([a for a, _ in terms])
    return sum(a * n for a, n in terms) / sum(n for _, n in terms)  # group_size


# ---- segment-level tree estimators (§2.4) ---------------------------------------------------------
def _modified_rewards(paths: list[Path], rs: list[float]) -> list[float]:
    """R'_i = sum over prefixes P of i (root .. own path) of |P| (R_i - mean_P) / sum |P|.

    |P| counts the leaves under P, so the leaf's own node (usually a singleton, contributing 0 with
    weight 1) is included as the spec states.
    """
    size_mean = {prefix: (len(vals), ts.mean(vals)) for prefix, vals in ts.leaves_under(paths, rs).items()}
    out = []
    for p, r in zip(paths, rs):
        groups = [size_mean[p[:k]] for k in range(len(p) + 1)]
        out.append(sum(n * (r - m) for n, m in groups) / sum(n for n, _ in groups))
    return out


@ESTIMATORS.implements("tree_segment")
def tree_segment(trees, rewards, cfg):
    """Per segment j of leaf i (n segments): V(node_j) - V(parent_j) (or - eta^(n-j) V(parent_j)).

    V is the bottom-up mean of the modified rewards R' with V(root) = 0. Each segment's value covers
    that segment's actual tokens (the official code assumed exactly l tokens per segment, which is
    wrong for unaligned or short segments). raw = R'_i. max_subgroup_depth is not used: the whole tree.
    """
    runs, raw = [], []
    for t, rs in zip(trees, rewards):
        paths = ts.paths(t)
        mod = _modified_rewards(paths, rs)
        V = ts.node_values(ts.children(paths), mod)
        V[()] = 0.0
        per_tree = []
        for p, lf in zip(paths, t.leaves):
            n = len(p)
            disc = [cfg.segment_eta ** (n - j) if cfg.segment_eta > 0 else 1.0 for j in range(1, n + 1)]
            advs = [V[p[:j]] - disc[j - 1] * V[p[: j - 1]] for j in range(1, n + 1)]
            per_tree.append(list(zip(advs, t.segment_lengths(lf))))
        runs.append(per_tree)
        raw.append(mod)
    return runs, raw


@ESTIMATORS.implements("spo")
def spo(trees, rewards, cfg):
    """Per segment: z(node) - z(parent), z(root) = 0.

    V is the bottom-up mean of raw rewards; the children of a node with >= 2 children are z-scored
    against each other (population std; std ~ 0 gives 0). An only child has no siblings to be
    compared with, so it inherits its parent's z: a segment that did not branch gets advantage 0.
    raw = z of the leaf's last node (the sum of its segment advantages). No whitening.
    """
    runs, raw = [], []
    for t, rs in zip(trees, rewards):
        paths = ts.paths(t)
        kids = ts.children(paths)
        V = ts.node_values(kids, rs)
        z: dict[Path, float] = {(): 0.0}
        for node in sorted(kids, key=len):  # parents before children
            children = [c for c in kids[node] if not isinstance(c, ts.End)]
            if len(kids[node]) < 2:
                z.update({c: z[node] for c in children})
                continue
            vals = [rs[c.i] if isinstance(c, ts.End) else V[c] for c in kids[node]]
            m = ts.mean(vals)
            sd = math.sqrt(ts.mean([(v - m) ** 2 for v in vals]))
            z.update({c: (V[c] - m) / sd if sd > 1e-6 else 0.0 for c in children})
        per_tree, raw_t = [], []
        for p, lf in zip(paths, t.leaves):
            advs = [z[p[:j]] - z[p[: j - 1]] for j in range(1, len(p) + 1)]
            per_tree.append(list(zip(advs, t.segment_lengths(lf))))
            raw_t.append(z[p])
        runs.append(per_tree)
        raw.append(raw_t)
    return runs, raw
