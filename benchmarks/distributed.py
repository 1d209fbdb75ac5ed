"""Data-parallel training benchmark (issue 18): N ranks x T threads against 1 rank x N*T threads, the same
global batch (trainer.prompts_per_step), the same config, DDP and FSDP.

Each side is a real run of the trainer: `torchrun --standalone --nproc-per-node N` of this file in worker
mode (one rank: the same worker without torchrun). A worker builds the Trainer (no MLflow), runs one
warm-up step, then times `--steps` training steps (rollout + scoring + update + engine sync) and reports:
  step_s            median wall time of one step (rank 0's clock; every step ends in a collective)
  tokens_per_s      generated (leaf) tokens of the global batch per second
  state_mb          parameters + gradients + optimizer state held by each rank (local shards under FSDP)
  peak_rss_mb       each rank's peak resident set (the whole process: Python, torch, the engine's copy)
  peak_cuda_mb      each rank's torch.cuda.max_memory_allocated (GPU runs)
Then it prints the ratios: step time of N ranks over 1 rank, and FSDP's state per rank over DDP's.

  python benchmarks/distributed.py                       # CPU: 2 ranks x 1 thread vs 1 rank x 2 threads
  python benchmarks/distributed.py --smoke               # seconds: plumbing only
  python benchmarks/distributed.py --device cuda --ranks 2 --threads 4 --model /path/to/hf_model   # GPU
The machine is shared: run it on a quiet machine; the load average before and after is recorded.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", type=int, default=2, help="N: ranks of the parallel side")
    p.add_argument("--threads", type=int, default=1, help="T: torch threads per rank (the 1-rank side gets N*T)")
    p.add_argument("--parallel", default="ddp,fsdp", help="trainer.parallel values of the N-rank side")
    p.add_argument("--steps", type=int, default=4, help="timed training steps (after one warm-up step)")
    p.add_argument("--prompts", type=int, default=8, help="trainer.prompts_per_step (the global batch)")
    p.add_argument("--width", type=int, default=8, help="sampler.width")
    p.add_argument("--hidden", type=int, default=384, help="embedded model width (no --model)")
    p.add_argument("--layers", type=int, default=4, help="embedded model layers (no --model)")
    p.add_argument("--model", default=None, help="model.path: any HF causal LM directory (default: the embedded model)")
    p.add_argument("--device", default="cpu", help="model.device: cpu | cuda")
    p.add_argument("--engine", default="hf", help="engine.name: hf | vllm")
    p.add_argument("--set", nargs="*", default=[], help="more config overrides key=value")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/distributed.json"))
    p.add_argument("--smoke", action="store_true", help="tiny sizes, 1 timed step: checks the plumbing")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.smoke:
        a.steps, a.prompts, a.width, a.hidden, a.layers = 1, 4, 4, 64, 2
    return a


def overrides(a: argparse.Namespace, parallel: str) -> list[str]:
    over = [f"trainer.prompts_per_step={a.prompts}", f"trainer.steps={a.steps + 1}", "trainer.warmup_steps=0",
            "trainer.eval_before=false", "trainer.eval_every=0", "trainer.save_every=0", f"trainer.parallel={parallel}",
            f"sampler.width={a.width}", "tracking.enabled=false", f"model.device={a.device}", f"engine.name={a.engine}"]
    if a.model:
        over.append(f"model.path={a.model}")
    else:  # a wider embedded model (a quick warm start: the benchmark measures speed, not accuracy)
        over += [f"warmstart.tiny.hidden_size={a.hidden}", f"warmstart.tiny.num_layers={a.layers}",
                 f"warmstart.tiny.intermediate_size={3 * a.hidden}", f"warmstart.tiny.num_heads={max(1, a.hidden // 64)}",
                 "warmstart.steps=20", "warmstart.eval_size=0"]
    return over + list(a.set)


# ---- worker: one rank ------------------------------------------------------------------------------------

def _state_bytes(trainer) -> int:
    """Parameters, gradients and optimizer state this rank holds (its shards under FSDP)."""
    import torch
    from torch.distributed.tensor import DTensor

    local = lambda t: t.to_local() if isinstance(t, DTensor) else t
    n = 0
    for p in trainer.model.parameters():
        n += local(p).numel() * p.element_size()
        n += local(p).numel() * p.element_size()  # its gradient (same size; freed between steps by zero_grad)
    for state in trainer.optimizer.state.values():
        n += sum(local(v).numel() * v.element_size() for v in state.values() if torch.is_tensor(v) and v.dim())
    return n


def worker(spec: dict) -> None:
    import torch

    torch.set_num_threads(spec["threads"])
    from treepo_lab.config import load_config
    from treepo_lab.train import distributed
    from treepo_lab.train.trainer import Trainer

    trainer = Trainer(load_config("treepo_fixed_init", spec["overrides"]))
    world = trainer.world
    trainer.train_step(0)  # warm-up: allocator, engine caches, FSDP's first all-gathers
    times, tokens = [], []
    for s in range(1, spec["steps"] + 1):
        t0 = time.perf_counter()
        m = trainer.train_step(s)
        times.append(time.perf_counter() - t0)
        tokens.append(m.get("rollout/generated_tokens", 0.0))
    cuda = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    mine = {"state_mb": _state_bytes(trainer) / 2**20, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_cuda_mb": cuda}
    ranks = world.all_gather(mine)
    if world.is_main:
        print("RESULT " + json.dumps({"step_s": statistics.median(times), "tokens_per_s": sum(tokens) / sum(times),
                                      "per_rank": ranks}), flush=True)
    trainer.close()
    distributed.close_world(world)


# ---- orchestrator ----------------------------------------------------------------------------------------

def run_side(a: argparse.Namespace, ranks: int, threads: int, parallel: str) -> dict:
    spec = json.dumps({"threads": threads, "steps": a.steps, "overrides": overrides(a, parallel)})
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads), "TORCH_NUM_THREADS": str(threads)}
    env.pop("WORLD_SIZE", None)
    me = [str(Path(__file__).resolve()), "--worker", spec]
    cmd = [sys.executable, *me] if ranks == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks), *me]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if out.returncode != 0 or line is None:
        raise SystemExit(f"{ranks} rank(s) x {threads} thread(s) {parallel} failed:\n{out.stderr[-3000:]}")
    return {"ranks": ranks, "threads": threads, "parallel": parallel if ranks > 1 else "-",
            **json.loads(line[len("RESULT "):])}


def main(argv=None) -> dict:
    a = parse_args(argv)
    from treepo_lab.commands.output import configure_output

    configure_output(verbose=False)  # other libraries' INFO lines and progress bars stay hidden
    if a.worker:
        worker(json.loads(a.worker))
        return {}
    load = [os.getloadavg()[0]]
    print(f"global batch: {a.prompts} prompts x w={a.width}; {a.steps} timed steps; device {a.device}; "
          f"engine {a.engine}; model {a.model or f'embedded {a.layers}x{a.hidden}'}", flush=True)
    single = run_side(a, 1, a.ranks * a.threads, "ddp")
    rows = [single] + [run_side(a, a.ranks, a.threads, p) for p in a.parallel.split(",") if p and a.ranks > 1]
    load.append(os.getloadavg()[0])
    print(f"\n{'side':<22}{'step s':>9}{'tokens/s':>10}{'vs 1 rank':>11}  per rank: state MB / peak RSS MB"
          + (" / peak CUDA MB" if a.device.startswith("cuda") else ""))
    for r in rows:
        side = f"{r['ranks']} x {r['threads']} thread(s) {r['parallel']}"
        mem = "  ".join(f"{x['state_mb']:.1f}/{x['peak_rss_mb']:.0f}"
                        + (f"/{x['peak_cuda_mb']:.0f}" if x["peak_cuda_mb"] is not None else "") for x in r["per_rank"])
        print(f"{side:<22}{r['step_s']:>9.3f}{r['tokens_per_s']:>10.0f}{r['step_s'] / single['step_s']:>10.2f}x  {mem}")
    by = {r["parallel"]: r for r in rows[1:]}
    result = {"rows": rows, "load": load,
              "step_ratio": {p: r["step_s"] / single["step_s"] for p, r in by.items()}}
    if "ddp" in by and "fsdp" in by:
        result["fsdp_state_per_rank_vs_ddp"] = by["fsdp"]["per_rank"][0]["state_mb"] / by["ddp"]["per_rank"][0]["state_mb"]
        print(f"\nFSDP state per rank / DDP state per rank: {result['fsdp_state_per_rank_vs_ddp']:.3f} "
              f"(1/{a.ranks} = {1 / a.ranks:.3f} expected: parameters, gradients and Adam moments sharded)")
    print(f"load average before/after: {load[0]:.2f} / {load[1]:.2f}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
