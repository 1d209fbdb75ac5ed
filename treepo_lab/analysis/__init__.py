"""MLflow runs -> tidy frames, comparison reports and paper-style figures.

    from treepo_lab.analysis import load, build_report
    data = load(experiment="example")                  # RunSet: .runs, .metrics, .tidy()
    result = build_report(sweep="demo")                # reports/demo/report.md + report.html + figures/
"""
from treepo_lab.analysis.load import RunSet, export, load
from treepo_lab.analysis.report import ReportResult, build_report

__all__ = ["RunSet", "ReportResult", "build_report", "export", "load"]
