"""`treepo-lab train ... trainer.nproc=N`: start the N ranks of one run with torchrun's own launcher.

The config is checked here first (every preflight check, in this process), so a bad input stops before
any process starts. Then `torch.distributed.launcher.elastic_launch` (what `torchrun --standalone
--nproc-per-node N` runs) starts N copies of the same command line with RANK/WORLD_SIZE set; each
finds WORLD_SIZE and joins the group. A rank that fails makes the launcher stop the others; rank 0 ends
the MLflow run FAILED with the failing rank's error, and this process prints that one line.

Several nodes: run torchrun yourself on every node (README, "Many GPUs and nodes").
"""
from __future__ import annotations

import logging
import os
import sys
import uuid

from treepo_lab.registry import ConfigError
from treepo_lab.train.preflight import preflight


class LaunchFailed(RuntimeError):
    """A rank exited with an error (rank 0 has printed it and marked the run)."""


def launched() -> bool:
    """This process is a rank started by torchrun (or by `launch`)."""
    return "WORLD_SIZE" in os.environ


def launch(cfg, argv: list[str]) -> None:
    """Run `treepo-lab <argv>` as cfg.trainer.nproc ranks on this node."""
    for warning in preflight(cfg).warnings:
        print(f"warning: {warning}", file=sys.stderr)
    launch_ranks(cfg.trainer.nproc, cfg.model.device, ["-m", "treepo_lab.cli", *argv])


def launch_ranks(n: int, device: str, args: list[str]) -> None:
    """`python <args>` as n ranks of one torchrun group on this node; returns when all exited, raises
    LaunchFailed when one failed (after the launcher stopped the others)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if device.startswith("cuda"):
        import torch

        if torch.cuda.device_count() < n:
            raise ConfigError("trainer.nproc", n, f"at most the {torch.cuda.device_count()} visible GPUs "
                                                  "(one rank per GPU)")
    for name in ("torch.distributed.elastic", "torch.distributed.launcher"):
        logging.getLogger(name).setLevel(logging.ERROR)  # its INFO/WARNING lines are torch's, not ours
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=n, run_id=uuid.uuid4().hex,
                          rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0", max_restarts=0,
                          monitor_interval=0.5, start_method="spawn")
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // n)))
    try:
        elastic_launch(config, sys.executable)(*args)
    except ChildFailedError as err:
        ranks = ", ".join(str(f.local_rank) for f in err.failures.values())
        raise LaunchFailed(f"rank {ranks} of {n} exited with an error (above); the run is marked FAILED; "
                           "continue it with: treepo-lab resume <run dir or run id>") from None
