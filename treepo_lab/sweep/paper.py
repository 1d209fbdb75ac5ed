"""`treepo-lab paper`: the paper's findings reproduced or refuted in one command.

It runs the sweep sweeps/paper.yaml restricted to the experiments the findings need (analysis/findings.yaml)
with the requested seeds, through the sweep runner, which resumes a killed sweep without rerunning a finished
trial (the study and the MLflow runs are the record; a second call with everything finished only reports).
Then it writes the report: the findings table first (claim, compute-matched difference with its 95% interval,
verdict), the power note (seeds needed), the compute-matched figure, and the full comparison report of the
sweep beside it (comparison/).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from treepo_lab.analysis import findings as fnd
from treepo_lab.analysis import plots_curves
from treepo_lab.analysis.groups import Grouping, group_runs
from treepo_lab.analysis.page import Section, markdown, page
from treepo_lab.analysis.report import build_report
from treepo_lab.analysis.runset import load
from treepo_lab.analysis.series import Series
from treepo_lab.analysis.style import StrategyStyles
from treepo_lab.config import list_experiments
from treepo_lab.registry import ConfigError
from treepo_lab.sweep import driver
from treepo_lab.sweep.spec import load_spec
from treepo_lab.tags import EXPERIMENT_TAG

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
    p.add_argument("overrides", nargs="*", help="key=value for every run (trainer.steps=30), sweep.<field>=value")
    return p.parse_args(args)


def select(a: argparse.Namespace) -> list[fnd.Finding]:
    """The findings to test; every check before anything is created."""
    found = fnd.load_findings(a.findings, list_experiments())
    if a.only:
        ids = [f.id for f in found]
        bad = [i for i in a.only if i not in ids]
        if bad:
            raise ConfigError("--only", bad[0], f"a finding id of {a.findings}: {', '.join(ids)}")
        found = [f for f in found if f.id in a.only]
    if a.seeds is not None and a.seeds < 2:
        raise ConfigError("--seeds", a.seeds, "an integer >= 2 (one seed gives no interval)")
    if a.workers < 1:
        raise ConfigError("--workers", a.workers, "an integer >= 1")
    return found


def sweep_args(a: argparse.Namespace, found: list[fnd.Finding]) -> list[str]:
    args = [f"sweep.grid={{experiment: 'choice({', '.join(fnd.experiments_of(found))})'}}"]
    if a.seeds is not None:
        args.append(f"sweep.seeds={list(range(a.seeds))}")
    return args + list(a.overrides)


def cmd_paper(args: list[str], out=None) -> int:
    out = out or sys.stdout
    a = parse(args)
    found = select(a)
    spec = load_spec(a.spec, sweep_args(a, found))
    status = "report-only"
    if not a.report_only:
        summary = driver.run_sweep(a.spec, sweep_args(a, found), a.workers, a.storage, a.tracking_uri, out=out)
        status = summary["status"]
    uri = driver.prepare(a.spec, sweep_args(a, found), a.storage, a.tracking_uri)[1]
    path = write_report(spec.name, found, uri, Path(a.out), spec)
    print(f"paper report: {path}", file=out)
    return {"finished": 0, "report-only": 0, "interrupted": 130}.get(status, 1)


def _subset(grouping: Grouping, labels: list[str]) -> Grouping:
    return Grouping(grouping.keys, [g for g in grouping.groups if g.label in labels], grouping.left_out)


def write_report(sweep: str, found: list[fnd.Finding], uri: str, out: Path, spec=None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    data = load(sweep=sweep, tracking_uri=uri, cache_dir=False)
    series = Series(data)
    grouping = group_runs(data, [EXPERIMENT_TAG])
    results = fnd.evaluate(found, series, grouping)
    budget = ", ".join(spec.overrides) if spec is not None else ""
    head = Section("What this tests", [
        f"{len(data.runs)} runs of sweep `{sweep}` in `{uri}`, grouped by registry experiment. Each finding compares "
        "an experiment with its reference, compute-matched: held-out accuracy interpolated at the largest rollout-token "
        "budget (decoded + prefill) and the largest wall time that every run of both reached; and the wall time to reach "
        "the reference's final accuracy. Intervals: 95% percentile bootstrap over seeds.",
        f"Budget (overrides of every run): `{budget or 'the registry defaults'}`. "
        f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')}."])
    sections = [Section("Findings", tables=[fnd.findings_table(results)]), head,
                Section("Statistical power", ["Whether adding seeds could separate what these seeds cannot."],
                        tables=[fnd.power_table(results)])]
    key = [e for e in ("grpo", "grpo_tree_sampling", "treepo_fixed_init") if grouping.by_label(e)]
    if key:
        notes: list[str] = []
        figs = plots_curves.compute_matched(series, _subset(grouping, key), StrategyStyles(), out / "figures", notes)
        sections.append(Section("TreePO, GRPO with tree sampling and GRPO, compute-matched", notes=notes,
                                figures=[(figs[0], "accuracy at budgets every run reached (mean over seeds, 95% band)")]))
    try:
        build_report(sweep=sweep, tracking_uri=uri, out_dir=out / "comparison", log_to_parent=False, cache_dir=False)
        sections.append(Section("Every experiment", ["The full comparison report of the sweep (every group, curves, "
                                                     "Pareto front, tree shapes): `comparison/report.html`."]))
    except Exception as err:  # the findings stand without the comparison pages
        sections.append(Section("Every experiment", notes=[f"comparison report not built: {type(err).__name__}: {err}"]))
    title = f"Paper findings: {sweep}"
    (out / "report.md").write_text(markdown(title, sections, out))
    (out / "report.html").write_text(page(title, sections))
    return out / "report.md"
