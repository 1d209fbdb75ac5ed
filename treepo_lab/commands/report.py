"""`treepo-lab report`: the comparison report of runs (Markdown, self-contained HTML, PNG + PDF figures), from
MLflow or from the runs.csv a report wrote.

    treepo-lab report --sweep demo
    treepo-lab report --experiment example --group-by treepo.experiment --baseline grpo --out reports/x
"""
from __future__ import annotations

import argparse
from pathlib import Path

from treepo_lab.commands.base import Command
from treepo_lab.commands.selection import add_selection, select_kwargs


def run(own, overrides, args: list[str]) -> None:
    p = argparse.ArgumentParser(prog="treepo-lab report", description="Comparison report: report.md, a "
                                "self-contained report.html and every figure as PNG + PDF.")
    add_selection(p, required=False)  # or --from-csv
    p.add_argument("--group-by", metavar="KEY", nargs="+", help="tags/params to group runs by "
                   "(default: the sweep's trials, else treepo.strategy or treepo.experiment)")
    p.add_argument("--baseline", metavar="GROUP", help="the group others are compared against "
                   "(default: the sequential-sampling group)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: reports/<name>/)")
    p.add_argument("--no-log", action="store_true", help="do not log the report to the sweep's parent run")
    p.add_argument("--from-csv", metavar="RUNS_CSV", help="rebuild the report from the runs.csv a report wrote "
                   "(held-out curves and their costs; no MLflow store needed)")
    a = p.parse_args(args)
    from treepo_lab.analysis import runs_table
    from treepo_lab.analysis.report import build_report

    kw = select_kwargs(a)
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


COMMAND = Command(run, "comparison report of runs: Markdown, self-contained HTML, PNG + PDF figures",
                  "treepo-lab report --sweep NAME | --experiment NAME | --runs ID ... [--group-by KEY ...] "
                  "[--baseline GROUP] [--out DIR]", raw=True, own_help=True)
