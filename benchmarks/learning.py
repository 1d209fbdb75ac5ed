"""Learning benchmark: GRPO vs GRPO with tree sampling vs TreePO on the harder embedded task (`chain`,
tasks/chain.py: 4-operation chains, a method chosen up front; `--task arith` for the easy default, where
every method ends within a point of the others).

Each method trains the same warm-started model for the same number of steps, per seed; held-out greedy
accuracy (500 problems by default) is measured before and after. The seed is the unit of replication: each seed's
final held-out accuracy is one observation, and a method's interval is the 95% t interval of their mean
over seeds (scipy.stats.t, n-1 degrees of freedom; none with one seed), not a bootstrap over the pooled
per-problem results (problems of one run are not independent replications of training). Where a method
shares seeds with GRPO (same packing), the paired difference by seed (method - GRPO) gets its own mean and
t interval. Prints a table and writes JSON (`accuracy_before`, and per method `accuracy_after` (mean over
seeds), `ci95` (t interval over seeds), `vs_grpo` (paired by seed: `seeds`, `diff`, `mean`, `ci95`),
`decoded_tokens`, `wall_s`, `cpu_s`, `update_s` and `step_s` (means per training step), and per seed its run's
numbers with `eval_ci95`, the bootstrap interval over that one evaluation's problems). Runs log to an
MLflow store beside the JSON.

Each method runs with tree packing of the policy update on (`trainer.packing=tree`, the default) and off
(`flat`, entries named `<method>/flat`); the packing table compares their update and step times, and
checks that TreePO's step gets >= 25% faster with packing while its accuracy stays inside the unpacked
runs' interval over seeds (not checked with one seed).

    python benchmarks/learning.py            # 5 seeds x 3 methods x 2 packings, 40 steps, 500 problems
    python benchmarks/learning.py --packing tree   # packing on only
    python benchmarks/learning.py --quick    # 1 seed
    python benchmarks/learning.py --quick --steps 20 --eval-problems 500 --methods grpo treepo   # shortened
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from scipy import stats
from rich.table import Table

from treepo_lab.config import load_config
from treepo_lab.train.evaluate import bootstrap_ci
from treepo_lab.train.run import run_experiment

TASKS = {  # --task -> overrides of every run (chain: the settings of sweeps/paper.yaml)
    "chain": ["task.name=chain", "task.difficulty=4", "task.operand_max=19", "task.seed=1"],  # the confirmatory draw
    "arith": [],
}
METHODS = {  # label -> registry experiment
    "grpo": "grpo",
    "grpo_tree_sampling": "grpo_tree_sampling",
    "treepo": "treepo_fixed_init",
}


def run_one(method: str, seed: int, args, store: str, packing: str = "tree") -> dict:
    overrides = [
        f"trainer.packing={packing}",
        f"seed={seed}", f"trainer.steps={args.steps}", "trainer.eval_every=0", "trainer.save_every=0",
        f"trainer.eval_before={'true' if seed == args.seeds[0] and packing == args.packing[0] else 'false'}",
        f"trainer.max_wall_s={args.max_wall_s}", f"eval.n_problems={args.eval_problems}",
        f"tracking.tracking_uri={store}", "tracking.experiment_name=learning-benchmark",
        f"trainer.output_dir={args.out.parent / 'runs'}", *TASKS[args.task], *args.overrides,
    ]
    cfg = load_config(METHODS[method], overrides)
    trainer, history = run_experiment(cfg, progress=not args.no_progress)
    evals = [h for h in history if "eval/accuracy" in h]
    last_step = [h for h in history if "cumulative/rollout/decoded_tokens" in h and "actor/pg_loss" in h]
    per_problem = [float(np.mean(r["correct"])) for r in trainer.last_eval_records]
    steps = [h for h in history if "timing_s/step" in h]
    return {
        "packing": trainer.packing,  # what ran: tree, or flat when the model cannot take a tree mask
        "seed": seed,
        "accuracy_before": evals[0]["eval/accuracy"] if len(evals) > 1 else None,
        "accuracy_after": evals[-1]["eval/accuracy"],
        "eval_ci95": list(bootstrap_ci(per_problem, seed=seed)),  # this one evaluation's, over its problems
        "per_problem_correct": per_problem,
        "decoded_tokens": last_step[-1]["cumulative/rollout/decoded_tokens"] if last_step else 0.0,
        "prefill_tokens": last_step[-1]["cumulative/rollout/prefill_tokens"] if last_step else 0.0,
        "wall_s": last_step[-1]["time/wall_s"] if last_step else 0.0,
        "cpu_s": last_step[-1]["time/cpu_s"] if last_step else 0.0,  # training CPU seconds, all processes
        "update_s": float(np.mean([h["timing_s/update"] for h in steps])) if steps else 0.0,  # per step
        "step_s": float(np.mean([h["timing_s/step"] for h in steps])) if steps else 0.0,
        "steps": trainer.step,
        "run_id": getattr(trainer.tracker, "run_id", None),
    }


def t_interval(values) -> list[float] | None:
    """95% t interval of the mean of per-seed values; None with fewer than two (JSON null)."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return None
    half = float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return [float(v.mean()) - half, float(v.mean()) + half]


