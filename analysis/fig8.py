"""Fig. 8: log-prob-weighted branching (paper Fig. 8): where the divergence budget goes by the
segment's log-probability, against the fixed average split."""
from treepo_lab.analysis.recipes import Need, curves

NEEDS = [Need("treepo_fixed_init", label="fixed average"), Need("low_prob_encourage", label="low-prob encourage"),
         Need("high_prob_encourage", label="high-prob encourage"), Need("naive2low_schedule", label="naive -> low schedule")]


def make(ctx):
    return curves(ctx, [("eval/accuracy", "held-out accuracy"), ("actor/entropy", "entropy (nats)")],
                  "fig8_logprob_branching")
