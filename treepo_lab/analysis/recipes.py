"""Paper-style figure recipes: one file per figure in the top-level analysis/ folder, each naming the
registry experiments it needs (`NEEDS`) and drawing them (`make(ctx)`).

`treepo-lab figures NAME` finds the runs of each need (by the `treepo.experiment` tag and the
overrides' params, in the given selection or in the whole store), notes what is missing and, with
--run-missing, trains the missing experiments first: through the sweep machinery's
`treepo_lab.sweep.run_experiments(names, seeds, overrides, tracking_uri)` where it exists, else one
after another with `treepo_lab.train.run.run_experiment`.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from treepo_lab.analysis import stats
from treepo_lab.analysis.groups import LEFT_OUT, Group, Grouping, column
from treepo_lab.analysis.runset import RunSet, load, resolve_uri
from treepo_lab.analysis.plots_curves import _label, draw_band, legend, no_data
from treepo_lab.analysis.series import Series
from treepo_lab.analysis.style import StrategyStyles, figure, save
from treepo_lab.analysis.tables import Table
from treepo_lab.registry import ConfigError
from treepo_lab.tags import EXPERIMENT_TAG, SEED_TAG


@dataclass(frozen=True)
class Need:
    """Runs of one registry experiment, with overrides that must show in their params."""
    experiment: str
    overrides: tuple[str, ...] = ()
    label: str | None = None
    style: str | None = None  # colour/marker key; default: the experiment (the same strategy everywhere)

    @property
    def name(self) -> str:
        return self.label or " ".join([self.experiment, *self.overrides])

    def matches(self, row: pd.Series, exp_col: str | None) -> bool:
        if exp_col is None or row.get(exp_col) != self.experiment:
            return False
        for o in self.overrides:
            key, value = o.split("=", 1)
            if _norm(row.get(f"params.{key}")) != _norm(value):
                return False
        return True


def _norm(v) -> str:
    s = "" if v is None or (isinstance(v, float) and pd.isna(v)) else str(v).strip().strip("'\"")
    return {"none": "null", "true": "true", "false": "false"}.get(s.lower(), s)


@dataclass
class Context:
    data: RunSet
    series: Series
    grouping: Grouping  # one group per need that has runs, in NEEDS order
    styles: StrategyStyles
    out: Path
    notes: list[str] = field(default_factory=list)

    def group(self, label: str) -> Group | None:
        return self.grouping.by_label(label)


def recipe_dir() -> Path:
    here = Path(__file__).resolve().parents[2] / "analysis"  # the checkout's analysis/
    return here if here.is_dir() else Path.cwd() / "analysis"


def names() -> list[str]:
    return sorted(p.stem for p in recipe_dir().glob("*.py") if not p.stem.startswith("_"))


def load_recipe(name: str):
    path = recipe_dir() / f"{name}.py"
    if not path.is_file():
        raise ConfigError("figures NAME", name, f"one of {', '.join(names())}")
    spec = importlib.util.spec_from_file_location(f"treepo_recipes.{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def merge(sets: list[RunSet], name: str) -> RunSet:
    runs = pd.concat([s.runs for s in sets], ignore_index=True).drop_duplicates("run_id")
    metrics = pd.concat([s.metrics for s in sets], ignore_index=True).drop_duplicates(["run_id", "key", "step", "timestamp"])
    return RunSet(name, sets[0].tracking_uri, runs.reset_index(drop=True), metrics.reset_index(drop=True), kind="runs")


def gather(needs: list[Need], selection: dict, name: str) -> RunSet:
    given = any(selection.get(k) for k in ("sweep", "experiment", "run_ids", "filter_string"))
    if given:
        return load(**selection)
    sel = {k: v for k, v in selection.items() if k in ("tracking_uri", "cache_dir")}
    sets = [load(filter_string=f"tags.`treepo.experiment` = '{e}'", **sel) for e in dict.fromkeys(n.experiment for n in needs)]
    return merge(sets, name)


def group_needs(data: RunSet, needs: list[Need]) -> tuple[Grouping, list[Need]]:
    """(groups, needs without a usable run)."""
    runs = data.runs
    exp_col = column(runs, "tags." + EXPERIMENT_TAG) if not runs.empty else None
    seed_col = column(runs, "tags." + SEED_TAG) if not runs.empty else None
    styles_used = [n.style or n.experiment for n in needs]
    groups, missing, notes = [], [], []
    for n, style in zip(needs, styles_used):
        rows = runs[[n.matches(r, exp_col) for _, r in runs.iterrows()]] if not runs.empty else runs
        failed = rows[rows["status"].isin(LEFT_OUT)] if not rows.empty else rows
        rows = rows[~rows["status"].isin(LEFT_OUT)] if not rows.empty else rows
        if len(failed):
            notes.append(f"{n.name}: {len(failed)} failed or killed run(s) left out")
        if rows.empty:
            missing.append(n)
            continue
        key = style if styles_used.count(style) == 1 else n.name
        groups.append(Group(n.name, key, list(rows["run_id"]),
                            [str(s) for s in (rows[seed_col] if seed_col else rows["run_id"])],
                            running=list(rows.loc[rows["status"].isin(("RUNNING", "SCHEDULED")), "run_id"]),
                            # runs that never logged sampler.kind (other tools' runs) are not called sequential
                            sequential="params.sampler.kind" in rows and bool((rows["params.sampler.kind"]
                                                                               == "sequential").all())))
        if len(rows) == 1:
            notes.append(f"{n.name}: one seed, no band or interval")
    return Grouping(["need"], groups, pd.DataFrame(columns=["run_name", "status", "error"]), notes), missing


def launch(needs: list[Need], seeds: int, overrides: list[str], tracking_uri: str) -> str:
    """Train the missing needs, one run after another; returns which machinery ran them."""
    from treepo_lab.config import load_config  # the trainer is only needed here (training is optional)
    from treepo_lab.train.run import run_experiment

    for n in needs:
        extra = [*n.overrides, *overrides]
        for seed in range(seeds):
            print(f"figures: training {n.experiment} seed {seed} {' '.join(extra)}", file=sys.stderr, flush=True)
            run_experiment(load_config(n.experiment, [*extra, f"seed={seed}", f"tracking.tracking_uri={tracking_uri}"]))
    return "run_experiment, sequentially"


def run_recipe(name: str, selection: dict, run_missing: bool = False, seeds: int = 2, overrides: list[str] | None = None,
               out_dir: Path | None = None) -> tuple[list[Path], list[str]]:
    recipe = load_recipe(name)
    needs: list[Need] = list(recipe.NEEDS)
    selection = dict(selection, tracking_uri=resolve_uri(selection.get("tracking_uri")))
    data = gather(needs, selection, name)
    grouping, missing = group_needs(data, needs)
    notes = list(grouping.notes)
    if missing and run_missing:
        how = launch(missing, seeds, list(overrides or []), selection["tracking_uri"])
        trained = f"trained {len(missing)} missing need(s) x {seeds} seeds with {how}"
        plain = {k: v for k, v in selection.items() if k in ("tracking_uri", "cache_dir")}
        data = merge([data, gather(missing, plain, name)], name) if len(data.runs) else gather(needs, plain, name)
        grouping, missing = group_needs(data, needs)
        notes = [trained, *grouping.notes]
    for n in missing:
        notes.append(f"no runs of {n.name}" + ("" if run_missing else " (add --run-missing to train it)"))
    out = out_dir or Path("reports") / "figures"
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(data, Series(data), grouping, StrategyStyles(), out, notes)
    written = recipe.make(ctx) if grouping.groups else []
    return written, ctx.notes


# ---- helpers the recipes share ---------------------------------------------------------------------

def curves(ctx: Context, panels: list[tuple[str, str]], stem: str, title: str = "", columns: int | None = None) -> list[Path]:
    """One panel per (metric, y label), one line + 95% band per group over training steps."""
    cols = columns or (1 if len(panels) == 1 else 2)
    fig, axes = figure(cols, 2.5, ncols=len(panels))
    for ax, (key, ylabel) in zip(axes[0], panels):
        drawn = 0
        for g in ctx.grouping.groups:
            steps, mat = ctx.series.matrix(g, key)
            if len(steps):
                draw_band(ax, steps, mat, ctx.styles, g.style_key, _label(g))
                drawn += 1
        if not drawn:
            ctx.notes.append(f"{stem}: no run logged {key}")
            no_data(ax, key)
        ax.set_xlabel("training step")
        ax.set_ylabel(ylabel)
    if title:
        fig.suptitle(title)
    legend(fig, axes)
    return save(fig, ctx.out / stem)


def interval(ctx: Context, g: Group, key: str, how: str = "last") -> stats.Interval:
    f = {"last": ctx.series.last, "best": ctx.series.best, "mean": ctx.series.mean}[how]
    return stats.mean_interval([f(r, key) for r in g.run_ids])


def write_table(ctx: Context, table: Table, stem: str) -> list[Path]:
    md, tex = ctx.out / f"{stem}.md", ctx.out / f"{stem}.tex"
    md.write_text(table.markdown() + ("\n\n*" + table.caption + "*\n" if table.caption else "\n"))
    tex.write_text(table.latex() + "\n")
    return [md, tex]
