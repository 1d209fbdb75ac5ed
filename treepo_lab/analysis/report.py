"""The comparison report: `build_report(sweep=... | experiment=... | runs=[...])` writes
<out>/report.md, a self-contained <out>/report.html and every figure as PNG + PDF under <out>/figures,
and logs all of it to the sweep's parent run when there is one.

Incomplete data is normal: failed and killed runs are left out and listed, runs in progress are marked
with *, missing metrics are noted where a section needed them, a one-seed group gets no band.
"""
from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from mlflow import MlflowClient

from treepo_lab.analysis import optuna_view, plots_curves, plots_rollout, tables, trees
from treepo_lab.analysis.groups import Group, Grouping, group_runs
from treepo_lab.analysis import endpoints, runs_table
from treepo_lab.analysis.runset import RunSet, default_cache_dir, load, store_name
from treepo_lab.analysis.page import Section, markdown, page
from treepo_lab.analysis.series import ACCURACY, DECODED, WALL, Series
from treepo_lab.analysis.style import StrategyStyles
from treepo_lab.track.tree_drawing import tree_svg
from treepo_lab.registry import ConfigError
from treepo_lab.tags import SEED_TAG

# metrics a section needs: a run without one is listed under "missing metrics"
EXPECTED = (ACCURACY, DECODED, WALL, plots_rollout.SAVING, plots_rollout.SAVING_SEQ, plots_rollout.TRAJ_PS,
            plots_rollout.TOKEN_PS, *(k for k, _ in plots_curves.DYNAMICS))


@dataclass
class ReportResult:
    out_dir: Path
    markdown: Path
    html: Path
    figures: list[Path]  # every PNG and PDF written
    notes: list[str]
    groups: list[str]
    left_out: list[str]  # names of failed / killed runs
    parent_run_id: str | None = None  # where the report was logged, if anywhere
    seconds: dict = field(default_factory=dict)

    def __str__(self) -> str:  # what a caller prints: the page to open
        return str(self.html)


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "report"


def pick_baseline(grouping: Grouping, baseline: str | None) -> Group | None:
    """The named group; by default the sequential-sampling group (GRPO's), if there is exactly one."""
    if baseline is not None:
        g = grouping.by_label(baseline)
        if g is None:
            raise ConfigError("--baseline", baseline, f"one of the groups: {', '.join(x.label for x in grouping.groups)}")
        return g
    seq = [g for g in grouping.groups if g.sequential]
    return seq[0] if len(seq) == 1 else None


def missing_metrics(data: RunSet, series: Series, grouping: Grouping) -> list[str]:
    notes = []
    names = dict(zip(data.runs["run_id"], data.runs["run_name"]))
    kept = [r for g in grouping.groups for r in g.run_ids]
    for key in EXPECTED:
        lacking = [names[r] for r in kept if not series.has(r, key)]
        if kept and len(lacking) == len(kept):
            notes.append(f"`{key}` is not logged by any run")
        elif lacking:
            notes.append(f"`{key}` is missing in {len(lacking)} run(s): {', '.join(lacking[:6])}"
                         + (" ..." if len(lacking) > 6 else ""))
    return notes


def _runs_table(data: RunSet, grouping: Grouping) -> tables.Table:
    label = {r: g.label for g in grouping.groups for r in g.run_ids}
    running = {r for g in grouping.groups for r in g.running}
    seed_col = next((c for c in ("tags." + SEED_TAG, "params.seed") if c in data.runs.columns), None)
    rows = []
    for _, r in data.runs.iterrows():
        rid = r["run_id"]
        rows.append([label.get(rid, "(left out)"), str(r["run_name"]) + ("*" if rid in running else ""),
                     str(r[seed_col]) if seed_col else "", r["status"], rid])
    rows.sort(key=lambda x: (x[0], x[1]))
    return tables.Table(["group", "run", "seed", "status", "run id"], rows)


