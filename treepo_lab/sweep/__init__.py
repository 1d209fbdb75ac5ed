"""Optuna sweeps over the experiment config: specs (sweeps/*.yaml), validation, workers, MLflow layout."""
