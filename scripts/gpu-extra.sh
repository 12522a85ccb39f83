#!/usr/bin/env bash
# Runs on the GPU machine after the test executables (see scripts/gpu-check.sh): independent
# gradient checks against PyTorch, pdenet's benchmark beside PyTorch's, the kernel benchmark,
# and the reversible-memory run at 1,000 steps per unit. Each part has its own time limit.
set -u
P="${PDENET:-.gpu/bin/pdenet}"
OUTDIR="${OUT:-/tmp}"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv || true

echo "== grad parity vs PyTorch (float64 autograd), CUDA backend"
PDENET="$P" timeout 150 python3 scripts/grad_parity.py --device cuda || echo "grad_parity cuda failed: $?"

echo "== pdenet bench: ref-cifar, batch 256, steps 8, f32"
timeout 150 "$P" bench --device cuda --config ref-cifar --batch 256 --steps 8 --policies store,reversible --repeats 3 --json "$OUTDIR/bench-cuda.json" || echo "bench failed: $?"

echo "== PyTorch: ref-cifar training step, batch 256, steps 8"
timeout 120 python3 scripts/torch_train_bench.py --batch 256 --steps 8 || echo "torch_train_bench failed: $?"

echo "== pdenet-cuda-bench (kernels)"
timeout 120 "$(dirname "$P")/pdenet-cuda-bench" --batch 256 --reps 20 || echo "pdenet-cuda-bench failed: $?"

echo "== PyTorch kernels"
timeout 120 python3 scripts/torch_ref.py 256 || echo "torch_ref.py failed: $?"

echo "== memory vs depth (batch 256): store vs reversible"
timeout 150 "$P" bench --device cuda --config ref-cifar --batch 256 --steps 2,8,32 --policies store,reversible --repeats 1 --json "$OUTDIR/bench-depth.json" || echo "depth bench failed: $?"

echo "== reversible at 1000 steps per unit (batch 256)"
timeout 200 "$P" bench --device cuda --config ref-cifar --batch 256 --steps 1000 --policies reversible --repeats 1 --json "$OUTDIR/bench-1000.json" || echo "1000-step bench failed: $?"

echo "== grad parity vs PyTorch, CPU backend"
PDENET="$P" timeout 100 python3 scripts/grad_parity.py --device cpu || echo "grad_parity cpu failed: $?"
