"""`treepo-lab train ... trainer.nproc=N`: start the N ranks of one run with torchrun's own launcher.

The config is checked here first (every preflight check, in this process), so a bad input stops before
any process starts. Then `torch.distributed.launcher.elastic_launch` (what `torchrun --standalone
--nproc-per-node N` runs) starts N copies of the same command line with RANK/WORLD_SIZE set; each
finds WORLD_SIZE and joins the group. A rank that fails makes the launcher stop the others; rank 0 ends
the MLflow run FAILED with the failing rank's error, and this process prints that one line. SIGTERM (or
Ctrl-C) to this process interrupts the ranks like Ctrl-C: the run ends KILLED, resumable.

Every socket of the group listens on 127.0.0.1 only: the rendezvous and the ranks' bootstrap store are the
`treepo` rendezvous backend's (rendezvous.py; torch's own TCPStore server would listen on all interfaces),
gloo and NCCL use the loopback interface. Several nodes: `python -m treepo_lab.train.torchrun` on every
node (README, "Many GPUs and nodes").
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import uuid

from treepo_lab.config import check_devices
from treepo_lab.train import rendezvous
from treepo_lab.train.preflight import preflight


class LaunchFailed(RuntimeError):
    """A rank exited with an error (rank 0 has printed it and marked the run)."""


class LaunchStopped(KeyboardInterrupt):
    """SIGTERM or Ctrl-C to the launcher: the ranks were interrupted like Ctrl-C (the run ends KILLED)."""

    def __init__(self, signum: int, n: int):
        name = signal.Signals(signum).name
        self.exit_code = 128 + signum
        self.line = (f"stopped by {name}: the {n} ranks were interrupted and the run (if it had started) ends "
                     "KILLED; continue it with: treepo-lab resume <run dir or run id>")
        super().__init__(self.line)


def _interrupt_ranks(signum, frame):
    """SIGTERM to the launcher: torch's agent then stops the ranks with SIGINT (each ends like Ctrl-C),
    not with SIGTERM (which ranks also get when another rank failed: the run would end FAILED)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException

    stop = SignalException(f"got {signal.Signals(signum).name}", sigval=signal.SIGINT)
    stop.signum = signum
    raise stop


def quiet_torch_launcher(level: int = logging.ERROR) -> None:
    """torch's launcher logs INFO/WARNING lines of its own (banners, "Sending process ... SIGTERM"): ours say it."""
    import torch.distributed.elastic  # noqa: F401 (creates its loggers, each with its own level)

    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("torch.distributed.elastic", "torch.distributed.launcher", "torch.distributed.run")):
            logging.getLogger(name).setLevel(level)


def launched() -> bool:
    """This process is a rank started by torchrun (or by `launch`)."""
    return "WORLD_SIZE" in os.environ


def launch(cfg, argv: list[str]) -> None:
    """Run `treepo-lab <argv>` as cfg.trainer.nproc ranks on this node."""
    for warning in preflight(cfg).warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if cfg.model.path is None:  # built (or found) once here, with its progress, not by the ranks
        from treepo_lab.config import warmstart_config
        from treepo_lab.models.warmstart import warmstart

        warmstart(warmstart_config(cfg))
    launch_ranks(cfg.trainer.nproc, cfg.model.device, ["-m", "treepo_lab.cli", *argv])


def launch_ranks(n: int, device: str, args: list[str]) -> None:
    """`python <args>` as n ranks of one torchrun group on this node; returns when all exited, raises
    LaunchFailed when one failed (after the launcher stopped the others)."""
    import threading

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    check_devices(n, device)
    quiet_torch_launcher()
    rendezvous.register()
    # every store on 127.0.0.1 (rendezvous.py); SIGTERM is ours (_interrupt_ranks), the rest torch's
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=n, run_id=uuid.uuid4().hex,
                          rdzv_backend=rendezvous.BACKEND, rdzv_endpoint="127.0.0.1:0", local_addr="127.0.0.1",
                          max_restarts=0, monitor_interval=0.5, start_method="spawn",
                          signals_to_handle="SIGINT,SIGHUP,SIGQUIT")
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // n)))
    main = threading.current_thread() is threading.main_thread()
    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)
    prev = {sig: signal.getsignal(sig) for sig in handled} if main else {}  # torch leaves its handlers set
    if main:
        signal.signal(signal.SIGTERM, _interrupt_ranks)
    try:
        with rendezvous.loopback_env():
            elastic_launch(config, sys.executable)(*args)
    except ChildFailedError as err:
        ranks = ", ".join(str(f.local_rank) for f in err.failures.values())
        raise LaunchFailed(f"rank {ranks} of {n} exited with an error (above); the run is marked FAILED; "
                           "continue it with: treepo-lab resume <run dir or run id>") from None
    except SignalException as stop:
        raise LaunchStopped(getattr(stop, "signum", stop.sigval), n) from None
    finally:
        for sig, handler in prev.items():  # None: set outside Python, the default is the closest
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
