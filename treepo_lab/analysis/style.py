"""One look for every figure: a colour-blind-safe palette (Okabe & Ito), one colour and marker per
strategy in every figure, journal column widths, fonts readable at print size, vector PDF with
embedded TrueType fonts and no LaTeX installation (matplotlib's own mathtext only).
"""
from __future__ import annotations

import itertools

import matplotlib

matplotlib.use("Agg")  # files only; never open a window (also safe in worker processes)
import matplotlib.pyplot as plt  # noqa: E402

# Okabe & Ito (2008), "Color Universal Design": distinguishable with every common colour-vision deficiency
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")

SINGLE_COLUMN_IN = 3.4  # one column of a two-column paper (ICML/NeurIPS/IEEE ~3.25-3.5 in)
DOUBLE_COLUMN_IN = 7.0  # full text width
DPI = 200  # PNG resolution: a single-column figure is 680 px wide

# The registry's experiments in a fixed order, so a strategy keeps its colour and marker in every
# report and recipe whatever else is plotted beside it (the paper's Table 1 rows first).
STRATEGY_ORDER = (
    "grpo", "grpo_tree_sampling", "treepo_fixed_init", "treepo_more_init",
    "adv_group_size", "adv_subgroup_rejection", "adv_no_root",
    "seg_16x8", "seg_8x16", "seg_4x32", "seg_2x64",
    "low_prob_encourage", "high_prob_encourage", "naive2low_schedule",
    "fallback_misaligned", "no_fallback", "entropy_branching", "default", "demo",
    "treerl", "treerpo", "spo_tree", "latr",  # the other tree methods (treepo_lab/methods/, sweeps/methods.yaml)
)
_STYLES = list(itertools.product(range(len(PALETTE)), range(len(MARKERS))))
# walk the (colour, marker) grid diagonally so neighbours in the order differ in both
_STYLES.sort(key=lambda cm: ((cm[1] - cm[0]) % len(MARKERS), cm[0]))

RC = {
    "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "legend.fontsize": 7,
    "xtick.labelsize": 7, "ytick.labelsize": 7, "lines.linewidth": 1.3, "lines.markersize": 3.5,
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
    "grid.linewidth": 0.5, "legend.frameon": False, "savefig.dpi": DPI, "figure.dpi": DPI,
    "pdf.fonttype": 42, "ps.fonttype": 42, "svg.fonttype": "none", "text.usetex": False,
    "axes.prop_cycle": matplotlib.cycler(color=PALETTE),
}
plt.rcParams.update(RC)


class StrategyStyles:
    """Colour and marker per strategy key: registry experiments get their fixed slot, other keys
    the next free slot in order of first use (stable within one report)."""

    def __init__(self):
        self._extra: dict[str, int] = {}

    def slot(self, key: str) -> int:
        if key in STRATEGY_ORDER:
            return STRATEGY_ORDER.index(key)
        if key not in self._extra:
            self._extra[key] = len(STRATEGY_ORDER) + len(self._extra)
        return self._extra[key]

    def color(self, key: str) -> str:
        return PALETTE[_STYLES[self.slot(key) % len(_STYLES)][0]]

    def marker(self, key: str) -> str:
        return MARKERS[_STYLES[self.slot(key) % len(_STYLES)][1]]

    def kw(self, key: str) -> dict:
        return {"color": self.color(key), "marker": self.marker(key)}


def figure(columns: int = 1, height_in: float | None = None, nrows: int = 1, ncols: int = 1, **kw):
    """A figure exactly one or two columns wide (constrained layout keeps the size; no tight bbox)."""
    width = SINGLE_COLUMN_IN if columns == 1 else DOUBLE_COLUMN_IN
    height = height_in if height_in is not None else (2.4 if columns == 1 else 2.3) * (nrows if nrows > 1 else 1)
    return plt.subplots(nrows, ncols, figsize=(width, height), layout="constrained", squeeze=False, **kw)


def pixel_size(fig) -> tuple[int, int]:
    """(width, height) in pixels of the PNG `save` writes for this figure."""
    w, h = fig.get_size_inches()
    return round(w * DPI), round(h * DPI)


def save(fig, path_stem) -> list:
    """Write <stem>.png and <stem>.pdf (vector) and close the figure; returns both paths."""
    from pathlib import Path

    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    fig.savefig(out[0], dpi=DPI)
    fig.savefig(out[1])
    plt.close(fig)
    return out
