"""Report benchmark: time to load and report a 50-run sweep from a local MLflow store, cold (empty
history cache) and cached (second report, nothing changed). Targets: <= 60 s cold, <= 10 s cached on
2 cores.

The 50 runs are synthetic but realistic: one REAL short training run (tiny model) is recorded, then its
metric histories, params, tags and tree artifact are logged 50 times (5 strategies x 10 seeds) into a
fresh SQLite store with per-seed multiplicative noise (sd 5%) on every value, so the report sees the
same keys, step counts and artifacts a real 50-run sweep of that length would log.

    python benchmarks/report.py                  # records a 20-step run, 50 runs, 2 cold + 3 cached reports
    python benchmarks/report.py --steps 60 --runs 50 --json out.json
"""
from __future__ import annotations

import argparse
import os
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from treepo_lab.analysis.report import build_report
from treepo_lab.config import load_config
from treepo_lab.train.run import run_experiment

STRATEGIES = ("grpo", "grpo_tree_sampling", "treepo_fixed_init", "treepo_more_init", "low_prob_encourage")


def record_real_run(root: Path, steps: int, ws_cache: str | None) -> tuple[str, str]:
    uri = f"sqlite:///{root}/source.db"
    # the registry's TreePO settings (8x16 trees, 16 leaves): shorter trees never reach a boxed answer,
    # every step would be skipped and log none of the training metrics a real sweep has
    over = [f"trainer.steps={steps}", "trainer.eval_every=5", "eval.n_problems=64", f"tracking.tracking_uri={uri}",
            "tracking.experiment_name=source", "tracking.system_metrics=false",
            "tracking.log_trees_every=1", f"trainer.output_dir={root / 'runs'}"]
    if ws_cache:
        over += [f"warmstart.cache_dir={ws_cache}", "warmstart.steps=30", "warmstart.eval_size=0"]
    trainer, _ = run_experiment(load_config("treepo_fixed_init", over), progress=False)
    return uri, trainer.tracker.run_id


def replicate(src_uri: str, src_id: str, dst_uri: str, n_runs: int, root: Path) -> int:
    """Log n_runs noisy copies of the source run into a sweep-like experiment; returns metric points per run."""
    src, dst = MlflowClient(src_uri), MlflowClient(dst_uri)
    run = src.get_run(src_id)
    hist = {k: src.get_metric_history(src_id, k) for k in run.data.metrics}
    has_trees = any(a.path == "trees" for a in src.list_artifacts(src_id))
    tree_dir = Path(src.download_artifacts(src_id, "trees", str(root / "src_artifacts"))) if has_trees else None
    exp = dst.create_experiment("bench")
    rng = np.random.default_rng(0)
    for i in range(n_runs):
        strategy, seed = STRATEGIES[i % len(STRATEGIES)], i // len(STRATEGIES)
        tags = {**{k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")},
                "treepo.experiment": strategy, "treepo.strategy": strategy, "treepo.seed": str(seed)}
        new = dst.create_run(exp, run_name=f"{strategy}-s{seed}")
        rid = new.info.run_id
        scale = 1 + 0.05 * rng.standard_normal(len(hist))
        metrics = [Metric(k, float(m.value * s), m.timestamp, m.step) for (k, ms), s in zip(hist.items(), scale) for m in ms]
        params = [Param(k, v) for k, v in run.data.params.items()]
        for j in range(0, len(params), 100):
            dst.log_batch(rid, params=params[j:j + 100])
        dst.log_batch(rid, tags=[RunTag(k, v) for k, v in tags.items()])
        for j in range(0, len(metrics), 1000):
            dst.log_batch(rid, metrics=metrics[j:j + 1000])
        if tree_dir is not None:
            dst.log_artifacts(rid, str(tree_dir), "trees")
        dst.set_terminated(rid, "FINISHED")
    return sum(len(v) for v in hist.values())


def main(argv=None) -> dict:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--steps", type=int, default=20, help="steps of the recorded real run")
    ap.add_argument("--cold", type=int, default=2, help="cold repeats (each with an empty cache)")
    ap.add_argument("--cached", type=int, default=3, help="cached repeats")
    ap.add_argument("--ws-cache", default=None, help="a warm-start cache dir for a 30-step warm start "
                    "(default: the project's cached warm start)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    from treepo_lab.commands.output import configure_output

    configure_output(verbose=False)  # other libraries' INFO lines and progress bars stay hidden
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="report-bench-"))
    t = time.perf_counter()
    src_uri, src_id = record_real_run(root, args.steps, args.ws_cache)
    record_s = time.perf_counter() - t
    dst_uri = f"sqlite:///{root}/bench.db"
    t = time.perf_counter()
    points = replicate(src_uri, src_id, dst_uri, args.runs, root)
    fill_s = time.perf_counter() - t
    print(f"recorded a real {args.steps}-step run in {record_s:.0f} s; logged {args.runs} noisy copies "
          f"({points} metric points each) in {fill_s:.0f} s", file=sys.stderr)

    def one(cache: Path) -> dict:
        t0 = time.perf_counter()
        res = build_report(experiment="bench", tracking_uri=dst_uri, out_dir=root / "out", cache_dir=cache,
                           group_by=["treepo.strategy"], baseline="grpo")
        return {"total_s": time.perf_counter() - t0, "load_s": res.seconds["load"], "figures": len(res.figures)}

    cold = [one(root / f"cache-cold-{i}") for i in range(args.cold)]
    cache = root / "cache-cold-0"
    cached = [one(cache) for _ in range(args.cached)]
    med = lambda rows, k: statistics.median(r[k] for r in rows)
    out = {"runs": args.runs, "metric_points_per_run": points, "recorded_steps": args.steps,
           "cold_s": med(cold, "total_s"), "cold_load_s": med(cold, "load_s"),
           "cached_s": med(cached, "total_s"), "cached_load_s": med(cached, "load_s"),
           "figures": cold[0]["figures"], "cold_all": cold, "cached_all": cached,
           "targets": {"cold_s": 60.0, "cached_s": 10.0}}
    out["cold_vs_target"] = out["cold_s"] / 60.0
    out["cached_vs_target"] = out["cached_s"] / 10.0
    out["cold_over_cached"] = out["cold_s"] / out["cached_s"]
    print(f"{'':10} {'total s':>8} {'load s':>8} {'target s':>9} {'ratio':>6}")
    print(f"{'cold':10} {out['cold_s']:8.1f} {out['cold_load_s']:8.1f} {60:9.0f} {out['cold_vs_target']:6.2f}")
    print(f"{'cached':10} {out['cached_s']:8.1f} {out['cached_load_s']:8.1f} {10:9.0f} {out['cached_vs_target']:6.2f}")
    print(f"cold / cached: {out['cold_over_cached']:.1f}x  (medians of {args.cold} cold and {args.cached} cached reports; "
          f"{out['figures']} figure files each; shared machine: noisy)")
    text = json.dumps(out, indent=2)
    if args.json:
        args.json.write_text(text)
    print(text)
    return out


if __name__ == "__main__":
    main()
