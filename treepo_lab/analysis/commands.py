"""`treepo-lab report | export | figures`: the command-line side of treepo_lab.analysis.

    treepo-lab report --sweep demo
    treepo-lab report --experiment example --group-by treepo.experiment --baseline grpo --out reports/x
    treepo-lab export --sweep demo --format parquet --out demo.parquet
    treepo-lab figures fig1 [--sweep NAME | --runs ID ...] [--run-missing] [key=value ...]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from treepo_lab.analysis import recipes, runs_table
from treepo_lab.analysis.runset import export, load
from treepo_lab.analysis.report import build_report


def _selection(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_mutually_exclusive_group(required=required)
    g.add_argument("--sweep", metavar="NAME", help="a sweep (its MLflow experiment / parent run)")
    g.add_argument("--experiment", metavar="NAME", help="an MLflow experiment")
    g.add_argument("--runs", metavar="ID", nargs="+", help="MLflow run ids")
    g.add_argument("--filter", metavar="STRING", help="an MLflow search filter, e.g. \"tags.`sampler.kind` = 'tree'\"")
    p.add_argument("--tracking-uri", metavar="URI", help="MLflow store (default: $MLFLOW_TRACKING_URI, else ./mlflow.db)")
    p.add_argument("--no-cache", action="store_true", help="refetch every metric history (no on-disk cache)")


def _select_kwargs(a) -> dict:
    return {"sweep": a.sweep, "experiment": a.experiment, "run_ids": a.runs, "filter_string": a.filter,
            "tracking_uri": a.tracking_uri, "cache_dir": False if a.no_cache else None}


def cmd_report(args: list[str]) -> None:
    p = argparse.ArgumentParser(prog="treepo-lab report", description="Comparison report: report.md, a "
                                "self-contained report.html and every figure as PNG + PDF.")
    _selection(p, required=False)  # or --from-csv
    p.add_argument("--group-by", metavar="KEY", nargs="+", help="tags/params to group runs by "
                   "(default: the sweep's trials, else treepo.strategy or treepo.experiment)")
    p.add_argument("--baseline", metavar="GROUP", help="the group others are compared against "
                   "(default: the sequential-sampling group)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: reports/<name>/)")
    p.add_argument("--no-log", action="store_true", help="do not log the report to the sweep's parent run")
    p.add_argument("--from-csv", metavar="RUNS_CSV", help="rebuild the report from the runs.csv a report wrote "
                   "(held-out curves and their costs; no MLflow store needed)")
    a = p.parse_args(args)
    kw = _select_kwargs(a)
    chosen = [k for k in ("sweep", "experiment", "run_ids", "filter_string") if kw[k]]
    if bool(chosen) == bool(a.from_csv):
        p.error("one of the arguments --sweep --experiment --runs --filter --from-csv is required")
    data = None
    if a.from_csv:
        table = runs_table.read(a.from_csv)
        data = runs_table.to_runset(table, Path(a.from_csv).parent.name or "runs", f"`{Path(a.from_csv).name}`")
    res = build_report(sweep=kw["sweep"], experiment=kw["experiment"], runs=kw["run_ids"],
                       filter_string=kw["filter_string"], tracking_uri=kw["tracking_uri"], group_by=a.group_by,
                       baseline=a.baseline, out_dir=a.out, log_to_parent=not a.no_log, cache_dir=kw["cache_dir"],
                       progress=True, data=data)
    print(f"report: {res.markdown}\n        {res.html}  ({len(res.figures) // 2} figures as PNG + PDF in "
          f"{res.out_dir / 'figures'})")
    print(f"groups: {', '.join(res.groups) or 'none'}")
    if res.left_out:
        print(f"left out (failed/killed): {', '.join(res.left_out)}")
    if res.parent_run_id:
        print(f"logged to the sweep's parent run {res.parent_run_id} (artifacts: report/)")


def cmd_export(args: list[str]) -> None:
    p = argparse.ArgumentParser(prog="treepo-lab export", description="Full metric histories in long format: "
                                "one row per run x metric x step, params and tags joined.")
    _selection(p)
    p.add_argument("--format", choices=("csv", "parquet"), default=None, help="default: from --out's suffix, else csv")
    p.add_argument("--out", metavar="FILE", help="default: reports/<name>/<name>.<format>")
    a = p.parse_args(args)
    data = load(**_select_kwargs(a))
    fmt = a.format or (Path(a.out).suffix.lstrip(".") if a.out and Path(a.out).suffix else "csv")
    out = Path(a.out) if a.out else Path("reports") / data.name / f"{data.name}.{fmt}"
    path = export(data, out, fmt)
    print(f"wrote {len(data.metrics)} rows ({len(data.runs)} runs, {data.metrics['key'].nunique()} metrics) to {path}")


def cmd_figures(args: list[str]) -> None:
    names = recipes.names()
    p = argparse.ArgumentParser(prog="treepo-lab figures", description="Paper-style figures and tables "
                                "(recipes in analysis/), PNG + PDF, tables as Markdown + LaTeX booktabs.")
    p.add_argument("name", choices=names + ["all"], metavar="NAME", help=f"one of: {', '.join(names)}, all")
    _selection(p, required=False)
    p.add_argument("--run-missing", action="store_true", help="train the registry experiments a recipe lacks first")
    p.add_argument("--seeds", type=int, default=2, help="seeds per missing experiment (with --run-missing)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: reports/figures/)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides for the runs --run-missing starts")
    a = p.parse_args(args)
    todo = names if a.name == "all" else [a.name]
    for name in todo:
        written, notes = recipes.run_recipe(name, selection=_select_kwargs(a), run_missing=a.run_missing,
                                            seeds=a.seeds, overrides=a.overrides,
                                            out_dir=Path(a.out) if a.out else None)
        for n in notes:
            print(f"{name}: note: {n}", file=sys.stderr)
        print(f"{name}: " + (", ".join(str(w) for w in written) if written else "nothing written"))


COMMANDS = {"report": cmd_report, "export": cmd_export, "figures": cmd_figures}
