"""Fig. 7: segment budget (paper Fig. 7): depth x segment length at a constant d x l = 128."""
from treepo_lab.analysis.recipes import Need, curves

NEEDS = [Need(f"seg_{s}", label=s) for s in ("16x8", "8x16", "4x32", "2x64")]


def make(ctx):
    return curves(ctx, [("eval/accuracy", "held-out accuracy"), ("response_length/mean", "response length")],
                  "fig7_segment_budget")
