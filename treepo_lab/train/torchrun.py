"""`python -m treepo_lab.train.torchrun [torchrun options] -m treepo_lab.cli train ...`: torchrun whose
stores listen on one address, never on all interfaces (plain torchrun's c10d stores listen on `*:<port>`).

Every torchrun option works; the rendezvous backend defaults to `treepo` (rendezvous.py: torch's c10d
rendezvous with its stores bound to the endpoint's address and to this node's `--local-addr`, by default the
address of the interface that routes to the endpoint). `--standalone` (one node) becomes endpoint
127.0.0.1:0 with gloo and NCCL on the loopback interface, as `treepo-lab train trainer.nproc=N` does.
"""
from __future__ import annotations

import contextlib
import sys
import uuid

from treepo_lab.train import rendezvous


def _given(argv: list[str], *names: str) -> bool:
    return any(a in names or a.split("=", 1)[0] in names for a in argv)


def torchrun_args(argv: list[str]) -> tuple[list[str], bool]:
    """torchrun's arguments with the `treepo` backend (--standalone as loopback-only options), and whether
    the run is one node on loopback."""
    end = next((i for i, a in enumerate(argv) if a == "-m" or a.endswith(".py")), len(argv))  # the script
    opts, rest = argv[:end], argv[end:]
    standalone = "--standalone" in opts
    if standalone:
        opts = ["--nnodes", "1", "--rdzv-endpoint", "127.0.0.1:0", "--local-addr", "127.0.0.1",
                "--rdzv-id", uuid.uuid4().hex, *(a for a in opts if a != "--standalone")]
    if not _given(opts, "--rdzv-backend", "--rdzv_backend"):
        opts = ["--rdzv-backend", rendezvous.BACKEND, *opts]
    return opts + rest, standalone


def main(argv: list[str] | None = None) -> None:
    argv, standalone = torchrun_args(list(sys.argv[1:] if argv is None else argv))
    rendezvous.register()
    from torch.distributed.run import main as torchrun

    with rendezvous.loopback_env() if standalone else contextlib.nullcontext():  # gloo / NCCL on loopback too
        torchrun(argv)


if __name__ == "__main__":
    main()
