"""One seed of a sweep trial as one rank of a torchrun group (spec `nproc_per_trial` > 1).

    python -m treepo_lab.sweep.ranks <job.json>

The worker writes the job (the trial's composed config as YAML, the sweep, trial number and parent run)
and launches `nproc_per_trial` copies of this module (`train.launch.launch_ranks`); rank 0 opens the child
MLflow run under the sweep's parent, as the in-process trial does. The worker then reads the objective
from that run. Such trials report no intermediate values to Optuna: they run to the end (no pruning).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from omegaconf import OmegaConf

from treepo_lab.config import ExperimentConfig
from treepo_lab.train.run import run_experiment


def main(argv: list[str]) -> int:
    job = json.loads(Path(argv[0]).read_text())
    cfg = OmegaConf.merge(OmegaConf.structured(ExperimentConfig), OmegaConf.create(job["config"]))
    run_experiment(cfg, sweep_id=job["sweep_id"], trial=job["trial"], parent_run_id=job["parent_run_id"],
                   progress=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
