"""The sweep commands of `treepo-lab` (registered in cli.py). Light at import, like the rest of the CLI:
the driver (Optuna, MLflow, torch) loads when a command runs.

    treepo-lab sweep sweeps/NAME.yaml [--workers N] [--storage URL] [--tracking-uri URL] [key=value ...]
    treepo-lab sweep-worker STUDY --storage URL [--tracking-uri URL] [--threads N]
    treepo-lab sweep-status STUDY [--storage URL] [--tracking-uri URL]
"""
from __future__ import annotations

import argparse
import sys

from treepo_lab.overrides import parse_with_overrides


def parse_sweep(args: list[str]) -> argparse.Namespace:
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


def cmd_sweep(args: list[str]) -> int:
    a = parse_sweep(args)
    from treepo_lab.sweep import driver

    summary = driver.run_sweep(a.spec, a.overrides, a.workers, a.storage, a.tracking_uri)
    return {"finished": 0, "interrupted": 130}.get(summary["status"], 1)


def cmd_sweep_worker(args: list[str]) -> int:
    from treepo_lab.sweep import worker

    return worker.main(args)


def cmd_sweep_status(args: list[str]) -> int:
    p = argparse.ArgumentParser(prog="treepo-lab sweep-status", description="trials by state, best trial or Pareto front")
    p.add_argument("study")
    p.add_argument("--storage", default=None, help="as given to treepo-lab sweep (default: the journal beside the store)")
    p.add_argument("--tracking-uri", default=None)
    a = p.parse_args(args)
    from treepo_lab.sweep import driver

    print(driver.status_text(a.study, a.storage, a.tracking_uri))
    return 0


# name -> (function of the raw arguments, summary, usage, details) for cli.py
SWEEP_COMMANDS = {
    "sweep": (cmd_sweep, "run (or resume) an Optuna sweep: sweeps/NAME.yaml, N worker processes, MLflow parent + child runs",
              "treepo-lab sweep sweeps/NAME.yaml [--workers N] [--storage URL] [--tracking-uri URL] [key=value ...]",
              "e.g. treepo-lab sweep sweeps/demo.yaml --workers 2 trainer.steps=30 sweep.n_trials=8\n"
              "Running the same command again resumes the study (no completed trial is repeated)."),
    "sweep-worker": (cmd_sweep_worker, "join a running sweep from another process or machine",
                     "treepo-lab sweep-worker STUDY --storage URL [--tracking-uri URL] [--threads N]",
                     "e.g. treepo-lab sweep-worker branching --storage postgresql://optuna@db:5432/optuna"),
    "sweep-status": (cmd_sweep_status, "a sweep's trials by state, the best trial or the Pareto front",
                     "treepo-lab sweep-status STUDY [--storage URL] [--tracking-uri URL]",
                     "The storage defaults to optuna/STUDY.journal beside the MLflow store."),
}

if __name__ == "__main__":
    sys.exit(SWEEP_COMMANDS[sys.argv[1]][0](sys.argv[2:]))
