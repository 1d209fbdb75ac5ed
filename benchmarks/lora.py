"""LoRA benchmark (issue 27): training steps of one config with every weight trained against LoRA adapters only
(`model.lora.r`), measured in one invocation, each side in its own process so peak memory is its own.

Each side builds the Trainer (no MLflow), runs one warm-up step, then `--steps` timed steps and reports:
  step_s        median wall time of a step (rollout + scoring + update)
  update_s      median time of the policy update alone
  trained_mb    the parameters the optimizer trains, with their gradients and AdamW's two moments
  peak_rss_mb   the process's peak resident set (Python, torch, the model, the engine)
then the ratios LoRA / full.

  python benchmarks/lora.py                    # the real model: experiments/real_small.yaml (SmolLM2-135M)
  python benchmarks/lora.py --experiment default --steps 2   # the embedded model
  python benchmarks/lora.py --smoke            # seconds: the plumbing only
The machine is shared: run it on a quiet machine (two busy processes slow a forward many times over).
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", default="real_small")
    p.add_argument("--steps", type=int, default=3, help="timed training steps (after one warm-up step)")
    p.add_argument("--rank", type=int, default=8, help="model.lora.r of the LoRA side")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--set", nargs="*", default=[], help="more config overrides key=value (both sides)")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/lora.json"))
    p.add_argument("--smoke", action="store_true", help="the embedded model, tiny sizes, 1 timed step")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.smoke:
        a.experiment, a.steps = "default", 1
        a.set = [*a.set, "warmstart.steps=20", "warmstart.eval_size=0", "trainer.prompts_per_step=2",
                 "sampler.width=4", "sampler.max_depth=2", "sampler.segment_len=8", "sampler.fallback_block_size=8",
                 "reward.dynamic_sampling=false", "reward.overlong_buffer=8"]  # varied rewards from an untrained model
    return a


def worker(a: argparse.Namespace) -> dict:
    import torch

    from treepo_lab.commands.output import configure_output
    from treepo_lab.config import load_config
    from treepo_lab.train.trainer import Trainer

    configure_output(False)
    torch.set_num_threads(a.threads)
    cfg = load_config(a.experiment, [f"trainer.steps={a.steps + 1}", "trainer.eval_before=false", "trainer.eval_every=0",
                                     "trainer.save_every=0", "tracking.enabled=false", f"model.lora.r={a.worker}", *a.set])
    trainer = Trainer(cfg)
    history = [h for h in trainer.fit(progress=False) if "timing_s/step" in h][1:]  # the warm-up step left out
    trained = [p for g in trainer.optimizer.param_groups for p in g["params"]]
    return {"lora_r": int(a.worker), "steps": len(history),
            "step_s": statistics.median(h["timing_s/step"] for h in history),
            "update_s": statistics.median(h["timing_s/update"] for h in history),
            "trained_params": sum(p.numel() for p in trained),
            "trained_mb": 4 * sum(p.numel() * p.element_size() for p in trained) / 2**20,  # weights, grads, 2 moments
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.worker is not None:
        print(json.dumps(worker(a)))
        return 0
    rows = []
    for r in (0, a.rank):
        cmd = [sys.executable, __file__, "--worker", str(r), "--experiment", a.experiment, "--steps", str(a.steps),
               "--threads", str(a.threads), "--set", *a.set]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(f"{'full' if r == 0 else f'LoRA r={r}'}: " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                                                               for k, v in rows[-1].items()))
    full, lora = rows
    ratios = {k: lora[k] / full[k] for k in ("step_s", "update_s", "trained_mb", "peak_rss_mb")}
    print("LoRA / full: " + ", ".join(f"{k} {v:.3f}x" for k, v in ratios.items()))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"experiment": a.experiment, "full": full, "lora": lora, "ratios": ratios}, indent=2))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
