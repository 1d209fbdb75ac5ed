"""Subgroup benchmark: how often the leaves below one early node disagree, on the warm-started model,
before any training, for `chain` (the decision in segment 1) and `chain_mid` (the decision in segment 4).

A TreePO subgroup is the set of leaves under one internal node (TreePO, arXiv 2508.17445). Where every
subgroup below the root is all right or all wrong, its baseline equals its leaves' reward and the
advantage carries no more than GRPO's root baseline (and a shallower credit); where subgroups at depth
>= 1 mix right and wrong leaves, their baselines differ from the root's and credit can land inside the
tree. Per task this samples `--prompts` trees of `sampler.width` leaves with the experiment's sampler
(default `treepo_fixed_init`: b=2, 8x16, fallback on), scores the leaves as training does, and prints:

  prompts mixed   share of prompts whose leaves mix right and wrong answers
  depth>=1 mixed  share of the subgroups at depth >= 1 (internal nodes below the root with >= 2 leaves
                  under them) whose leaves mix right and wrong answers; then per depth
  |V_sub - V_root| mean over those subgroups of |mean reward under the node - mean reward of its prompt|
  accuracy        share of right leaves;  length  mean response tokens per leaf;  leaves  per prompt
  fallback        tree/fallback_count: paths the fallback restarted (rollout/accounting.py)
  warm start      greedy and T=1 sample accuracy of the checkpoint on 200 held-out problems (from its
                  cache entry: what the warm start measured when it was built)

Fixed seeds (problems: np.random.default_rng(--seed); sampler: seed=--seed), so a rerun prints the same
numbers. Writes JSON beside (`--out`). Builds (and caches) each task's warm start if it is missing:
about 6 minutes per task on one thread.

    python benchmarks/subgroups.py                      # chain and chain_mid, 32 prompts x 16 leaves
    python benchmarks/subgroups.py --prompts 8 --tasks chain_mid sampler.width=8
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

TASKS = {  # --tasks -> overrides (chain: the settings of sweeps/paper.yaml; chain_mid: the same chains)
    "chain": ["task.name=chain", "task.difficulty=4", "task.operand_max=19"],
    "chain_mid": ["task.name=chain_mid", "task.difficulty=4", "task.operand_max=19"],
}


def subgroup_stats(trees, correct: list[list[bool]]) -> dict:
    """Mixed shares over prompts and over the subgroups at depth >= 1 (>= 2 leaves under the node)."""
    from treepo_lab.algo.tree_stats import leaves_under, paths

    mixed = lambda xs: 0 < sum(xs) < len(xs)  # noqa: E731
    prompts_mixed, gaps = [], []
    by_depth: dict[int, list[bool]] = defaultdict(list)
    for tree, cs in zip(trees, correct):
        rs = [float(c) for c in cs]
        prompts_mixed.append(mixed(rs))
        root = float(np.mean(rs)) if rs else 0.0
        for prefix, under in leaves_under(paths(tree), rs).items():
            if len(prefix) >= 1 and len(under) >= 2:
                by_depth[len(prefix)].append(mixed(under))
                gaps.append(abs(float(np.mean(under)) - root))
    sub = [m for ms in by_depth.values() for m in ms]
    return {"prompts_mixed": float(np.mean(prompts_mixed)), "subgroups": len(sub),
            "subgroups_mixed": float(np.mean(sub)) if sub else 0.0,
            "mean_abs_gap": float(np.mean(gaps)) if gaps else 0.0,
            "by_depth": {d: {"subgroups": len(ms), "mixed": float(np.mean(ms))} for d, ms in sorted(by_depth.items())}}


def measure(task_name: str, args) -> dict:
    from treepo_lab.algo.reward import score_leaves
    from treepo_lab.algo.scoring import Scorer
    from treepo_lab.config import load_config
    from treepo_lab.models.warmstart import MARKER
    from treepo_lab.rollout.sampler import build_sampler
    from treepo_lab.train.setup import build_setup

    cfg = load_config(args.experiment, [*TASKS[task_name], f"seed={args.seed}", f"sampler.seed={args.seed}",
                                        *args.overrides])
    s = build_setup(cfg)  # the model, task, prompts and engine as `treepo-lab rollout` builds them
    model_dir, task, fmt, decode = s.model_dir, s.task, s.prompts, s.decode
    problems = [fmt.problem(p) for p in task.sample(args.prompts, np.random.default_rng(args.seed))]
    sampler = build_sampler(cfg.sampler, s.engine, decode, s.tokenizer.eos_token_id)
    t0 = time.perf_counter()
    result = sampler.rollout([fmt.encode(p.prompt) for p in problems], seed=cfg.seed)
    wall = time.perf_counter() - t0
    with Scorer(task, decode, cfg.trainer.reward_timeout_s) as scorer:  # the reward training would give
        correct, _ = score_leaves(result.trees, problems, scorer, cfg.reward, cfg.sampler.max_response_len)
    lengths = [sum(t.segment_lengths(lf)) for t in result.trees for lf in t.leaves]
    marker = Path(model_dir) / MARKER
    warm = json.loads(marker.read_text()) if marker.is_file() else {}
    metrics = result.metrics()
    return {"task": task_name, "prompts": len(problems), "width": cfg.sampler.width, "shape": cfg.sampler.shape,
            **subgroup_stats(result.trees, correct),
            "accuracy": float(np.mean([c for cs in correct for c in cs])),
            "mean_length": float(np.mean(lengths)), "fallback_count": metrics.get("tree/fallback_count", 0.0),
            "leaves_per_prompt": float(np.mean([len(t.leaves) for t in result.trees])),
            "warm_greedy_accuracy": warm.get("greedy_accuracy"), "warm_sample_accuracy_t1": warm.get("sample_accuracy_t1"),
            "warm_mixed_fraction_16": warm.get("mixed_fraction_16"), "warmstart_key": Path(model_dir).name,
            "rollout_s": round(wall, 2)}


def print_table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    depths = sorted({d for r in rows for d in r["by_depth"]})
    table = Table(title="leaves that disagree below one node, warm-started model, before training")
    for col in ("task", "prompts", "prompts mixed", "depth>=1 mixed", *(f"d{d}" for d in depths),
                "|V_sub-V_root|", "accuracy", "length", "leaves", "fallback", "warm greedy", "warm T=1"):
        table.add_column(col, justify="left" if col == "task" else "right")
    fmt = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
    for r in rows:
        per_depth = [f"{r['by_depth'][d]['mixed']:.2f} ({r['by_depth'][d]['subgroups']})" if d in r["by_depth"] else "-"
                     for d in depths]
        table.add_row(r["task"], str(r["prompts"]), fmt(r["prompts_mixed"]),
                      f"{r['subgroups_mixed']:.3f} ({r['subgroups']})", *per_depth, fmt(r["mean_abs_gap"]),
                      fmt(r["accuracy"]), f"{r['mean_length']:.1f}", f"{r['leaves_per_prompt']:.1f}",
                      f"{r['fallback_count']:.0f}",
                      fmt(r["warm_greedy_accuracy"]), fmt(r["warm_sample_accuracy_t1"]))
    Console(width=200).print(table)
    print("depth>=1 mixed: share of subgroups at depth >= 1 (>= 2 leaves) mixing right and wrong leaves "
          "(count in brackets); dN: the same at depth N")


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    ap.add_argument("--experiment", default="treepo_fixed_init", help="registry experiment (its sampler)")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "subgroups.json")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides applied to every task, e.g. sampler.width=8")
    args = ap.parse_args(argv)
    from treepo_lab.commands.output import configure_output

    configure_output(verbose=False)  # other libraries' INFO lines and progress bars stay hidden
    import torch

    torch.set_num_threads(args.threads)
    rows = [measure(t, args) for t in args.tasks]
    print_table(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                                    "rows": rows}, indent=2))
    print(f"wrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
