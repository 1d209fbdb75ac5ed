"""Checkpoints: written atomically, loaded without unpickling.

A checkpoint is a directory `step-000040/` holding
  model/        save_pretrained (safetensors) + tokenizer files
  optim.safetensors   every optimizer state tensor
  state.json    optimizer param groups, scheduler state, RNG states, step, data position, run id
It is written to `.step-000040.tmp/` and renamed when complete, so a kill mid-write never leaves a
directory that looks like a checkpoint. Only the last `keep_last` are kept.
"""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, load_model, save_file

DONE = "state.json"  # written last: a directory without it is not a checkpoint


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


def save_checkpoint(root: Path, step: int, model, tokenizer, optimizer, scheduler, extra: dict,
                    keep_last: int = 2) -> Path:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f".step-{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    model.save_pretrained(tmp / "model", safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp / "model")
    tensors, groups = {}, []
    opt_state = optimizer.state_dict()
    for pid, st in opt_state["state"].items():
        for k, v in st.items():
            tensors[f"{pid}.{k}"] = v.detach().cpu().contiguous() if torch.is_tensor(v) else torch.tensor(v)
    for g in opt_state["param_groups"]:
        groups.append({k: v for k, v in g.items()})
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
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    for old in list_checkpoints(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


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
    """Load weights, optimizer, scheduler and RNG states in place; return state.json."""
    ckpt = Path(ckpt)
    state = read_state(ckpt)
    for shard in sorted((ckpt / "model").glob("*.safetensors")):  # a large model saves several shards
        load_model(model, str(shard), strict=False)
    tensors = load_file(str(ckpt / "optim.safetensors"))
    torch.set_rng_state(tensors.pop("torch_rng"))
    opt_state: dict = {"state": {}, "param_groups": state["param_groups"]}
    for key, v in tensors.items():
        pid, name = key.split(".", 1)
        opt_state["state"].setdefault(int(pid), {})[name] = v
    optimizer.load_state_dict(opt_state)
    sched = scheduler.state_dict()
    sched.update(state["scheduler"])
    scheduler.load_state_dict(sched)
    _set_rng_state(state["rng"])
    return state
