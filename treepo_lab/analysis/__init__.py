"""Reading runs back and drawing them: figures, tables and tree drawings (`tree_drawing`).

    from treepo_lab.analysis.load import load               # MLflow runs -> tidy pandas frames (cached per run)
    from treepo_lab.analysis.report import build_report     # reports/<name>/report.md + report.html + figures/

Nothing is imported here on purpose: the tracker imports `tree_drawing` at every run start, and that
must not pull in pandas and matplotlib. Modules: load, selection, groups, series, stats, style,
plots_curves, plots_rollout, tables, trees, optuna_view, page, report, recipes, commands.
"""