def paired_vs(runs: list[dict], base: list[dict]) -> dict | None:
    """The per-seed difference of final accuracy (runs - base) over the seeds both have."""
    by_seed = {r["seed"]: r["accuracy_after"] for r in base}
    seeds = [r["seed"] for r in runs if r["seed"] in by_seed]
    if not seeds:
        return None
    diff = [r["accuracy_after"] - by_seed[r["seed"]] for r in runs if r["seed"] in by_seed]
    return {"seeds": seeds, "diff": diff, "mean": float(np.mean(diff)), "ci95": t_interval(diff)}


def _ci(ci: list[float] | None) -> str:
    return "-" if ci is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def packing_table(methods: dict, names: list[str], console) -> dict:
    """Update and step time per method, tree packing against flat (means per training step)."""
    table = Table(title="policy update with tree packing (tree) and without (flat), seconds per step")
    for col in ("method", "update tree", "update flat", "ratio", "step tree", "step flat", "ratio",
                "accuracy tree", "flat 95% CI"):
        table.add_column(col)
    out = {}
    for m in names:
        t, f = methods[m], methods[f"{m}/flat"]
        inside = None if f["ci95"] is None else bool(f["ci95"][0] <= t["accuracy_after"] <= f["ci95"][1])
        out[m] = {"update_ratio": t["update_s"] / f["update_s"], "step_ratio": t["step_s"] / f["step_s"],
                  "step_drop": 1 - t["step_s"] / f["step_s"], "accuracy_inside_flat_ci": inside}
        table.add_row(m, f"{t['update_s']:.2f}", f"{f['update_s']:.2f}", f"{out[m]['update_ratio']:.2f}",
                      f"{t['step_s']:.2f}", f"{f['step_s']:.2f}", f"{out[m]['step_ratio']:.2f}",
                      f"{t['accuracy_after']:.3f}", _ci(f["ci95"]))
    console.print(table)
    if "treepo" in out:
        for name, ok in {"treepo step wall drops >= 25% with packing": out["treepo"]["step_drop"] >= 0.25,
                         "treepo packed accuracy inside the flat runs' 95% CI over seeds":
                             out["treepo"]["accuracy_inside_flat_ci"]}.items():
            Console().print(f"{'SKIP' if ok is None else 'PASS' if ok else 'MISS'}  {name}"
                            + (" (one seed: no interval)" if ok is None else ""))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one seed")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--task", default="chain", choices=list(TASKS), help="chain (the harder task) or arith")
    ap.add_argument("--steps", type=int, default=40, help="training steps (40: the paper budget, where the chain "
                    "task's curves have plateaued; sweeps/paper.yaml)")
    ap.add_argument("--max-wall-s", type=float, default=300.0, help="per-run training wall-clock cap")
    ap.add_argument("--eval-problems", type=int, default=500)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/learning.json"))
    ap.add_argument("--packing", nargs="+", default=["tree", "flat"], choices=["tree", "flat"],
                    help="trainer.packing values to run each method with (the first is the main table's)")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides applied to every method")
    args = ap.parse_args()
    from treepo_lab.commands.output import configure_output

    configure_output(verbose=False)  # other libraries' INFO lines and progress bars stay hidden
    if args.quick:
        args.seeds = args.seeds[:1]
    torch.set_num_threads(args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    store = f"sqlite:///{(args.out.parent / 'mlflow.db').resolve()}"

    label = lambda m, p: m if p == args.packing[0] else f"{m}/{p}"  # noqa: E731
    results: dict[str, list[dict]] = {label(m, p): [] for m in args.methods for p in args.packing}
    before = None
    t0 = time.perf_counter()
    for seed in args.seeds:  # seeds outermost, methods alternating: drift in machine load hits all alike
        for method in args.methods:
            for packing in args.packing:
                r = run_one(method, seed, args, store, packing)
                before = r["accuracy_before"] if r["accuracy_before"] is not None else before
                results[label(method, packing)].append(r)
                Console().print(f"[bold]{label(method, packing)}[/] seed {seed}: {r['accuracy_after']:.3f} after "
                                f"{r['steps']} steps, {r['decoded_tokens']:.0f} decoded tokens, {r['wall_s']:.0f} s, "
                                f"update {r['update_s']:.2f} s/step ({r['packing']})")

    summary = {"accuracy_before": before, "seeds": args.seeds, "steps": args.steps,
               "eval_problems": args.eval_problems, "total_s": time.perf_counter() - t0, "methods": {}}
    base_tokens = np.mean([r["decoded_tokens"] for r in results.get("grpo", [])]) if "grpo" in results else None
    console = Console(width=170)
    table = Table(title=f"held-out greedy accuracy (before: {before:.3f})")
    for col in ("method", "accuracy_after (mean)", "95% CI (seeds)", "gain", "vs grpo (paired)", "paired 95% CI",
                "decoded tokens", "tokens / grpo", "wall s", "update s/step", "step s"):
        table.add_column(col)
    for method, runs in results.items():
        accs = [r["accuracy_after"] for r in runs]  # one observation per seed
        acc = float(np.mean(accs))
        tokens = float(np.mean([r["decoded_tokens"] for r in runs]))
        packing = method.split("/", 1)[1] if "/" in method else args.packing[0]
        grpo = label("grpo", packing)  # the GRPO arm of the same packing
        vs = paired_vs(runs, results[grpo]) if grpo in results and grpo != method else None
        entry = {
            "accuracy_after": acc, "ci95": t_interval(accs), "n_seeds": len(runs), "gain": acc - before,
            "vs_grpo": vs,
            "decoded_tokens": tokens, "wall_s": float(np.mean([r["wall_s"] for r in runs])),
            "cpu_s": float(np.mean([r["cpu_s"] for r in runs])),
            "update_s": float(np.mean([r["update_s"] for r in runs])),
            "step_s": float(np.mean([r["step_s"] for r in runs])), "packing": runs[0]["packing"],
            "tokens_vs_grpo": tokens / base_tokens if base_tokens else None,
            "per_seed": [{k: v for k, v in r.items() if k != "per_problem_correct"} for r in runs],
        }
        summary["methods"][method] = entry
        table.add_row(method, f"{acc:.3f}", _ci(entry["ci95"]), f"{acc - before:+.3f}",
                      f"{vs['mean']:+.3f}" if vs else "-", _ci(vs["ci95"]) if vs else "-", f"{tokens:.0f}",
                      f"{entry['tokens_vs_grpo']:.2f}" if base_tokens else "-", f"{entry['wall_s']:.0f}",
                      f"{entry['update_s']:.2f}", f"{entry['step_s']:.2f}")
    console.print(table)
    if len(args.packing) == 2:
        summary["packing"] = packing_table(summary["methods"], args.methods, console)
    if "treepo" in summary["methods"] and "grpo" in summary["methods"]:
        tp, gr = summary["methods"]["treepo"], summary["methods"]["grpo"]
        checks = {
            "treepo gain >= 0.10": bool(tp["gain"] >= 0.10),
            "treepo within 300 s of training": bool(max(r["wall_s"] for r in tp["per_seed"]) <= 300),
            "treepo accuracy >= grpo": bool(tp["accuracy_after"] >= gr["accuracy_after"]),
            "treepo decoded tokens <= 0.7 x grpo": bool(tp["tokens_vs_grpo"] <= 0.7),
        }
        summary["targets"] = checks
        for name, ok in checks.items():
            Console().print(f"{'PASS' if ok else 'MISS'}  {name}")
    summary["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    args.out.write_text(json.dumps(summary, indent=1, default=lambda o: o.item() if hasattr(o, "item") else str(o)))
    Console().print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
