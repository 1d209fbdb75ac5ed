"""Checkpoints: written atomically, loaded without unpickling.

A checkpoint is a directory `step-000040/` holding
  model/        save_pretrained (safetensors) + tokenizer files
  optim.safetensors   every optimizer state tensor
  state.json    optimizer param groups, scheduler state, RNG states, step, data position, run id
It is written to `.step-000040.tmp/` and renamed when complete, so a kill mid-write never leaves a
directory that looks like a checkpoint. Only the last `keep_last` are kept.

The layout holds whole tensors whatever the world size: a DDP- or FSDP-wrapped model's full state dicts are
gathered with torch's distributed-checkpoint helpers (a collective: every rank calls save and restore),
rank 0 writes them, and any world size reads them back (each FSDP rank keeps its own shard). Optimizer
state is keyed by the parameter's index in `named_parameters()` order, the optimizer's own numbering.
"""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)

from treepo_lab.models.lora import ADAPTER_DIR, is_adapted, load_adapter_weights, save_adapted
from treepo_lab.track.held_signals import held
from treepo_lab.train.distributed import unwrap

DONE = "state.json"  # written last: a directory without it is not a checkpoint


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (one line: the folder and why); the half-written one is removed."""

    def __init__(self, root: Path, cause: BaseException):
        why = (str(cause).strip().splitlines() or [type(cause).__name__])[0][:300]
        if "No space left" in why or getattr(cause, "errno", None) == 28:  # ENOSPC, also inside safetensors' text
            why = f"no space left on device ({why})"
        super().__init__(f"could not write a checkpoint in {root}: {why}; the run stopped, its last complete "
                         "checkpoint is intact: free space, then treepo-lab resume <run dir or run id>")


def _rng_state() -> dict:
    py = random.getstate()
    np_state = np.random.get_state()
    return {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }


def _set_rng_state(state: dict) -> None:
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def _names(model) -> list[str]:
    return [name for name, _ in unwrap(model).named_parameters()]


def save_checkpoint(root: Path, step: int, model, tokenizer, optimizer, scheduler, extra: dict,
                    keep_last: int = 2, is_main: bool = True) -> Path:
    """`model` may be DDP- or FSDP-wrapped: then every rank calls this, and only `is_main` writes."""
    root = Path(root)
    final = root / f"step-{step:06d}"
    weights = get_model_state_dict(model, options=_FULL)
    opt_state = get_optimizer_state_dict(model, optimizer, options=_FULL)
    if not is_main:
        return final
    tmp = root / f".step-{step:06d}.tmp"
    # a stop (Ctrl-C, torchrun's SIGTERM when another rank died) waits for the checkpoint being written: it
    # is what `resume` will continue from (one interrupted mid-write left only the half-written .tmp)
    with held():
        try:
            root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            _write(tmp, model, weights, tokenizer, optimizer, opt_state, scheduler, step, extra)
        except (OSError, SafetensorError) as err:  # a full disk, a quota, a read-only folder: earlier ones are whole
            shutil.rmtree(tmp, ignore_errors=True)
            raise CheckpointWriteError(root, err) from err
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    for old in list_checkpoints(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _write(tmp: Path, model, weights, tokenizer, optimizer, opt_state, scheduler, step: int, extra: dict) -> None:
    if is_adapted(unwrap(model)):  # adapter/ (what resume loads) and model/ (merged: loads without peft)
        save_adapted(unwrap(model), tmp, tokenizer)
    else:
        unwrap(model).save_pretrained(tmp / "model", state_dict=weights, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp / "model")
    tensors, groups = {}, []
    index = {name: i for i, name in enumerate(_names(model))}
    for name, st in opt_state["state"].items():
        for k, v in st.items():
            tensors[f"{index[name]}.{k}"] = v.detach().cpu().contiguous() if torch.is_tensor(v) else torch.tensor(v)
    for g in opt_state["param_groups"]:
        groups.append({**g, "params": [index[name] for name in g["params"]]})
    tensors["torch_rng"] = torch.get_rng_state()
    save_file(tensors, str(tmp / "optim.safetensors"))
    state = {
        "step": step,
        "param_groups": groups,
        "scheduler": {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"},
        "rng": _rng_state(),
        **extra,
    }
    (tmp / DONE).write_text(json.dumps(state))


def list_checkpoints(root: Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step-*") if (p / DONE).is_file())


def latest_checkpoint(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def read_state(ckpt: Path) -> dict:
    ckpt = Path(ckpt)
    if not (ckpt / DONE).is_file():
        raise FileNotFoundError(f"{ckpt} is not a treepo_lab checkpoint (no {DONE})")
    return json.loads((ckpt / DONE).read_text())


def restore(ckpt: Path, model, optimizer, scheduler) -> dict:
    """Load weights, optimizer, scheduler and RNG states in place; return state.json. `model` may be
    DDP- or FSDP-wrapped (every rank calls this; FSDP ranks keep their shard of each tensor)."""
    ckpt = Path(ckpt)
    state = read_state(ckpt)
    if (ckpt / ADAPTER_DIR).is_dir():  # LoRA: the adapters onto the base model the run loaded
        load_adapter_weights(unwrap(model), ckpt)
    else:
        weights = {}
        for shard in sorted((ckpt / "model").glob("*.safetensors")):  # a large model saves several shards
            weights.update(load_file(str(shard)))
        # strict=False: a tied output embedding is saved once, under the input embedding's name
        set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True, strict=False))
    tensors = load_file(str(ckpt / "optim.safetensors"))
    torch.set_rng_state(tensors.pop("torch_rng"))
    names = _names(model)
    opt_state: dict = {"state": {}, "param_groups": [{**g, "params": [names[i] for i in g["params"]]}
                                                     for g in state["param_groups"]]}
    for key, v in tensors.items():
        pid, name = key.split(".", 1)
        opt_state["state"].setdefault(names[int(pid)], {})[name] = v
    set_optimizer_state_dict(model, optimizer, opt_state, options=StateDictOptions(full_state_dict=True))
    sched = scheduler.state_dict()
    sched.update(state["scheduler"])
    scheduler.load_state_dict(sched)
    _set_rng_state(state["rng"])
    return state
