"""The metrics of one training step, assembled from what the step produced (the names metric_names.py holds).

Kept out of the trainer's loop so that the loop reads as the algorithm; every function here only
reads its inputs.
"""
from __future__ import annotations

import numpy as np

from treepo_lab.algo.advantage import AdvantageResult
from treepo_lab.rollout.accounting import merge_stats, rollout_metrics
from treepo_lab.rollout.tree import Tree


def rollout_step_metrics(results: list) -> dict[str, float]:
    """Rollout metrics of all generation rounds of a step (DAPO dynamic sampling may run several):
    computed from the summed counts and all trees, so every ratio agrees with the logged token counts."""
    return rollout_metrics([t for r in results for t in r.trees], merge_stats([r.stats for r in results]))


def batch_metrics(trees: list[Tree], correct: list[list[bool]], rewards: list[list[float]],
                  adv: AdvantageResult) -> dict[str, float]:
    """Score, accuracy, lengths and advantages of the leaves the policy is updated on."""
    lengths = [len(t.response_tokens(lf)) for t in trees for lf in t.leaves]
    return {
        "critic/score/mean": float(np.mean([r for rs in rewards for r in rs])),
        "train/accuracy": float(np.mean([c for cs in correct for c in cs])),
        "response_length/mean": float(np.mean(lengths)),
        "response_length/max": float(np.max(lengths)),
        "train/n_prompts": float(len(trees)),
        "train/n_leaves": float(len(lengths)),
        "critic/advantages/raw_mean": float(np.mean([r for rs in adv.raw for r in rs])),
    }