def build_report(*, sweep: str | None = None, experiment: str | None = None, runs: list[str] | None = None,
                 filter_string: str | None = None, tracking_uri: str | None = None,
                 group_by: list[str] | None = None, baseline: str | None = None,
                 out_dir: str | Path | None = None, name: str | None = None, log_to_parent: bool = True,
                 cache_dir: str | Path | bool | None = None, progress: bool = False,
                 study=None, data: RunSet | None = None) -> ReportResult:
    """Build the comparison report of one selection (exactly one of sweep / experiment / runs /
    filter_string). Returns where everything went. Raises ConfigError for a selection or baseline that
    does not exist; never for incomplete data.

    `study`: the sweep's optuna.Study when the caller has it open (the sweep at its end); otherwise it is
    opened from the parent run's tags treepo.optuna_storage + treepo.study, or skipped with a note.
    `data`: the runs already loaded (or rebuilt from a runs.csv: runs_table.to_runset) instead of a selection.
    The report's runs table is written beside it as runs.csv."""
    say = (lambda msg: print(f"report: {msg}", file=sys.stderr, flush=True)) if progress else (lambda msg: None)
    t0 = time.perf_counter()
    # a line every tenth of the runs, not one per run
    show = (lambda done, total: say(f"loaded {done}/{total} runs") if done == total or done % max(1, total // 10) == 0
            else None) if progress else None
    if data is None:
        data = load(sweep=sweep, experiment=experiment, filter_string=filter_string, run_ids=runs,
                    tracking_uri=tracking_uri, cache_dir=cache_dir, progress=show)
    t_load = time.perf_counter() - t0
    name = safe_name(name or data.name)
    out = Path(out_dir) if out_dir is not None else Path("reports") / name
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    series = Series(data)
    grouping = group_runs(data, group_by)
    base = pick_baseline(grouping, baseline)
    styles = StrategyStyles()
    notes = list(data.notes) + list(grouping.notes)
    written: list[Path] = []
    sections: list[Section] = []

    src = {"sweep": f"sweep `{data.name}`", "experiment": f"MLflow experiment `{data.name}`",
           "filter": "a search filter", "runs": "the given run ids", "csv": "a runs table"}[data.kind]
    where = data.tracking_uri if data.tracking_uri.startswith("`") else f"`{store_name(data.tracking_uri)}`"
    head = Section("What this compares", [
        f"{len(data.runs)} runs from {src} in {where}, grouped by `{' + '.join(grouping.keys)}` into "
        f"{len(grouping.groups)} groups; baseline: {('`' + base.label + '`') if base else 'none (pass --baseline GROUP)'}. "
        "Intervals are 95% percentile bootstraps over seeds (runs).",
        f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')}" + (f"; sweep parent run `{data.parent.info.run_id}`"
                                                              if data.parent else "") + "."])
    sections.append(head)
    say("figures")
    if grouping.groups:
        summary = tables.summary(series, grouping, base)
        sections.append(Section("Summary", tables=[summary]))
        f = plots_curves.accuracy_vs_step(series, grouping, styles, fig_dir, notes)
        written += f
        sections.append(Section("Held-out accuracy vs training step", figures=[(f[0], "mean over seeds with a 95% "
                                "bootstrap band; one-seed groups: the line only")]))
        f = plots_curves.compute_matched(series, grouping, styles, fig_dir, notes)
        written += f
        levels = tables.default_levels(series, grouping)
        sec = Section("Compute-matched view", figures=[(f[0], "accuracy interpolated at budgets every run reached: "
                      "rollout tokens (decoded + prefill) and wall time")])
        if levels:
            sec.tables.append(tables.time_to_accuracy(series, grouping, levels))
        else:
            sec.notes.append("no group has a positive final accuracy: no time-to-accuracy table")
        sections.append(sec)
        f = plots_rollout.pareto(series, grouping, styles, fig_dir, notes)
        written += f
        front = [p["group"].label for p in plots_rollout.pareto_points(series, grouping) if p["front"]]
        sections.append(Section("Pareto front: final accuracy vs rollout compute",
                                [f"On the front: {', '.join(front) or 'none'}."], figures=[(f[0], "means over seeds "
                                "with 95% intervals; black edge: not dominated")]))
        f = plots_rollout.efficiency(series, grouping, styles, fig_dir, notes, base if base and base.sequential else None)
        written += f
        sections.append(Section("Rollout efficiency", [
            "`rollout/token_saving`: 1 - (decoded + prefill) / the same for independent sampling of the same leaves; "
            "`rollout/token_saving_vs_sequential`: against the sequential sampler on the same engine (prompt prefill "
            "shared once). TrajPS = `rollout/traj_per_s`, TokenPS = `rollout/tokens_per_s`, as ratios to the "
            "sequential group (error bars: the group's interval over the baseline's mean)."],
            figures=[(f[0], "per-step values averaged over training, then over seeds")]))
        f = plots_curves.dynamics(series, grouping, styles, fig_dir, notes)
        written += f
        sections.append(Section("Training dynamics", figures=[(f[0], "response length, policy entropy, PPO clip fraction")]))
        f = plots_rollout.tree_shape(series, grouping, styles, fig_dir, notes, data.keys())
        written += f
        sections.append(Section("Tree shape", figures=[(f[0], "leaf depth histogram, branches per active path, "
                                                              "prompts with a fallback, finish reasons")]))
        say("trees")
        if data.kind == "csv":  # held-out curves only: the trees live in the MLflow store
            sections.append(Section("One sampled tree per group", notes=["not in a runs.csv: build the report "
                                                                         "from the MLflow store to draw trees"]))
        else:
            sections.append(_tree_section(data, grouping, fig_dir, cache_dir, written))
    else:
        notes.append("no run to compare: every selected run failed or was killed" if len(data.runs) else "no runs selected")
    if data.kind == "sweep" or study is not None:
        sections.append(_optuna_section(data, fig_dir, written, study))
    miss = missing_metrics(data, series, grouping)
    table = runs_table.build(data, series=series)[0]  # the held-out curves, written beside the report as runs.csv
    overlap = endpoints.overlapping_pairs(table)
    if overlap:
        miss.append(f"{overlap} pairs of runs of different experiments trained at the same time on one host: their "
                    "wall times share the machine's load; compare costs in rollout tokens or CPU seconds (time/cpu_s)")
    sec = Section("Incomplete data", notes=notes + miss or ["none: every run finished and logged every metric"])
    if len(grouping.left_out):
        sec.tables.append(tables.Table(["run", "status", "error"], [[r.run_name, r.status, r.error[:200]]
                                                                   for r in grouping.left_out.itertuples()],
                                       "left out of every figure and table"))
    sections.insert(1, sec)
    sections.append(Section("Runs", tables=[_runs_table(data, grouping)]))
    title = f"Comparison report: {data.name}"
    md_path, html_path = out / "report.md", out / "report.html"
    runs_table.write(table, out / "runs.csv")  # what `report --from-csv` rebuilds it from
    md_path.write_text(markdown(title, sections, out))
    html_path.write_text(page(title, sections))
    parent_id = None
    if log_to_parent and data.parent is not None and data.kind == "sweep":
        parent_id = data.parent.info.run_id
        MlflowClient(data.tracking_uri).log_artifacts(parent_id, str(out), "report")
    say(f"wrote {html_path}")
    return ReportResult(out, md_path, html_path, written, notes + miss, [g.label for g in grouping.groups],
                        list(grouping.left_out["run_name"]), parent_id,
                        {"load": t_load, "total": time.perf_counter() - t0})


