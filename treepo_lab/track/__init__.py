"""MLflow tracking: `config.TrackingConfig` (light), `naming` (keys, params, strategy tags) and
`mlflow_tracker.Tracker` (imports mlflow).

Nothing is re-exported here on purpose: the config layer imports `track.config`, and importing mlflow
(about a second) should only happen when a run actually starts.
"""
