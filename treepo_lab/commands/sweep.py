"""`treepo-lab sweep SPEC`: run (or resume) an Optuna sweep over a spec, N worker processes on this machine,
an MLflow parent run with one child per trial. Light at import: the driver (Optuna, MLflow, torch) loads
when it runs."""
from __future__ import annotations

import argparse

from treepo_lab.commands.base import Command
from treepo_lab.overrides import parse_with_overrides


def parse(args: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="treepo-lab sweep", description="run (or resume) an Optuna sweep over a spec")
    p.add_argument("spec", help="sweeps/NAME.yaml")
    p.add_argument("--workers", type=int, default=1, help="worker processes on this machine (they split the cores)")
    p.add_argument("--storage", default=None,
                   help="Optuna storage: a journal file (default: optuna/<name>.journal beside the MLflow store) "
                        "or postgresql://user@host:port/db for workers on many machines")
    p.add_argument("--tracking-uri", default=None, help="MLflow store or server (default: $MLFLOW_TRACKING_URI, "
                                                         "else sqlite:///mlflow.db)")
    p.add_argument("overrides", nargs="*", help="key=value for every trial (trainer.steps=30), "
                                                 "sweep.<field>=value for the spec (sweep.n_trials=4)")
    return parse_with_overrides(p, args)  # options and overrides in any order


def run_sweep(args: list[str]) -> int:
    a = parse(args)
    from treepo_lab.sweep import driver

    summary = driver.run_sweep(a.spec, a.overrides, a.workers, a.storage, a.tracking_uri)
    return {"finished": 0, "interrupted": 130}.get(summary["status"], 1)


COMMAND = Command(lambda own, overrides, raw: run_sweep(raw),
                  "run (or resume) an Optuna sweep: sweeps/NAME.yaml, N worker processes, MLflow parent + child runs",
                  "treepo-lab sweep sweeps/NAME.yaml [--workers N] [--storage URL] [--tracking-uri URL] [key=value ...]",
                  "e.g. treepo-lab sweep sweeps/demo.yaml --workers 2 trainer.steps=30 sweep.n_trials=8\n"
                  "Running the same command again resumes the study (no completed trial is repeated).", own=(), raw=True)
