"""The one mapping from metric names to what MLflow's chart view shows first.

MLflow's run charts put metrics in sections named by the key's prefix (everything before the last
"/") and sort the sections alphabetically, so `actor/*` and `critic/*` come before `eval/*` and
`rollout/*`, and a user scrolls past a dozen sections to see accuracy against compute. The metric
names stay fixed (what reports, sweeps and tests read: `eval/accuracy`,
`cumulative/rollout/decoded_tokens`, ...); the tracker also logs the few headline curves below under
`1_compare/`, a section that sorts first ("1" before any letter). Nothing else reads the aliases.
"""
from __future__ import annotations

COMPARE_SECTION = "1_compare"

# metric -> its alias in the first chart section (eval first, then rollout compute)
HEADLINE = {
    "eval/accuracy": f"{COMPARE_SECTION}/eval_accuracy",
    "train/accuracy": f"{COMPARE_SECTION}/train_accuracy",
    "cumulative/rollout/decoded_tokens": f"{COMPARE_SECTION}/decoded_tokens_total",
    "rollout/token_saving": f"{COMPARE_SECTION}/token_saving",
    "rollout/token_saving_vs_sequential": f"{COMPARE_SECTION}/token_saving_vs_sequential",
}


def with_headline(metrics: dict[str, float]) -> dict[str, float]:
    """`metrics` plus the `1_compare/` alias of every headline metric present."""
    out = dict(metrics)
    out.update({alias: metrics[key] for key, alias in HEADLINE.items() if key in metrics})
    return out
