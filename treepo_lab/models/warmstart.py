"""Supervised warm start of the embedded tiny model on flawed demonstrations of an embedded task
(`arith`, below; `chain` and `chain_mid` write their own, see tasks/chain.py).

The demonstrations carry one systematic flaw (see `WarmstartConfig`): a share of those whose last
operator is `flaw_op` box the previous running value instead of the result. Greedy decoding inherits the
majority habit, sampling at temperature 1 gives a mix of right and wrong answers on most prompts, and
RL has a clear, learnable improvement to find.

The checkpoint is cached under `cache_dir/<hash of the config>`: it is built in a temporary directory,
a marker file is written last, and the directory is renamed into place, so a half-written entry is never
used. A lock file beside the entry lets one process build it while others wait and then reuse it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock, Timeout
from tqdm import tqdm

from treepo_lab.engines.logprobs import pad_right
from treepo_lab.models.config import WarmstartConfig
from treepo_lab.models.tiny import build_tiny_model, save_checkpoint
from treepo_lab.models.tokenizer import build_char_tokenizer
from treepo_lab.seeding import torch_seeded
from treepo_lab.tasks.base import TASKS, Problem, Task
from treepo_lab.tasks.build import build_task
from treepo_lab.validated import ensure_valid

MARKER = "warmstart.json"  # written last: its presence means the entry is complete
FORMAT_VERSION = 1  # bump when the demonstrations, the tokenizer or the training recipe change meaning
_NOT_IN_KEY = ("cache_dir", "eval_size")  # where it is stored and what is printed change no weight
# The task fields every embedded task's demonstrations depend on (the held-out slice is fixed; see
# tasks/arith.py), so an evaluation-only change such as held_out_size never triggers a rebuild; a task adds
# its own (`warmstart_task_keys`) and leaves out the warm-start knobs it never reads (`warmstart_unused`),
# so the keys of arith's and chain's entries held when later tasks' knobs came (tests/test_chain_task.py).
_TASK_KEY = ("name", "difficulty", "operand_max")


def cache_root(cfg: WarmstartConfig) -> Path:
    if cfg.cache_dir:
        return Path(cfg.cache_dir).expanduser().resolve()
    base = os.environ.get("TREEPO_CACHE_DIR")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "treepo_lab").resolve() / "warmstart"


def cache_key(cfg: WarmstartConfig) -> str:
    facts = TASKS.info(cfg.task.name, "warmstart.task.name")
    skip = _NOT_IN_KEY + facts.get("warmstart_unused", ())
    fields = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in skip}
    fields["task"] = {k: fields["task"][k] for k in _TASK_KEY + facts.get("warmstart_task_keys", ())}
    blob = json.dumps({"format": FORMAT_VERSION, **fields}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def demonstration_batch(task, tokenizer, cfg: WarmstartConfig, rng) -> tuple[torch.Tensor, ...]:
    """(input_ids, attention_mask, labels), right-padded; only response tokens (and EOS) are learned."""
    problems = task.sample(cfg.batch_size, rng)
    prompts, responses = [], []
    for p in problems:
        prompts.append(tokenizer(p.prompt)["input_ids"])  # BOS + prompt
        response = tokenizer(task.warm_demonstration(p, cfg, rng), add_special_tokens=False)["input_ids"]
        responses.append(response + [tokenizer.eos_token_id])
    batch = pad_right(prompts, responses, tokenizer.pad_token_id)
    labels = torch.full_like(batch.input_ids, -100)
    labels[:, 1:] = batch.input_ids[:, 1:].masked_fill(~batch.response_mask, -100)
    return batch.input_ids, batch.attention_mask, labels


def _lr_factor(step: int, cfg: WarmstartConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def train(cfg: WarmstartConfig):
    """Train a fresh tiny model; returns (model, tokenizer, moving average of the last losses)."""
    task = build_task(cfg.task)
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(cfg.tiny, tokenizer).train()
    rng = np.random.default_rng(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, cfg))
    smooth = None
    # on a terminal the bar redraws in place; into a log file (make demo > log, CI) a line every 30 s
    live = sys.stderr.isatty()
    bar = tqdm(range(cfg.steps), desc="warm start", unit="step", mininterval=0.1 if live else 30.0, file=sys.stderr)
    for _ in bar:
        ids, mask, labels = demonstration_batch(task, tokenizer, cfg, rng)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        smooth = loss.item() if smooth is None else 0.95 * smooth + 0.05 * loss.item()
        bar.set_postfix(loss=f"{smooth:.3f}", refresh=False)
    return model.eval(), tokenizer, smooth


@torch.no_grad()
def generate_responses(model, tokenizer, prompts: list[str], batch: int = 64, max_new_tokens: int = 200,
                       temperature: float | None = None, seed: int = 0) -> list[str]:
    """Plain batched `model.generate` with left padding; greedy when `temperature` is None."""
    sampling = {"do_sample": False} if temperature is None else {
        "do_sample": True, "temperature": temperature, "top_p": 1.0, "top_k": 0}
    out = []
    with torch_seeded(seed):  # seeded sampling without moving the caller's CPU RNG
        for i in range(0, len(prompts), batch):
            out += _generate_batch(model, tokenizer, prompts[i: i + batch], max_new_tokens, sampling)
    return out


def _generate_batch(model, tokenizer, prompts, max_new_tokens, sampling) -> list[str]:
    enc = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
    enc = {k: v.to(model.device) for k, v in enc.items()}
    gen = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, **sampling)
    return tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def greedy_accuracy(model, tokenizer, task: Task, problems: list[Problem], batch: int = 64,
                    max_new_tokens: int = 200) -> float:
    responses = generate_responses(model, tokenizer, [p.prompt for p in problems], batch, max_new_tokens)
    return float(np.mean([task.score(r, p).correct for r, p in zip(responses, problems)]))


def mixed_fraction(model, tokenizer, task: Task, problems: list[Problem], n_samples: int = 16,
                   temperature: float = 1.0, batch: int = 64, max_new_tokens: int = 200,
                   seed: int = 0) -> tuple[float, float]:
    """(share of prompts whose `n_samples` samples are neither all right nor all wrong, sample accuracy).

    A mixed group is what gives GRPO/TreePO a non-zero advantage; an all-right or all-wrong group
    teaches nothing.
    """
    prompts = [p.prompt for p in problems for _ in range(n_samples)]
    responses = generate_responses(model, tokenizer, prompts, batch, max_new_tokens, temperature, seed)
    repeated = [p for p in problems for _ in range(n_samples)]
    correct = np.array([task.score(r, p).correct for r, p in zip(responses, repeated)])
    per_prompt = correct.reshape(len(problems), n_samples).mean(axis=1)
    return float(np.mean((per_prompt > 0) & (per_prompt < 1))), float(correct.mean())


def evaluate(model, tokenizer, task: Task, problems: list[Problem]) -> dict:
    t0 = time.perf_counter()
    acc = greedy_accuracy(model, tokenizer, task, problems)
    mixed, sample_acc = mixed_fraction(model, tokenizer, task, problems)
    return {"greedy_accuracy": acc, "mixed_fraction_16": mixed, "sample_accuracy_t1": sample_acc,
            "eval_problems": len(problems), "eval_s": round(time.perf_counter() - t0, 1)}


def _publish(tmp: Path, final: Path) -> None:
    """Move a complete entry into place; a concurrent builder may have won already (then keep theirs)."""
    try:
        os.rename(tmp, final)
    except OSError:
        if (final / MARKER).is_file():
            return
        # An entry without a marker was not published by us (copied by hand, older layout): replace it.
        stale = final.with_name(f"{final.name}.stale-{os.getpid()}")
        os.rename(final, stale)
        shutil.rmtree(stale, ignore_errors=True)
        os.rename(tmp, final)


def warmstart(cfg: WarmstartConfig) -> Path:
    """The warm-started checkpoint dir for `cfg`: from the cache, or trained now and cached."""
    ensure_valid(cfg)
    # Absolute, so the path still works for a process that runs from another directory.
    final = cache_root(cfg) / cache_key(cfg)
    if (final / MARKER).is_file():
        return final
    if os.environ.get("RANK", "0") != "0":  # transformers saves weights on rank 0 only: rank 0 builds it
        return _wait_for(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    # one builder per entry: a second process (a sweep worker) waits for the first, then reuses its entry
    lock = FileLock(str(final.parent / f"{final.name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"warm start: another process is building {final} (lock {lock.lock_file}); waiting for it", flush=True)
        lock.acquire()
    try:
        return final if (final / MARKER).is_file() else _build(cfg, final)
    finally:
        lock.release()


def _wait_for(final: Path, poll_s: float = 0.5) -> Path:
    """A rank > 0: the entry rank 0 is building (a rank that won the lock would publish one without weights)."""
    while not (final / MARKER).is_file():
        time.sleep(poll_s)
    return final


def _build(cfg: WarmstartConfig, final: Path) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; other sweep workers must read the cache
        t0 = time.perf_counter()
        model, tokenizer, loss = train(cfg)
        info = {"config": dataclasses.asdict(cfg), "key": final.name,
                "train_s": round(time.perf_counter() - t0, 1), "loss_ema": loss}
        save_checkpoint(model, tokenizer, tmp)
        if cfg.eval_size:
            task = build_task(cfg.task)
            info |= evaluate(model, tokenizer, task, task.held_out()[: cfg.eval_size])
        print("warm start: " + ", ".join(f"{k}={v}" for k, v in info.items() if k != "config"))
        (tmp / MARKER).write_text(json.dumps(info, indent=2))  # last: marks the entry complete
        _publish(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
