"""The registered names of the algorithm's implementations, importable without torch.

Estimators (advantage.py) and losses (loss.py) need torch, but a config is checked and shown without
it, so their names are declared here with what a config check needs to know, and each name is
resolved to its function by import path on first use (see `treepo_lab.registry.Registry.declare`).
The implementing function carries `@ESTIMATORS.implements(name)` / `@POLICY_LOSSES.implements(name)`.
"""
from __future__ import annotations

from treepo_lab.registry import Registry

# name -> fn(trees, rewards, cfg) -> (runs[t][i], raw[t][i]) with cfg.params = its knobs, defaults filled in.
# info: whiten = default of AdvantageConfig.whiten; needs_tree = reads the tree structure (degenerates on
# sequential rollouts); label = its code in the strategy tag; knobs = name -> Knob (advantage.params).
# More estimators register themselves in treepo_lab/methods/ (one file each, torch-free).
ESTIMATORS: Registry = Registry("advantage estimator")
_ADV = "treepo_lab.algo.advantage"
ESTIMATORS.declare("grpo", f"{_ADV}:grpo", whiten=False, needs_tree=False, label="grpo")
ESTIMATORS.declare("rloo", f"{_ADV}:rloo", whiten=False, needs_tree=False, label="rloo")
ESTIMATORS.declare("reinforce_pp_baseline", f"{_ADV}:reinforce_pp_baseline", whiten=True, needs_tree=False,
                   label="reinforce_pp_baseline")
ESTIMATORS.declare("treepo", f"{_ADV}:treepo", whiten=True, needs_tree=True, label="treepo")
ESTIMATORS.declare("tree_segment", f"{_ADV}:tree_segment", whiten=True, needs_tree=True, label="treeseg")
ESTIMATORS.declare("spo", f"{_ADV}:spo", whiten=False, needs_tree=True, label="spo")

# name -> loss(logp, old_logp, advantages, mask, cfg, ref_logp=None, entropy=None, max_response_len=None)
#   -> (loss, stats)
POLICY_LOSSES: Registry = Registry("policy loss")
POLICY_LOSSES.declare("ppo", "treepo_lab.algo.loss:ppo_loss")


def needs_tree(estimator: str) -> bool:
    """True if `estimator` reads the tree structure (so sequential rollouts would degenerate it)."""
    return ESTIMATORS.info(estimator, "advantage.estimator")["needs_tree"]
