"""The report's tables as rows of strings, rendered to Markdown, LaTeX (booktabs) and HTML.

The summary is sorted by the objective (final held-out accuracy); against the baseline group each row
gets the difference of means with its bootstrap interval and the probability of improvement, and a
note where the 95% intervals overlap: the seeds cannot separate those two groups.
"""
from __future__ import annotations

import html

import numpy as np

from treepo_lab.analysis import stats
from treepo_lab.analysis.groups import Group, Grouping
from treepo_lab.analysis.plots_rollout import per_run
from treepo_lab.analysis.series import ACCURACY, CPU, TOKENS, WALL, Series, first_reach


TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "$": r"\$",
               "{": r"\{", "}": r"\}", "[": "{[}", "]": "{]}", "~": r"\textasciitilde{}", "^": r"\^{}"}


class Table:
    def __init__(self, columns: list[str], rows: list[list[str]], caption: str = ""):
        self.columns, self.rows, self.caption = columns, rows, caption

    def markdown(self) -> str:
        esc = lambda s: str(s).replace("|", "\\|")
        lines = ["| " + " | ".join(map(esc, self.columns)) + " |", "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(map(esc, r)) + " |" for r in self.rows]
        return "\n".join(lines)

    def latex(self) -> str:
        """booktabs, no other package needed; % and _ escaped."""
        def tex(s):
            s = "".join(TEX_ESCAPES.get(ch, ch) for ch in str(s))
            return s.replace("\u0394", r"$\Delta$")

        out = [r"\begin{table}[t]", r"\centering", r"\small"]
        if self.caption:
            out.append(rf"\caption{{{tex(self.caption)}}}")
        out += [r"\begin{tabular}{l" + "r" * (len(self.columns) - 1) + "}", r"\toprule",
                " & ".join(map(tex, self.columns)) + r" \\", r"\midrule"]
        out += [" & ".join(map(tex, r)) + r" \\" for r in self.rows]
        out += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
        return "\n".join(out)

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>" for r in self.rows)
        cap = f"<caption>{html.escape(self.caption)}</caption>" if self.caption else ""
        return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def fmt_num(v: float) -> str:
    if v is None or np.isnan(v):
        return "n/a"
    if abs(v) >= 1e4:
        return f"{v:.3g}"
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}"


def _runs_cell(g: Group) -> str:
    extra = [f"{len(g.running)} running" for _ in [0] if g.running] + [f"{len(g.pruned)} pruned" for _ in [0] if g.pruned]
    return f"{g.n}" + (f" ({', '.join(extra)})" if extra else "")


def matched_tokens(series: Series, grouping: Grouping) -> float:
    """The largest rollout-token budget that every run reached: where all groups compare at equal compute."""
    ends = [x.max() for g in grouping.groups for x, _ in (series.paired(r, ACCURACY, TOKENS) for r in g.run_ids) if len(x)]
    return min(ends) if ends else float("nan")


def _at_tokens(series: Series, g: Group, budget: float) -> list[float]:
    """Each run's held-out accuracy interpolated at `budget` rollout tokens (NaN outside what it covered)."""
    out = []
    for x, y in (series.paired(r, ACCURACY, TOKENS) for r in g.run_ids):
        out.append(float(np.interp(budget, x, y)) if len(x) and x.min() <= budget <= x.max() else float("nan"))
    return out


def summary(series: Series, grouping: Grouping, baseline: Group | None, objective: str = ACCURACY) -> Table:
    rows = []
    budget = matched_tokens(series, grouping)
    finals = {g.label: per_run(series, g, objective, "last") for g in grouping.groups}
    ivs = {k: stats.mean_interval(v) for k, v in finals.items()}
    base_iv = ivs.get(baseline.label) if baseline is not None else None
    order = sorted(grouping.groups, key=lambda g: -np.nan_to_num(ivs[g.label].mean, nan=-np.inf))
    for g in order:
        final, best = ivs[g.label], stats.mean_interval(per_run(series, g, objective, "best"))
        tokens = np.nanmean(per_run(series, g, TOKENS, "last")) if g.run_ids else np.nan
        wall = np.nanmean(per_run(series, g, WALL, "last")) if g.run_ids else np.nan
        diff, p_imp, note = "", "", []
        if baseline is not None and g.label == baseline.label:
            note.append("baseline")
        elif base_iv is not None:
            c = stats.compare(finals[g.label], finals[baseline.label])
            diff = c.diff.fmt()
            p_imp = "n/a" if np.isnan(c.p_improve) else f"{c.p_improve:.2f}"
            if final.overlaps(base_iv):
                note.append("seeds cannot separate it from the baseline")
        if final.n == 1:
            note.append("one seed")
        if g.running:
            note.append("in progress*")
        matched = stats.mean_interval(_at_tokens(series, g, budget)).fmt() if np.isfinite(budget) else "n/a"
        rows.append([g.label, _runs_cell(g), final.fmt(), best.fmt(), matched, fmt_num(tokens), fmt_num(wall), diff or "",
                     p_imp, "; ".join(note)])
    cols = ["group", "seeds", "final acc. % [95% CI]", "best acc. % [95% CI]",
            f"acc. at {fmt_num(budget)} tokens % [95% CI]", "rollout tokens", "wall s",
            f"\u0394 vs {baseline.label if baseline else 'baseline'} (pp) [95% CI]", "P(improve)", "note"]
    return Table(cols, rows, f"Sorted by final {objective}; intervals are percentile bootstraps over seeds; matched "
                             "tokens: the largest rollout-token budget every run reached, accuracy interpolated there.")


def default_levels(series: Series, grouping: Grouping, key: str = ACCURACY) -> list[float]:
    """Half, three quarters and nine tenths of the way from where the groups start (the highest
    first evaluation) to the best group's final mean accuracy."""
    groups = [g for g in grouping.groups if g.run_ids]
    finals = [np.nanmean(per_run(series, g, key, "last")) for g in groups]
    firsts = [np.nanmean([series.get(r, key)[1][0] if len(series.get(r, key)[1]) else np.nan for r in g.run_ids])
              for g in groups]
    best, start = np.nanmax(finals + [np.nan]), np.nanmax(firsts + [np.nan])
    if not np.isfinite(best) or best <= 0:
        return []
    start = start if np.isfinite(start) and start < best else 0.0
    return sorted({round(start + f * (best - start), 3) for f in (0.5, 0.75, 0.9)})


def time_to_accuracy(series: Series, grouping: Grouping, levels: list[float]) -> Table:
    """Rollout tokens and wall seconds each group needs to reach each accuracy (mean over the seeds
    that reach it, with how many did)."""
    # CPU seconds where the runs logged them: wall seconds also count whoever else used the machine
    cpu = any(series.has(r, CPU) for g in grouping.groups for r in g.run_ids)
    unit = "CPU s" if cpu else "seconds"
    cols = ["group"] + [f"tokens to {100 * a:.1f}%" for a in levels] + [f"{unit} to {100 * a:.1f}%" for a in levels]
    rows = []
    for g in grouping.groups:
        row = [g.label]
        for x_key in (TOKENS, CPU if cpu else WALL):
            curves = [series.paired(r, ACCURACY, x_key) for r in g.run_ids]
            for a in levels:
                hits = np.array([first_reach(x, y, a) for x, y in curves])
                ok = np.isfinite(hits)
                row.append(f"{fmt_num(float(hits[ok].mean()))} ({ok.sum()}/{len(hits)})" if ok.any()
                           else f"not reached (0/{len(hits)})")
        rows.append(row)
    return Table(cols, rows, "First crossing of each accuracy on the piecewise-linear curve; (k/n): seeds that reach it.")
