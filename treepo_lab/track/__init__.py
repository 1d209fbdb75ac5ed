"""MLflow tracking.

`config.TrackingConfig` (light), `naming` (keys, params, experiment names), `strategy` (the strategy
tags), `metric_names` (the sort-first chart section), `artifacts` (compact trees, eval tables), `null`
(NULL_TRACKER: no tracking), `mlflow_tracker.Tracker` (imports mlflow) and `ui` (`treepo-lab ui`).

Nothing is re-exported here on purpose: the config layer imports `track.config`, and importing mlflow
(about a second) should only happen when a run actually starts.
"""
