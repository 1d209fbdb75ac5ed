"""The metric names training logs (track/metric_names.py), so an objective that no run would ever log is refused
before a study exists. tests/test_sweep.py checks this list against what real trial runs log."""
from __future__ import annotations

import difflib
import re

# every training step (rollout compute, shape, update) and every held-out evaluation
LOGGED = (
    "eval/accuracy", "eval/accuracy_ci_low", "eval/accuracy_ci_high", "eval/response_length", "eval/decoded_tokens",
    "eval/prefill_tokens", "eval/wall_s",
    "critic/score/mean", "train/accuracy", "response_length/mean", "response_length/max", "actor/entropy",
    "actor/pg_loss", "actor/pg_clipfrac", "actor/ppo_kl", "actor/grad_norm",
    "rollout/decoded_tokens", "rollout/prefill_tokens", "rollout/generated_tokens", "rollout/token_saving",
    "rollout/traj_per_s", "rollout/tokens_per_s", "rollout/forward_calls", "rollout/recompute_ratio",
    "cumulative/rollout/decoded_tokens", "cumulative/rollout/prefill_tokens", "cumulative/rollout/generated_tokens",
    "cumulative/rollout/token_saving", "cumulative/rollout/forward_calls", "cumulative/timing_s/gen",
    "tree/depth/mean", "tree/fallback_count", "tree/leaves_per_prompt/mean",
    "timing_s/gen", "timing_s/step", "timing_s/update", "time/wall_s", "train/step",
    "time/cpu_s", "timing_s/cpu_step",
    # the saving against the sequential sampler on the same engine (rollout/token_saving: vs independent)
    "rollout/token_saving_vs_sequential", "cumulative/rollout/token_saving_vs_sequential",
)
PATTERNS = (r"eval/(avg|pass|maj)_at_\d+", r"tree/depth-\d+_ratio",
            r"eval/sample_accuracy")  # with eval.sample_k > 0 only


def is_logged(metric: str) -> bool:
    return metric in LOGGED or any(re.fullmatch(p, metric) for p in PATTERNS)


def suggestions(metric: str) -> list[str]:
    return difflib.get_close_matches(metric, LOGGED, n=3, cutoff=0.5)
