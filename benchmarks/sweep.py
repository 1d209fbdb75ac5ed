"""Sweep machinery cost and parallel throughput, both sides measured in one run.

1. Per trial, the time outside training: the trial's wall time in Optuna (ask to tell) minus the time spent
   in run_experiment (storage, ask/tell, config composition, MLflow parent/child bookkeeping), and inside
   run_experiment the time outside the training loop (tracker start, model load, final logging) that a
   plain `treepo-lab train` pays as well. Worker start-up (imports) is paid once per worker; reported apart.
2. Trials per hour for the same grid with 1 worker x 2 threads and with 2 workers x 1 thread.

Targets: sweep machinery <= 5% of a trial's wall time or <= 2 s; 2x1 >= 1.3x the trials/hour of 1x2.
The machine may be shared: os.getloadavg() is recorded before and after each side, and the numbers are only
as quiet as the machine was.

    python benchmarks/sweep.py [--trials 6] [--steps 4] [--out benchmarks/results/sweep.json]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import optuna
import yaml

from treepo_lab.config import load_config, warmstart_config
from treepo_lab.models.warmstart import warmstart
from treepo_lab.sweep import storage as sto
from treepo_lab.sweep.driver import run_sweep


def overrides(ws_cache: str | None, out: Path, steps: int) -> dict:
    o = {"trainer.steps": steps, "trainer.prompts_per_step": 4, "trainer.mini_batch_prompts": 4,
         "trainer.eval_every": 0, "trainer.save_every": 0, "trainer.output_dir": str(out / "runs"),
         "sampler.width": 8, "sampler.max_depth": 4, "sampler.segment_len": 16, "eval.n_problems": 32,
         "tracking.system_metrics": False, "tracking.log_trees_every": 0}
    if ws_cache:
        o["warmstart.cache_dir"] = ws_cache
    return o


def one_sweep(tmp: Path, name: str, over: dict, trials: int, workers: int) -> dict:
    spec = tmp / f"{name}.yaml"
    spec.write_text(yaml.safe_dump({"name": name, "experiment": "treepo_fixed_init", "overrides": over,
                                    # distinct trials of equal cost: only the learning rate differs
                                    "grid": {"trainer.lr": [round(1e-5 * (i + 1), 8) for i in range(trials)]},
                                    "seeds": [0]}, sort_keys=False))
    load0, started = os.getloadavg(), time.time()
    t0 = time.perf_counter()
    summary = run_sweep(str(spec), [], workers=workers, tracking_uri=f"sqlite:///{tmp}/mlflow.db", out=io.StringIO())
    wall = time.perf_counter() - t0
    study = optuna.load_study(study_name=name, storage=sto.open_storage(summary["storage"]))
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(done) == trials, f"{name}: {len(done)}/{trials} trials complete ({summary['status']})"
    per = []
    for t in done:
        trial_s = (t.datetime_complete - t.datetime_start).total_seconds()
        tm = t.user_attrs["timing"]
        per.append({"trial_s": trial_s, "machinery_s": trial_s - tm["run_s"],
                    "run_overhead_s": tm["run_s"] - tm["train_s"], "train_s": tm["train_s"]})
    first = min(t.datetime_start for t in study.trials)
    return {"workers": workers, "threads": max(1, (len(os.sched_getaffinity(0))) // workers), "trials": trials,
            "sweep_wall_s": wall, "trials_per_hour": 3600 * trials / wall, "per_trial": per,
            "start_to_first_trial_s": first.timestamp() - started,  # validation, study, parent run, worker start
            "loadavg_before": load0, "loadavg_after": os.getloadavg(), "status": summary["status"]}


def med(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=6, help="grid points (trials) per side")
    p.add_argument("--steps", type=int, default=4, help="trainer.steps per trial")
    p.add_argument("--ws-cache", default=None, help="warm-start cache dir (default: the user cache)")
    p.add_argument("--out", default="benchmarks/results/sweep.json")
    a = p.parse_args(argv)
    from treepo_lab.commands.output import configure_output

    configure_output(verbose=False)  # other libraries' INFO lines and progress bars stay hidden
    os.environ.setdefault("PYTHONPATH", str(Path(__file__).resolve().parent.parent))
    with tempfile.TemporaryDirectory(prefix="treepo-sweep-bench-") as tmp_s:
        tmp = Path(tmp_s)
        over = overrides(a.ws_cache, tmp, a.steps)
        warmstart(warmstart_config(load_config("treepo_fixed_init", [f"{k}={v}" for k, v in over.items()])))
        print(f"loadavg at start {os.getloadavg()} (shared machine: numbers are under this load)", flush=True)
        sides = {}
        for label, workers in (("1x2", 1), ("2x1", 2)):
            print(f"sweep {label}: {a.trials} trials ...", flush=True)
            sides[label] = one_sweep(tmp, f"bench{label}", over, a.trials, workers)
    rows = sides["1x2"]["per_trial"]
    machinery, trial_s = med(rows, "machinery_s"), med(rows, "trial_s")
    res = {
        "per_trial_median": {k: med(rows, k) for k in ("trial_s", "machinery_s", "run_overhead_s", "train_s")},
        "machinery_share": machinery / trial_s,
        "machinery_target_met": machinery <= max(0.05 * trial_s, 2.0),
        "throughput_ratio_2x1_vs_1x2": sides["2x1"]["trials_per_hour"] / sides["1x2"]["trials_per_hour"],
        "sides": sides,
    }
    res["throughput_target_met"] = res["throughput_ratio_2x1_vs_1x2"] >= 1.3
    m = res["per_trial_median"]
    print(f"per trial (median of {len(rows)}, 1 worker x 2 threads): wall {m['trial_s']:.2f} s, sweep machinery "
          f"{m['machinery_s']:.2f} s ({res['machinery_share']:.1%}; target <= 5% or <= 2 s: "
          f"{'met' if res['machinery_target_met'] else 'NOT met'}), run_experiment outside the training loop "
          f"{m['run_overhead_s']:.2f} s, training loop {m['train_s']:.2f} s")
    for label, s in sides.items():
        print(f"{label}: {s['trials']} trials in {s['sweep_wall_s']:.1f} s = {s['trials_per_hour']:.0f} trials/h "
              f"(loadavg {s['loadavg_before'][0]:.1f} -> {s['loadavg_after'][0]:.1f})")
    print(f"2 workers x 1 thread / 1 worker x 2 threads: {res['throughput_ratio_2x1_vs_1x2']:.2f}x trials/h "
          f"(target >= 1.3x: {'met' if res['throughput_target_met'] else 'NOT met'})")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, default=str))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
