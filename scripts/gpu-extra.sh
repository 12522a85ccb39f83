#!/usr/bin/env bash
# Runs on the GPU machine after the test executables (scripts/gpu-run.sh): pdenet's kernels and
# training step in f32 / tf32 / bf16 / f16 beside PyTorch + cuDNN, memory in depth, the
# 1,000-step reversible run, gradient parity with PyTorch and the criterion op benches (CUDA
# events). Each part has its own time limit; JSON and criterion's estimates go to $OUT.
# GPU_PARTS picks parts (default: all), e.g. GPU_PARTS="kernels train".
set -u
P="${PDENET:-.gpu/bin/pdenet}"
OUTDIR="${OUT:-/tmp}"
PARTS="${GPU_PARTS:-kernels train depth deep parity criterion}"
export PYTHONUNBUFFERED=1
has() { case " $PARTS " in *" $1 "*) return 0;; esac; return 1; }
t0=$(date +%s)
stamp() { echo "-- $1 at $(( $(date +%s) - t0 )) s"; }

if has kernels; then
  stamp "pdenet-cuda-bench (kernels, f32 / tf32 / bf16 / f16)"
  timeout 120 "$(dirname "$P")/pdenet-cuda-bench" --batch 256 --reps 20 || echo "pdenet-cuda-bench failed: $?"
  stamp "PyTorch kernels"
  timeout 90 python3 scripts/torch_ref.py 256 || echo "torch_ref.py failed: $?"
fi

if has train; then
  stamp "PyTorch: ref-cifar training step, batch 256, steps 8"
  timeout 120 python3 scripts/torch_train_bench.py --batch 256 --steps 8 || echo "torch_train_bench failed: $?"
  stamp "pdenet bench: ref-cifar, batch 256, steps 8, f32 / tf32 / bf16 / f16"
  timeout 180 "$P" bench --device cuda --config ref-cifar --batch 256 --steps 8 --policies store,reversible \
    --precision f32,tf32,bf16,f16 --repeats 5 --json "$OUTDIR/bench-train.json" || echo "bench failed: $?"
  stamp "A/B: the same with the unpipelined convolution tiles (PDENET_CONV_PIPELINE=0)"
  PDENET_CONV_PIPELINE=0 timeout 120 "$P" bench --device cuda --config ref-cifar --batch 256 --steps 8 \
    --policies store,reversible --precision f32,bf16 --repeats 5 --json "$OUTDIR/bench-train-np.json" \
    || echo "bench (unpipelined) failed: $?"
fi

if has depth; then
  stamp "memory vs depth (batch 256, bf16): store, reversible, exact"
  timeout 150 "$P" bench --device cuda --config ref-cifar --batch 256 --steps 2,8,32 --precision bf16 \
    --policies store,reversible,exact --repeats 1 --json "$OUTDIR/bench-depth.json" || echo "depth bench failed: $?"
  stamp "memory vs depth, store with bf16 kept states (--storage bf16; PyTorch autocast keeps bf16)"
  timeout 90 "$P" bench --device cuda --config ref-cifar --batch 256 --steps 2,8,32 --precision bf16 \
    --policies store --storage bf16 --repeats 1 --json "$OUTDIR/bench-depth-bf16.json" || echo "bf16 depth bench failed: $?"
fi

if has deep; then
  stamp "reversible at 1000 steps per unit (batch 256, bf16)"
  timeout 150 "$P" bench --device cuda --config ref-cifar --batch 256 --steps 1000 --precision bf16 \
    --policies reversible --repeats 1 --json "$OUTDIR/bench-1000.json" || echo "1000-step bench failed: $?"
fi

if has parity; then
  stamp "grad parity vs PyTorch (float64 autograd), CUDA backend"
  PDENET="$P" timeout 120 python3 scripts/grad_parity.py --device cuda || echo "grad_parity cuda failed: $?"
fi
if has criterion; then
  # f16 is left out here (the filter) to keep this part's time; pdenet-cuda-bench covers it.
  stamp "criterion op benches on the GPU (CUDA events), f32 / tf32 / bf16"
  CRITERION_HOME="$OUTDIR/criterion" timeout 150 "$(dirname "$P")/cuda_ops" --bench --warm-up-time 0.2 --measurement-time 0.5 \
    '^(f32|tf32|bf16)/' || echo "cuda_ops bench failed: $?"
fi
stamp "extras done"
