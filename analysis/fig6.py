"""Fig. 6: advantage ablations (paper Fig. 6): TreePO's subgroup-averaged advantage against
group-size weighting (Eq. 6), subgroup rejection (Eq. 7) and no root term."""
from treepo_lab.analysis.recipes import Need, curves

NEEDS = [Need("treepo_fixed_init", label="TreePO (average)"), Need("adv_group_size", label="group-size weighted"),
         Need("adv_subgroup_rejection", label="subgroup rejection"), Need("adv_no_root", label="no root term")]


def make(ctx):
    return curves(ctx, [("eval/accuracy", "held-out accuracy"), ("actor/entropy", "entropy (nats)")],
                  "fig6_advantage_ablations")
