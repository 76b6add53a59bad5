#!/usr/bin/env bash
# Issue 26's device check: one call of a lent GPU machine (H100/H200: torch is there, no package registry),
# from the repo root after scripts/device_wheels.sh filled .whl/ here:
#   run(command="bash scripts/device_check.sh", carry=[".whl"], timeout_s=540)
# About 5 minutes (each step has its own time limit, 8 minutes in all). Everything lands in $OUT:
#   device_check.json   stage dpo in fp32 and bf16 on CUDA (tiny pipeline through `python -m skillweave`),
#                       the skillpack's integer path against its fp path on CUDA and on the CPU
#   dpo_step_cuda.json  bench/dpo_step.py --device cuda: DPO step fp32 vs bf16, SmolLM2-135M's shape
#   skillzip_cuda.json  bench/skillzip.py --device cuda
#   log.txt             everything printed
# `bash scripts/device_check.sh --cpu` runs the same steps on this CPU, small (--quick), from the venv
# PYTHON names (default python3), without installing anything: a check of this script before a lease.
set -uo pipefail
: "${OUT:?set OUT to the output folder (the device tool sets it)}"
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ "${1:-}" = "--cpu" ]; then
  device=cpu; quick=(--quick)
else
  device=cuda; quick=()
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 WANDB_MODE=disabled PYTHONUNBUFFERED=1
"$PYTHON" -c "import torch, transformers, trl, datasets, hydra; print('torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__, 'datasets', datasets.__version__, 'hydra', hydra.__version__)" || exit 1
status=0
step() {  # seconds, then the command: a step that fails or runs out of time does not stop the next
  local limit=$1; shift
  echo "== $*"
  timeout "$limit" "$@" || { echo "== failed ($?): $*"; status=1; }
}
step 150 "$PYTHON" scripts/device_check.py --device "$device" --out "$OUT"
step 120 "$PYTHON" bench/dpo_step.py --device "$device" --model smollm2-random --rounds 10 "${quick[@]}" --out "$OUT/dpo_step_$device.json"
step 180 "$PYTHON" bench/skillzip.py --device "$device" "${quick[@]}" --out "$OUT/skillzip_$device.json"
exit $status
