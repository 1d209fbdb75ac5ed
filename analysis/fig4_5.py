"""Fig. 4-5: sampling efficiency of tree sampling against sequential sampling at the same settings,
from the rollout measurements every training run logs to MLflow: token saving (against independent
sampling and against the sequential sampler), TrajPS and TokenPS ratios (tree / sequential),
Fig. 4 against the tree depth at a constant budget d x l = 128, Fig. 5 against the number of rollouts."""
import numpy as np

from treepo_lab.analysis.recipes import Need, interval
from treepo_lab.analysis.style import figure, save

SHAPES = [(16, 8), (8, 16), (4, 32), (2, 64)]
WIDTHS = [4, 8, 16]


def _shape(d, l):
    return (f"sampler.max_depth={d}", f"sampler.segment_len={l}")


NEEDS = ([Need(f"seg_{d}x{l}", label=f"tree {d}x{l}") for d, l in SHAPES]
         + [Need("grpo", _shape(d, l), label=f"sequential {d}x{l}") for d, l in SHAPES]
         + [Need("treepo_fixed_init", (f"sampler.width={w}",), label=f"tree w={w}") for w in WIDTHS]
         + [Need("grpo", (f"sampler.width={w}",), label=f"sequential w={w}") for w in WIDTHS])

PANELS = [("rollout/token_saving", "token saving vs\nindependent", False),
          ("rollout/token_saving_vs_sequential", "token saving vs\nsequential", False),
          ("rollout/traj_per_s", "TrajPS ratio\n(tree / sequential)", True),
          ("rollout/tokens_per_s", "TokenPS ratio\n(tree / sequential)", True)]


def _figure(ctx, xs, tree_labels, seq_labels, xlabel, stem):
    fig, axes = figure(2, 2.3, ncols=4)
    kw = ctx.styles.kw("treepo_fixed_init")
    for ax, (key, ylabel, ratio) in zip(axes[0], PANELS):
        ys, lo, hi = [], [], []
        for t, s in zip(tree_labels, seq_labels):
            gt, gs = ctx.group(t), ctx.group(s)
            it = interval(ctx, gt, key, "mean") if gt else None
            base = interval(ctx, gs, key, "mean").mean if (gs and ratio) else 1.0
            if it is None or not np.isfinite(it.mean) or not np.isfinite(base) or base == 0:
                ys.append(np.nan), lo.append(np.nan), hi.append(np.nan)
                continue
            ys.append(it.mean / base), lo.append(it.low / base), hi.append(it.high / base)
        ys, lo, hi = map(np.array, (ys, lo, hi))
        ok = np.isfinite(ys)
        if not ok.any():
            ctx.notes.append(f"{stem}: no {key} for these settings")
        ax.plot(np.array(xs)[ok], ys[ok], **kw)
        band = ok & np.isfinite(lo)
        if band.any():
            ax.fill_between(np.array(xs)[band], lo[band], hi[band], color=kw["color"], alpha=0.2, linewidth=0)
        if ratio:
            ax.axhline(1.0, color="0.3", linewidth=0.7, linestyle="--")
        ax.set_xticks(xs)
        ax.set_xlabel(xlabel)
        ax.set_title(ylabel)
    return save(fig, ctx.out / stem)


def make(ctx):
    out = _figure(ctx, [d for d, _ in SHAPES], [f"tree {d}x{l}" for d, l in SHAPES],
                  [f"sequential {d}x{l}" for d, l in SHAPES], "tree depth d (d x l = 128)", "fig4_efficiency_vs_depth")
    out += _figure(ctx, WIDTHS, [f"tree w={w}" for w in WIDTHS], [f"sequential w={w}" for w in WIDTHS],
                   "rollouts per prompt", "fig5_efficiency_vs_rollouts")
    return out
