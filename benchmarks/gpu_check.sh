#!/usr/bin/env bash
# First contact with a GPU: the GPU test subset, then the rollout and packing benchmarks on CUDA, and ONE
# summary table at the end (GPU name, each check PASS/FAIL, the key ratios). Under 8 minutes on one GPU.
#
#   bash benchmarks/gpu_check.sh                # on a CUDA machine with the project installed (make setup) ...
#   WHEELS=dir bash benchmarks/gpu_check.sh     # ... or with torch + transformers only, the rest carried as
#                                               # wheels (default dir: wheels/ if it exists; see gpu_wheels.txt)
#   DRY_RUN=1 bash benchmarks/gpu_check.sh      # the same sequence on CPU with tiny sizes (the rehearsal that
#                                               # tests/test_gpu_check.py runs): device cpu, --smoke models
# Steps: wheels (if any) -> device -> warm start of the embedded model -> pytest -m gpu (tests/test_gpu.py,
# TREEPO_TEST_DEVICE=cuda) -> benchmarks/rollout.py --device cuda (tree vs sequential vs generate, HF engine,
# the CPU-sized grid) -> benchmarks/packing.py --device cuda (tree-packed vs flat update, 8x16) -> summary.
# A failing step does not stop the others. Exit status 0 only when every check passes.
# Env: PY (python; default .venv/bin/python, else python3), OUTDIR (logs, JSON, summary; default
# benchmarks/results/gpu_check), BUDGET_S (whole run, default 450), REPEATS (benchmark repeats, default 3),
# THREADS (torch threads of the benchmarks, default 4), SITE (where carried wheels go, default /tmp/treepo_site).
set -uo pipefail  # no -e: each step's status is recorded and the next step still runs
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
OUTDIR=${OUTDIR:-benchmarks/results/gpu_check}
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
STEPS=$OUTDIR/steps.tsv LOG=$OUTDIR/gpu_check.log
: >"$STEPS"
: >"$LOG"
(cd "$OUTDIR" && rm -f device.json warmstart.json gpu_tests.xml rollout.json packing.json summary.json)
export PYTHONUNBUFFERED=1 PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PIP_ROOT_USER_ACTION=ignore
REPEATS=${REPEATS:-3}
THREADS=${THREADS:-4}
WHEELS=${WHEELS:-}
for d in wheels .whl; do [ -z "$WHEELS" ] && [ -d $d ] && WHEELS=$d; done
# a warm start carried in the checkout (.cache/warmstart, gitignored) is used instead of building one
[ -z "${TREEPO_CACHE_DIR:-}" ] && [ -d .cache/warmstart ] && export TREEPO_CACHE_DIR=$ROOT/.cache

if [ -n "${DRY_RUN:-}" ]; then
  device=cpu; BUDGET_S=${BUDGET_S:-300}
  ws_tmp=$(mktemp -d); trap 'rm -rf "$ws_tmp"' EXIT
  ws_cfg="steps=2, warmup_steps=1, batch_size=4, eval_size=0, cache_dir='$ws_tmp'" ws_threads=1
  rollout=(--smoke --device cpu)
  packing=(--smoke --device cpu)
  echo "dry run on CPU: the GPU sequence with device=cpu, --smoke models and a 2-step warm start"
else
  device=cuda; BUDGET_S=${BUDGET_S:-450}
  # the embedded default, as rollout.py and packing.py load it (eval_size is not part of the cache key: the same
  # checkpoint without its accuracy printout)
  ws_cfg="eval_size=0" ws_threads="min(8, os.cpu_count() or 1)"
  rollout=(--device cuda --repeats "$REPEATS" --threads "$THREADS" --max-load 1e9)
  packing=(--device cuda --grid 8x16 --grpo-grid 8x16 --repeats "$REPEATS" --threads "$THREADS")
fi
START=$SECONDS
ABORT=

# step NAME LIMIT_S CMD...: runs CMD under the time left (at most LIMIT_S), output to the terminal and the log
step() {
  local name=$1 limit=$2 left rc t0
  shift 2
  left=$((BUDGET_S - (SECONDS - START)))
  [ "$left" -lt "$limit" ] && limit=$left
  echo "== $name" | tee -a "$LOG"
  if [ -n "$ABORT" ]; then
    echo "not run: $ABORT" | tee -a "$LOG"
    printf '%s\t%s\t%s\n' "$name" abort 0 >>"$STEPS"
    return
  fi
  if [ "$limit" -lt 10 ]; then
    echo "skipped: the ${BUDGET_S}s budget is spent" | tee -a "$LOG"
    printf '%s\t%s\t%s\n' "$name" budget 0 >>"$STEPS"
    return
  fi
  t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  printf '%s\t%s\t%s\n' "$name" "$rc" $((SECONDS - t0)) >>"$STEPS"
}

