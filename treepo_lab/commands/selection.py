"""The run selection that `report`, `export` and `figures` share: --sweep | --experiment | --runs | --filter,
the store and the metric cache."""
from __future__ import annotations

import argparse


def add_selection(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_mutually_exclusive_group(required=required)
    g.add_argument("--sweep", metavar="NAME", help="a sweep (its MLflow experiment / parent run)")
    g.add_argument("--experiment", metavar="NAME", help="an MLflow experiment")
    g.add_argument("--runs", metavar="ID", nargs="+", help="MLflow run ids")
    g.add_argument("--filter", metavar="STRING", help="an MLflow search filter, e.g. \"tags.`sampler.kind` = 'tree'\"")
    p.add_argument("--tracking-uri", metavar="URI", help="MLflow store (default: $MLFLOW_TRACKING_URI, else ./mlflow.db)")
    p.add_argument("--no-cache", action="store_true", help="refetch every metric history (no on-disk cache)")


def select_kwargs(a) -> dict:
    return {"sweep": a.sweep, "experiment": a.experiment, "run_ids": a.runs, "filter_string": a.filter,
            "tracking_uri": a.tracking_uri, "cache_dir": False if a.no_cache else None}
