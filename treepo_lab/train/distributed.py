"""Data parallelism over prompt trees with torch.distributed (launched by torchrun).

One training run = N processes (ranks). Each rank samples and scores its contiguous share of the step's
prompts; the scored trees are then gathered so every rank holds the global batch in the order a single
process would have (advantages, DAPO's kept prompts and the step's metrics are then computed the same way
everywhere, and cost nothing next to the rollout). The policy update is split by prompt: each mini-batch's
prompts are cut into one share per rank, gradients are summed across ranks, and the loss normaliser is the
global mini-batch's. So N ranks compute what one process computes, to float rounding.

`trainer.parallel`: `ddp` (DistributedDataParallel: every rank holds the whole model) or `fsdp` (FSDP2
`fully_shard` per decoder layer, then the root: each rank holds 1/N of the parameters, gradients and
optimizer state). Both average gradients over ranks; the trainer scales its loss by N to sum them.
Under FSDP every forward all-gathers each layer, so every rank must run the same number of forwards per
mini-batch: ranks with fewer micro-batches run padding forwards whose loss is multiplied by 0.

A process started without torchrun (no WORLD_SIZE) is a world of one: nothing here is called.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import signal
import time
from dataclasses import dataclass

import torch

from treepo_lab.train import interrupt

# how long a collective waits for a slow rank (a long evaluation on rank 0, a slow checkpoint write);
# a rank that dies closes its sockets, and the others fail at once, not after this
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=60)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def share(self, n: int) -> range:
        """This rank's contiguous share of n items (checked: n divisible by the world size)."""
        per = n // self.size
        return range(self.rank * per, (self.rank + 1) * per)

    def all_gather(self, obj) -> list:
        """Every rank's `obj`, in rank order (pickled; for small per-step data)."""
        if not self.distributed:
            return [obj]
        out = [None] * self.size
        torch.distributed.all_gather_object(out, obj)
        return out

    def broadcast(self, obj):
        """Rank 0's `obj` on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()


SINGLE = World()


def env_world() -> World:
    """The world torchrun describes in the environment (a world of one without torchrun)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return SINGLE
    return World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))


def init_world(device: str) -> World:
    """Join torchrun's process group (gloo on CPU, nccl on CUDA); a world of one without torchrun."""
    world = env_world()
    if not world.distributed or torch.distributed.is_initialized():
        return world
    # a rank stops with its launcher, SIGKILL of it included: SIGTERM, which ends rank 0's run (tracker)
    interrupt.die_with_parent(signal.SIGTERM)
    if device.startswith("cuda"):
        torch.cuda.set_device(world.local_rank)
        backend = "nccl"
    else:
        backend = "gloo"
    torch.distributed.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
    return world


def close_world(world: World) -> None:
    if world.distributed and torch.distributed.is_initialized():
        # without the barriers a rank can tear its group down (or exit) while another still talks to it,
        # and gloo aborts that one (exit -6): all reach the end, all destroy, then all may exit
        store = _store()
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
        store.add(CLOSED_KEY, 1)
        deadline = time.monotonic() + 30
        while store.add(CLOSED_KEY, 0) < world.size and time.monotonic() < deadline:
            time.sleep(0.05)


def abort_world(world: World) -> None:
    """After an error: leave the group without waiting for ranks that may be gone."""
    if world.distributed and torch.distributed.is_initialized():
        with contextlib.suppress(Exception):
            torch.distributed.destroy_process_group()


def device_for(device: str, world: World) -> str:
    """Each rank on its own GPU of the node ("cuda" -> "cuda:<local rank>")."""
    if world.distributed and device == "cuda":
        return f"cuda:{world.local_rank}"
    return device


# ---- the model ---------------------------------------------------------------------------------------

def decoder_layers(model) -> list[torch.nn.Module]:
    """The decoder blocks of a transformers causal LM (the FSDP units)."""
    for name in ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers"):
        obj = model
        try:
            for part in name.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        return list(obj)
    raise ValueError(f"trainer.parallel=fsdp: cannot find the decoder layers of {type(model).__name__}")


def wrap(model, parallel: str, world: World):
    """The training module: `model` itself (one rank), DDP around it, or `model` sharded in place (FSDP2)."""
    if not world.distributed:
        return model
    if parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [world.local_rank] if next(model.parameters()).is_cuda else None
        return DistributedDataParallel(model, device_ids=ids)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    dtype = next(model.parameters()).dtype
    # the model's own dtype for both: a bf16 model all-gathers and reduces in bf16, float32 stays exact
    mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=dtype)
    for layer in decoder_layers(model):
        fully_shard(layer, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model


def _is_ddp(model) -> bool:
    from torch.nn.parallel import DistributedDataParallel

    return isinstance(model, DistributedDataParallel)


def unwrap(model):
    return model.module if _is_ddp(model) else model


def grad_sync(model, enabled: bool):
    """A context in which backward reduces gradients across ranks only if `enabled` (the mini-batch's last
    micro-batch): one reduction per optimizer step, not per micro-batch."""
    if _is_ddp(model):
        return contextlib.nullcontext() if enabled else model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(enabled)
    return contextlib.nullcontext()


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of an FSDP2 shard (a collective: every rank calls it in the same order)."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def full_weights(model):
    """(name, full tensor) of every entry of the policy's state dict, one at a time: an engine loads the
    new weights without a second whole copy of the model."""
    for name, t in unwrap(model).state_dict().items():
        yield name, full(t).detach()


# ---- failures ------------------------------------------------------------------------------------------

ERROR_KEY = "treepo/error"
CLOSED_KEY = "treepo/closed"


class RankFailed(RuntimeError):
    """Another rank of the run failed: its error, in one line."""


def _store():
    from torch.distributed import distributed_c10d

    return distributed_c10d._get_default_store()  # torchrun's rendezvous store: outlives any worker


def publish_error(world: World, exc: BaseException) -> None:
    """Leave this rank's error where rank 0 can read it (it ends the MLflow run FAILED with it)."""
    if not world.distributed or not torch.distributed.is_initialized():
        return
    first = (str(exc).strip().splitlines() or [""])[0][:500]
    with contextlib.suppress(Exception):
        _store().set(ERROR_KEY, f"rank {world.rank}: {type(exc).__name__}: {first}")


def peer_error(world: World) -> RankFailed | None:
    """The error another rank published, if any (never blocks)."""
    if not world.distributed or not torch.distributed.is_initialized():
        return None
    try:
        store = _store()
        if store.check([ERROR_KEY]):
            return RankFailed(store.get(ERROR_KEY).decode())
    except Exception:  # noqa: BLE001 (the store is gone with the job: nothing to read)
        return None
    return None
