"""Regenerate reports/example: 4 registry experiments x 2 seeds on the warm-started embedded model
(about 10-15 minutes on 2 cores), then the report.

    python reports/example/generate.py [--store /tmp/example]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from treepo_lab.analysis.report import build_report
from treepo_lab.config import load_config
from treepo_lab.train.run import run_experiment

EXPERIMENTS = ("grpo", "grpo_tree_sampling", "treepo_fixed_init", "treepo_more_init")

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", type=Path, default=Path("/tmp/example"))
    ap.add_argument("--report-only", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(1)
    uri = f"sqlite:///{a.store.resolve()}/mlflow.db"
    a.store.mkdir(parents=True, exist_ok=True)
    if not a.report_only:
        for seed in (0, 1):
            for exp in EXPERIMENTS:
                run_experiment(load_config(exp, [
                    f"tracking.tracking_uri={uri}", "tracking.experiment_name=example", "tracking.system_metrics=false",
                    "tracking.log_trees_every=10", "trainer.steps=30", "trainer.eval_every=5", "eval.n_problems=128",
                    f"seed={seed}", f"trainer.output_dir={a.store / 'runs'}"]))
    res = build_report(experiment="example", tracking_uri=uri, group_by=["treepo.experiment"],
                       out_dir=Path(__file__).parent, progress=True)
    print(res.html)
