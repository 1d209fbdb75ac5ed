"""Table 2: test-time tree sampling (paper Table 2): the same trained model evaluated with sequential
and with tree sampling at k = 16 samples per problem: accuracy, pass@k, maj@k and the evaluation's
tokens. Markdown + LaTeX (booktabs)."""
from treepo_lab.analysis.recipes import Need, interval, write_table
from treepo_lab.analysis.tables import Table, fmt_num

K = 16
EVAL = (f"eval.k={K}", "eval.temperature=1.0")
NEEDS = [Need("treepo_fixed_init", ("eval.sampler=sequential", *EVAL), label="sequential sampling"),
         Need("treepo_fixed_init", ("eval.sampler=tree", *EVAL), label="tree sampling")]


def make(ctx):
    rows = []
    for n in NEEDS:
        g = ctx.group(n.name)
        if g is None:
            rows.append([n.name, "0"] + ["n/a"] * 4)
            continue
        tok = [ctx.series.last(r, "eval/decoded_tokens") + ctx.series.last(r, "eval/prefill_tokens") for r in g.run_ids]
        rows.append([n.name, str(g.n), interval(ctx, g, "eval/accuracy").fmt(), interval(ctx, g, f"eval/pass_at_{K}").fmt(),
                     interval(ctx, g, f"eval/maj_at_{K}").fmt(), fmt_num(sum(tok) / len(tok))])
    cols = ["inference", "seeds", "accuracy %", f"pass@{K} %", f"maj@{K} %", "eval tokens"]
    return write_table(ctx, Table(cols, rows, f"Test-time sampling at k = {K}, mean [95% bootstrap CI] over seeds."),
                       "table2_test_time")
