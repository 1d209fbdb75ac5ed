"""Table 1: the main comparison (paper Table 1): GRPO, GRPO with tree sampling, TreePO with fixed and
with more (random) initial divergence: final held-out accuracy, pass@k and maj@k with 95% intervals over
seeds, rollout tokens and token saving. Markdown + LaTeX (booktabs)."""
from treepo_lab.analysis.recipes import Need, interval, write_table
from treepo_lab.analysis.tables import Table, fmt_num

NEEDS = [Need("grpo", label="GRPO"), Need("grpo_tree_sampling", label="GRPO w/ tree sampling"),
         Need("treepo_fixed_init", label="TreePO w/ fixed init divergence"),
         Need("treepo_more_init", label="TreePO w/ more init divergence")]


def make(ctx):
    keys = sorted(ctx.data.keys())
    pass_k = next((k for k in keys if k.startswith("eval/pass_at_")), "eval/pass_at_1")
    maj_k = next((k for k in keys if k.startswith("eval/maj_at_")), "eval/maj_at_1")
    rows = []
    for n in NEEDS:
        g = ctx.group(n.name)
        if g is None:
            rows.append([n.name, "0"] + ["n/a"] * 5)
            continue
        tok = interval(ctx, g, "tokens").mean
        rows.append([n.name, str(g.n), interval(ctx, g, "eval/accuracy").fmt(), interval(ctx, g, pass_k).fmt(),
                     interval(ctx, g, maj_k).fmt(), fmt_num(tok),
                     interval(ctx, g, "cumulative/rollout/token_saving").fmt()])
    cols = ["method", "seeds", "accuracy %", pass_k.split("/")[-1].replace("_at_", "@") + " %",
            maj_k.split("/")[-1].replace("_at_", "@") + " %", "rollout tokens", "token saving %"]
    return write_table(ctx, Table(cols, rows, "Final held-out accuracy, mean [95% bootstrap CI] over seeds."),
                       "table1_main")
