"""`treepo-lab demo`: the warm start (cached), then the demo sweep (4 strategies x 2 seeds, 2 workers) and
its report."""
from __future__ import annotations

from pathlib import Path

from treepo_lab.commands import sweep, warmstart
from treepo_lab.commands.base import Command

ROOT = Path(__file__).resolve().parents[2]  # the source tree (sweeps/)


def run(own, overrides, raw):
    spec = ROOT / "sweeps" / "demo.yaml"
    args = [str(spec if spec.is_file() else "sweeps/demo.yaml"), "--workers", "2", *overrides]
    sweep.parse(args)  # a bad argument stops here, not after the warm start
    warmstart.run(own, overrides, raw, default="demo")  # the embedded model and its held-out accuracy before RL
    return sweep.run_sweep(args)


COMMAND = Command(run, "warm-start the embedded model, run the demo sweep (4 strategies x 2 seeds) and its report",
                  "treepo-lab demo [key=value ...]",
                  "Runs `warmstart`, then `sweep sweeps/demo.yaml --workers 2` (GRPO, GRPO w/ tree sampling, TreePO\n"
                  "fixed / random init divergence, 2 seeds each); key=value applies to every trial.\n"
                  "e.g. treepo-lab demo trainer.steps=30 eval.n_problems=50")
