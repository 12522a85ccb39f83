#!/usr/bin/env bash
# pdenet vs PyTorch on this CPU, ref-cifar training step (batch 32, 8 steps per unit),
# alternating rounds in one run so both see the same machine. Usage:
#   bash benches/torch-cpu-compare.sh PYTHON THREADS ROUNDS [PRECISIONS]
set -euo pipefail
py=${1:?python with torch}; th=${2:-2}; rounds=${3:-2}; prec=${4:-f32}
bin=target/release/pdenet
lscpu | grep -E "Model name" ; uptime
for r in $(seq "$rounds"); do
  echo "== round $r ($(date -u +%H:%M:%S))"
  RAYON_NUM_THREADS=$th "$bin" bench --config ref-cifar --batch 32 --steps 8 \
    --policies store,reversible --precision "$prec" --repeats 3 2>&1 | grep -vE "^\s*$"
  OMP_NUM_THREADS=$th "$py" scripts/torch_train_bench.py --device cpu --batch 32 --steps 8 \
    --threads "$th" --repeats 3
done
