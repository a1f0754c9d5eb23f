#!/usr/bin/env bash
# The GPU check of this repository as one call on a lent CUDA machine (at most ~8 minutes, each step time-boxed):
# the gpu tests, a debug run of every installed model under a 15 GiB ceiling (a T4 stand-in) with fp16, a forced
# out-of-memory back-off, loader vs step, SIGKILL + resume, bf16 vs fp16. See benchmarks/gpu_check.py.
# JSON + Markdown land in $OUT (the device tool's output folder) or ./gpu-check; extra arguments go to the script
# (e.g. --steps debug-runs,resume to rerun only those).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-check}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/nvidia-smi.txt" 2>&1 || true
python benchmarks/gpu_check.py --out "$out" --budget-s "${GPU_CHECK_BUDGET_S:-480}" "$@"
