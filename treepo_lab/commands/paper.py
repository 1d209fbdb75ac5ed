"""`treepo-lab paper`: run (or resume) the experiments behind the paper's findings, then write the findings
report (the logic: treepo_lab/sweep/paper.py)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from treepo_lab.commands.base import Command

ROOT = Path(__file__).resolve().parents[2]  # the source tree (sweeps/, analysis/)


def _default(rel: str) -> str:
    """A file of the source tree when running from it, else the path as given (relative to the cwd)."""
    p = ROOT / rel
    return str(p) if p.is_file() else rel


def parse(args: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="treepo-lab paper", description="run (or resume) the experiments behind the "
                                "paper's findings and write the findings report")
    p.add_argument("--spec", default=_default("sweeps/paper.yaml"), help="the sweep spec (default sweeps/paper.yaml)")
    p.add_argument("--findings", default=_default("analysis/findings.yaml"), help="the findings (default analysis/findings.yaml)")
    p.add_argument("--only", nargs="+", default=None, metavar="ID", help="test only these findings (their experiments only)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per experiment (default: the spec's)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--out", default="reports/paper", help="report folder (default reports/paper)")
    p.add_argument("--storage", default=None, help="Optuna storage (default: the journal beside the MLflow store)")
    p.add_argument("--tracking-uri", default=None, help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    p.add_argument("--report-only", action="store_true", help="only the report, from what MLflow holds")
    p.add_argument("--from-csv", metavar="RUNS_CSV", help="with --report-only: the report from a runs.csv another "
                   "report wrote (no MLflow store needed)")
    p.add_argument("overrides", nargs="*", help="key=value for every run (trainer.steps=30), sweep.<field>=value")
    from treepo_lab.overrides import parse_with_overrides

    return parse_with_overrides(p, args)  # options and overrides in any order; --only never takes a key=value


def paper(args: list[str], out=None) -> int:
    from treepo_lab.analysis import findings as fnd
    from treepo_lab.analysis import runs_table
    from treepo_lab.analysis.runset import load, store_name
    from treepo_lab.sweep import driver
    from treepo_lab.sweep.paper import portable, select, sweep_args, write_report
    from treepo_lab.sweep.spec import load_spec

    out = out or sys.stdout
    a = parse(args)
    found = select(a)
    if a.from_csv:
        table = runs_table.read(a.from_csv)  # checked before anything is written
        path = write_report("paper", found, table, Path(a.out), f"`{Path(a.from_csv).name}`", [])
        print(f"paper report: {path}", file=out)
        return 0
    spec = load_spec(a.spec, sweep_args(a, found))
    status = "report-only"
    if not a.report_only:
        summary = driver.run_sweep(a.spec, sweep_args(a, found), a.workers, a.storage, a.tracking_uri, out=out)
        status = summary["status"]
    uri = driver.prepare(a.spec, sweep_args(a, found), a.storage, a.tracking_uri)[1]
    data = load(sweep=spec.name, tracking_uri=uri, cache_dir=False)
    table, notes = runs_table.build(data, fnd.fire_metrics(found), fnd.selected_keys(found))
    budget = ", ".join(map(portable, spec.overrides)) or "the registry defaults"
    notes.insert(0, f"Budget (overrides of every run): `{budget}`.")
    path = write_report(spec.name, found, table, Path(a.out), f"sweep `{spec.name}` in `{store_name(uri)}`", notes,
                        data)
    print(f"paper report: {path}", file=out)
    return {"finished": 0, "report-only": 0, "interrupted": 130}.get(status, 1)


COMMAND = Command(lambda own, overrides, raw: paper(raw),
                  "the paper's findings reproduced or refuted: runs (or resumes) sweeps/paper.yaml, writes reports/paper",
                  "treepo-lab paper [--workers 2] [--seeds N] [--only ID ...] [--out DIR] [key=value ...]",
                  raw=True, own_help=True)