def _tree_section(data: RunSet, grouping: Grouping, fig_dir: Path, cache_dir, written: list[Path]) -> Section:
    sec = Section("One sampled tree per group", ["Nodes coloured by the mean reward of the leaves below them "
                                                 "(PNG/PDF: cividis, dark = 0, yellow = 1; the drawings in "
                                                 "report.html: the tracker's red-to-green scale, segment text on "
                                                 "hover)."])
    client = MlflowClient(data.tracking_uri)
    base = Path(cache_dir) if cache_dir not in (None, False, True) else default_cache_dir()
    tree_dir = fig_dir.parent / "trees"
    for g in grouping.groups:
        finished = [r for r in g.run_ids if r not in g.running] or g.run_ids
        # two tries per group: runs of one group log trees alike, and each listing is a store round trip
        got = next((t for t in (trees.fetch_tree(client, r, base) for r in finished[:2]) if t is not None), None)
        if got is None:
            sec.notes.append(f"group {g.label!r}: no run logged a tree (trees/*.json)")
            continue
        tree, path = got
        stem = "tree_" + safe_name(g.label)
        f = trees.tree_figure(tree, f"{g.label} ({path})", fig_dir / stem)
        written += f
        svg = tree_svg(tree)
        tree_dir.mkdir(parents=True, exist_ok=True)
        (tree_dir / f"{stem}.svg").write_text(svg)
        sec.figures.append((f[0], f"{g.label}: first tree of {path}"))
        sec.svgs.append((svg, f"{g.label}: {path} (hover for segment text)"))
    return sec


def _optuna_section(data: RunSet, fig_dir: Path, written: list[Path], study=None) -> Section:
    sec = Section("Optuna: optimisation history and parameter importances")
    why = ""
    if study is None:
        study, why = optuna_view.open_study(data.parent)
    if study is None:
        sec.notes.append(f"skipped: {why}")
        return sec
    for fn, cap in ((optuna_view.history, "objective per completed trial and the best so far"),
                    (optuna_view.importances, "fANOVA importance of each searched parameter")):
        f = fn(study, fig_dir, sec.notes)
        written += f
        if f:
            sec.figures.append((f[0], cap))
    return sec


