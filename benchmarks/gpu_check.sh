#!/usr/bin/env bash
# The GPU checks of this repository, as one short call on a lent CUDA machine (~5 min):
#   1. the tests marked `gpu` (side-stream batch feed, CUDA-built radius graphs equal to the stored ones);
#   2. loader vs training step per model on CUDA, stored and device-built radius graphs (benchmarks/bench_steps.py).
# Results land in $OUT (the device tool's output folder) or ./gpu-check.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-check}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python -m pytest -q -m gpu tests/test_device_graphs.py 2>&1 | tee "$out/pytest-gpu.txt"
python benchmarks/bench_steps.py --device cuda --models cgcnn,comformer,chgnet --n 1500 --batch-size 64 --steps 30 \
  --json-out "$out/bench_steps_cuda.json" 2>&1 | tee "$out/bench_steps_cuda.txt"
