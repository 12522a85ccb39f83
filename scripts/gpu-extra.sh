#!/usr/bin/env bash
# Runs on the GPU machine after the test executables (see scripts/gpu-check.sh).
set -u
nvidia-smi || true
echo "== pdenet-cuda-bench"
bench="$(dirname "${PDENET:-.gpu/bin/pdenet}")/pdenet-cuda-bench"
timeout 240 "$bench" --batch 256 --reps 20 || echo "pdenet-cuda-bench failed: $?"
echo "== torch reference"
if [ -f scripts/torch_ref.py ]; then
  timeout 180 python3 scripts/torch_ref.py 256 || echo "torch_ref.py failed: $?"
else
  echo "scripts/torch_ref.py not found"
fi
