"""Reading runs back and drawing them: figures, tables and reports (tree drawings: track/tree_drawing.py).

    from treepo_lab.analysis import load, build_report      # or from .runset / .report
    data = load(experiment="example")                       # MLflow runs -> tidy pandas frames (cached per run)
    res = build_report(sweep="demo")                        # reports/demo/report.md + report.html + figures/

Modules: runset (loading), selection, groups, series, stats, style, plots_curves, plots_rollout, tables, trees,
optuna_view, page, report, recipes, commands.
"""
from __future__ import annotations

import importlib

# Resolved on first use (PEP 562), not at import: `treepo-lab sweep` imports this package lazily to
# build a report, and the import of the package alone must not pull in pandas, matplotlib and Optuna.
_LAZY = {"load": "runset", "export": "runset", "RunSet": "runset", "build_report": "report", "ReportResult": "report"}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"treepo_lab.analysis.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'treepo_lab.analysis' has no attribute {name!r}")
