"""Fig. 1: held-out accuracy over training of GRPO, GRPO with tree sampling and TreePO (paper Fig. 1),
mean over seeds with a 95% bootstrap band."""
from treepo_lab.analysis.recipes import Need, curves

NEEDS = [Need("grpo", label="GRPO"), Need("grpo_tree_sampling", label="GRPO w/ tree sampling"),
         Need("treepo_fixed_init", label="TreePO")]


def make(ctx):
    return curves(ctx, [("eval/accuracy", "held-out accuracy")], "fig1_validation_curves")
