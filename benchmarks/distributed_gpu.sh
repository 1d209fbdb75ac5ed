#!/usr/bin/env bash
# Distributed training on a GPU machine (issue 18): steps/s, tokens/s and peak memory per rank.
#
#   bash benchmarks/distributed_gpu.sh [MODEL_DIR]     # any HF causal LM directory (default: the embedded model)
#   DRY_RUN=1 bash benchmarks/distributed_gpu.sh       # the same sequence on CPU (gloo, tiny sizes): the check
#                                                      # that it runs the first time a GPU is there
# With 2+ GPUs: 1 rank vs 2 ranks (DDP and FSDP), one GPU each, the same global batch. With one GPU: 1 rank
# with the HF engine vs 1 rank with vLLM (vLLM's GPU wheel pins another torch: give its environment's
# python as VLLM_PY; without it that row is skipped). Needs the project installed (make setup) in PY.
# Results: benchmarks/results/distributed_gpu*.json and the printed tables.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
MODEL=${1:-${MODEL:-}}
STEPS=${STEPS:-5}
PROMPTS=${PROMPTS:-16}
WIDTH=${WIDTH:-8}
common=(--steps "$STEPS" --prompts "$PROMPTS" --width "$WIDTH")
[ -n "$MODEL" ] && common+=(--model "$MODEL")

if [ -n "${DRY_RUN:-}" ]; then
  device=cpu; ngpu=2; common=(--smoke)
  echo "dry run on CPU: the GPU sequence with device=cpu, gloo and tiny sizes"
else
  device=cuda
  ngpu=$("$PY" -c "import torch; print(torch.cuda.device_count())")
  [ "$ngpu" -ge 1 ] || { echo "no CUDA device visible to $PY; DRY_RUN=1 runs the CPU rehearsal" >&2; exit 2; }
  "$PY" -c "import torch; print('GPU:', torch.cuda.get_device_name(0), 'x', torch.cuda.device_count())"
fi

if [ "$ngpu" -ge 2 ]; then
  echo "== 1 rank vs 2 ranks (ddp, fsdp), hf engine"
  "$PY" benchmarks/distributed.py --device "$device" --ranks 2 --threads 4 --parallel ddp,fsdp \
    "${common[@]}" --out benchmarks/results/distributed_gpu.json
else
  echo "== 1 rank, hf engine"
  "$PY" benchmarks/distributed.py --device "$device" --ranks 1 --threads 8 --parallel "" \
    "${common[@]}" --out benchmarks/results/distributed_gpu_hf.json
fi
if [ -n "${VLLM_PY:-}" ] || [ -n "${DRY_RUN:-}" ]; then
  vpy=${VLLM_PY:-$PY}
  if "$vpy" -c "import vllm" 2>/dev/null; then
    echo "== 1 rank, vllm engine"
    "$vpy" benchmarks/distributed.py --device "$device" --ranks 1 --threads 8 --parallel "" --engine vllm \
      "${common[@]}" --out benchmarks/results/distributed_gpu_vllm.json
  else
    echo "vllm not importable by $vpy: vLLM row skipped"
  fi
fi
