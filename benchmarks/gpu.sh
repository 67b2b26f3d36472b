#!/usr/bin/env bash
# The GPU check (issue 18, item 7): correctness on the GPU, then ResNet-50 bf16 batch-256 training speed,
# cnnjax vs torchvision, written to one JSON file. Runs on the GPU image as it is (no install, no network):
#   bash benchmarks/gpu.sh [OUT_DIR]        # default: $OUT if set, else .
# Under 5 minutes on an H200; each section is recorded even if another fails (see benchmarks/gpu.py).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-.}}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 290 python -m benchmarks.gpu --out "$out/gpu.json" "${@:2}"
