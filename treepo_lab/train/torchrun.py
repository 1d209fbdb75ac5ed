"""`python -m treepo_lab.train.torchrun [torchrun options] -m treepo_lab.cli train ...`: torchrun whose
stores listen on one address, never on all interfaces (plain torchrun's c10d stores listen on `*:<port>`).

Every torchrun option works; the rendezvous backend defaults to `treepo` (rendezvous.py: torch's c10d
rendezvous with its stores bound to the endpoint's address and to this node's `--local-addr`, by default the
address of the interface that routes to the endpoint). `--standalone` (one node) becomes endpoint
127.0.0.1:0 with gloo and NCCL on the loopback interface, as `treepo-lab train trainer.nproc=N` does.
"""
from __future__ import annotations

import contextlib
import logging
import sys
import uuid

from treepo_lab.train import rendezvous
from treepo_lab.train.launch import quiet_torch_launcher


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


def main(argv: list[str] | None = None) -> int:
    """torchrun; a rank that fails is one line here (the rank has said why), not torchrun's traceback."""
    argv, standalone = torchrun_args(list(sys.argv[1:] if argv is None else argv))
    rendezvous.register()
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    quiet_torch_launcher(logging.CRITICAL)  # a failed rank is our one line below

    try:
        with rendezvous.loopback_env() if standalone else contextlib.nullcontext():  # gloo / NCCL on loopback too
            torchrun(argv)
    except ChildFailedError as err:
        # the rank that failed first exits with its code; torchrun then stops the others (signal: code < 0)
        failed = {r: f.exitcode for r, f in err.failures.items() if isinstance(f.exitcode, int) and f.exitcode > 0}
        code = max(failed.values(), default=1)
        print(f"torchrun: rank {', '.join(map(str, sorted(failed))) or '?'} exited with code {code} (why: above); "
              "the others were stopped", file=sys.stderr)
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