if [ -n "$WHEELS" ]; then
  if [ -n "${DRY_RUN:-}" ]; then
    echo "== wheels: dry run, not installed: $PY -m pip install --no-index --no-deps --find-links $WHEELS" \
      "--target ${SITE:-/tmp/treepo_site} -r benchmarks/gpu_wheels.txt" | tee -a "$LOG"
    printf 'wheels\tdry\t0\n' >>"$STEPS"
  else
    SITE=${SITE:-/tmp/treepo_site}
    step wheels 90 "$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile \
      --find-links "$WHEELS" --target "$SITE" -r benchmarks/gpu_wheels.txt
    export PYTHONPATH="$PYTHONPATH:$SITE"  # ahead of site-packages: only what the machine lacks is carried
  fi
fi
step device 60 "$PY" -c "
import json, platform, sys, torch, transformers
cuda = '$device' == 'cuda'
if cuda and not torch.cuda.is_available():
    sys.exit('no CUDA device visible to $PY; DRY_RUN=1 runs the CPU rehearsal')
name = torch.cuda.get_device_name(0) if cuda else 'cpu (dry run)'
info = {'device': name, 'torch': torch.__version__, 'transformers': transformers.__version__,
        'python': platform.python_version(), 'cuda': torch.version.cuda if cuda else None}
print(json.dumps(info))
open('$OUTDIR/device.json', 'w').write(json.dumps(info))"
[ "$(tail -n1 "$STEPS" | cut -f2)" = 0 ] || ABORT="no usable $device device (see the device step)"
# built here with several threads (the benchmarks run with few and would build it themselves, slower)
step "warm start" 180 "$PY" -c "
import json, os, time, torch
torch.set_num_threads($ws_threads)
from treepo_lab.models.config import WarmstartConfig
from treepo_lab.models.warmstart import MARKER, cache_key, cache_root, warmstart
cfg = WarmstartConfig($ws_cfg)
cached, t0 = (cache_root(cfg) / cache_key(cfg) / MARKER).is_file(), time.perf_counter()
path = warmstart(cfg)
info = {'path': str(path), 'cached': cached, 'seconds': round(time.perf_counter() - t0, 1),
        'threads': torch.get_num_threads(), **json.loads((path / MARKER).read_text())}
info.pop('config', None)
print(json.dumps(info))
open('$OUTDIR/warmstart.json', 'w').write(json.dumps(info))"
ws_rc=$(tail -n1 "$STEPS" | cut -f2)
step "gpu tests" 200 env TREEPO_TEST_DEVICE="$device" "$PY" -m pytest -m gpu -q -rs -p no:cacheprovider \
  -o addopts="" --junitxml="$OUTDIR/gpu_tests.xml" tests/test_gpu.py
if [ -z "${DRY_RUN:-}" ] && [ -z "$ABORT" ] && [ "$ws_rc" != 0 ]; then
  # no warm start: the benchmarks would build one each on few threads; a random tiny model keeps them in time
  echo "warm start unavailable: the benchmarks run on the --smoke random model" | tee -a "$LOG"
  rollout+=(--smoke) packing+=(--smoke)
  printf 'smoke\t1\t0\n' >>"$STEPS"
fi
step rollout 150 "$PY" benchmarks/rollout.py "${rollout[@]}" --out "$OUTDIR/rollout.json"
step packing 150 "$PY" benchmarks/packing.py "${packing[@]}" --out "$OUTDIR/packing.json"

"$PY" - "$OUTDIR" "$device" "$((SECONDS - START))" <<'EOF'
"""The summary table: one line per check, read from steps.tsv and the files each step wrote."""
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

out, device, total = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
GRAD_TOL = 1e-4  # tree-packed vs flat gradients, float32: the exactness bound of tests/test_packing.py


def load(name):
    try:
        return json.loads((out / name).read_text())
    except (OSError, ValueError):
        return None


def status(rc):
    named = {"0": "PASS", "124": "TIMEOUT", "137": "TIMEOUT", "budget": "SKIP", "dry": "SKIP", "abort": "NOT RUN"}
    return named.get(rc, "FAIL")


steps = {}
for line in (out / "steps.tsv").read_text().splitlines():
    name, rc, secs = line.split("\t")
    steps[name] = {"rc": rc, "result": status(rc), "seconds": int(secs), "detail": ""}
