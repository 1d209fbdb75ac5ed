"""Fig. 9: test-time compute (paper Fig. 9): held-out accuracy against the evaluation's compute
(decoded + prefill tokens) for tree sampling with branch factor b in {2, 4, 8} and sequential sampling,
each at k in {4, 16} samples per problem (one point per k, joined per sampler)."""
import numpy as np

from treepo_lab.analysis.plots_curves import legend
from treepo_lab.analysis.recipes import Need, interval
from treepo_lab.analysis.style import figure, save

KS = (4, 16)
EVAL = ("eval.temperature=1.0",)
SAMPLERS = [(f"tree b={b}", ("eval.sampler=tree", f"sampler.branch={b}"), "treepo_fixed_init") for b in (2, 4, 8)] + \
           [("sequential", ("eval.sampler=sequential",), "grpo")]
NEEDS = [Need("treepo_fixed_init", (*over, f"eval.k={k}", *EVAL), label=f"{name} k={k}", style=style)
         for name, over, style in SAMPLERS for k in KS]


def make(ctx):
    fig, axes = figure(1, 2.6)
    ax = axes[0, 0]
    for name, _, style in SAMPLERS:
        pts = []
        for k in KS:
            g = ctx.group(f"{name} k={k}")
            if g is None:
                continue
            tok = np.array([ctx.series.last(r, "eval/decoded_tokens") + ctx.series.last(r, "eval/prefill_tokens")
                            for r in g.run_ids])
            pts.append((np.nanmean(tok), interval(ctx, g, "eval/accuracy")))
        if not pts:
            continue
        key = style if name in ("tree b=4", "sequential") else name  # b=4 is TreePO's default colour
        kw = ctx.styles.kw(key)
        xs, ys = [p[0] for p in pts], [p[1].mean for p in pts]
        ax.plot(xs, ys, label=name, **kw)
        for x, iv in pts:
            if np.isfinite(iv.low):
                ax.errorbar(x, iv.mean, yerr=[[iv.mean - iv.low], [iv.high - iv.mean]], color=kw["color"], capsize=1.5)
    ax.set_xscale("log")
    ax.set_xlabel("evaluation tokens (decoded + prefill)")
    ax.set_ylabel("held-out accuracy")
    legend(fig, axes)
    return save(fig, ctx.out / "fig9_test_time_compute")
