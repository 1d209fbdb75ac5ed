"""`treepo-lab sweep-status STUDY`: a sweep's trials by state, the best trial or the Pareto front."""
from __future__ import annotations

import argparse

from treepo_lab.commands.base import Command


def run(own, overrides, args: list[str]) -> int:
    p = argparse.ArgumentParser(prog="treepo-lab sweep-status", description="trials by state, best trial or Pareto front")
    p.add_argument("study")
    p.add_argument("--storage", default=None, help="as given to treepo-lab sweep (default: the journal beside the store)")
    p.add_argument("--tracking-uri", default=None)
    a = p.parse_args(args)
    from treepo_lab.sweep import driver

    print(driver.status_text(a.study, a.storage, a.tracking_uri))
    return 0


COMMAND = Command(run, "a sweep's trials by state, the best trial or the Pareto front",
                  "treepo-lab sweep-status STUDY [--storage URL] [--tracking-uri URL]",
                  "The storage defaults to optuna/STUDY.journal beside the MLflow store.", own=(), raw=True)