if "wheels" not in steps:
    steps["wheels"] = {"rc": "none", "result": "SKIP", "seconds": 0, "detail": "no wheels folder (WHEELS=...)"}
elif steps["wheels"]["rc"] == "dry":
    steps["wheels"]["detail"] = "dry run: listed, not installed"
info = load("device.json") or {}
ws = load("warmstart.json")
if "warm start" in steps and ws:
    acc = f", greedy held-out accuracy {ws['greedy_accuracy']:.2f}" if "greedy_accuracy" in ws else ""
    steps["warm start"]["detail"] = ("cached " if ws["cached"] else f"built in {ws['train_s']} s of training on "
                                     f"{ws['threads']} CPU threads{acc}, ") + ws["path"]
if "device" in steps:
    steps["device"]["detail"] = info.get("device", "torch not importable or no CUDA device (see the log)")
if "gpu tests" in steps and steps["gpu tests"]["rc"] != "abort":
    s = steps["gpu tests"]
    try:
        suite = ET.parse(out / "gpu_tests.xml").getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        n, f, e, sk = (int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
        s["detail"] = f"{n - f - e - sk} passed, {f + e} failed, {sk} skipped on {device}"
        if s["result"] == "PASS" and (n == 0 or sk):  # all skipped ('no CUDA device') is not a pass
            s["result"] = "FAIL"
    except (OSError, ET.ParseError, AttributeError):
        s["detail"] = "no junit report"
r = load("rollout.json")
if "rollout" in steps and r:
    met = sum(bool(t["pass"]) for t in r["targets"].values())
    steps["rollout"]["detail"] = (
        f"{r['best_row']}: tree/seq tokens {r['tree_vs_sequential_token_ratio']:.3f}, wall "
        f"{r['tree_vs_sequential_wall_ratio']:.3f}; tree/generate wall {r['tree_vs_generate_wall_ratio']:.3f}; "
        f"targets met {met}/{len(r['targets'])}")
elif "rollout" in steps and steps["rollout"]["result"] == "PASS":
    steps["rollout"].update(result="FAIL", detail="no rollout.json")
p = load("packing.json")
if "packing" in steps and p:
    mem = p["peak_memory_ratio"]
    steps["packing"]["detail"] = (
        f"{p['headline_row']}: tree/flat tokens {p['forwarded_token_ratio']:.3f}, wall {p['update_wall_ratio']:.3f}, "
        f"peak memory {'-' if mem is None else f'{mem:.3f}'}; grad diff {p['max_rel_grad_diff']:.1e} "
        f"(<= {GRAD_TOL:g})")
    if steps["packing"]["result"] == "PASS" and not p["max_rel_grad_diff"] <= GRAD_TOL:
        steps["packing"]["result"] = "FAIL"
elif "packing" in steps and steps["packing"]["result"] == "PASS":
    steps["packing"].update(result="FAIL", detail="no packing.json")

if "smoke" in steps:  # benchmarks on the random model: they ran, but their ratios are not the embedded model's
    steps.pop("smoke")
    for k in ("rollout", "packing"):
        if k in steps:
            steps[k]["detail"] = "RANDOM MODEL (no warm start): " + steps[k]["detail"]
order = ["wheels", "device", "warm start", "gpu tests", "rollout", "packing"]
checks = [k for k in order if k in steps]
ok = all(steps[k]["result"] in ("PASS", "SKIP") for k in checks) and \
    all(steps.get(k, {}).get("result") == "PASS" for k in order[1:])
print("\n==== gpu_check summary ====")
print(f"device: {info.get('device', 'unknown')} | torch {info.get('torch', '?')} | transformers "
      f"{info.get('transformers', '?')} | python {info.get('python', '?')} | CUDA {info.get('cuda')}")
print(f"{'check':<12} {'result':<8} {'time_s':>6}  detail")
for k in checks:
    s = steps[k]
    print(f"{k:<12} {s['result']:<8} {s['seconds']:>6}  {s['detail']}")
print(f"{'overall':<12} {'PASS' if ok else 'FAIL':<8} {total:>6}  logs, JSON and this table: {out}")
(out / "summary.json").write_text(json.dumps({"device": info, "warmstart": ws, "checks": steps, "seconds": total,
                                              "overall": "PASS" if ok else "FAIL"}, indent=2))
for name in ("device.json", "warmstart.json"):  # folded into summary.json (fewer files to bring back)
    (out / name).unlink(missing_ok=True)
sys.exit(0 if ok else 1)
EOF
