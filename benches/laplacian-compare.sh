#!/usr/bin/env bash
# Issue 16: exact Laplacian of a potential network (SPEC section 11), pdenet's forward
# recursion vs PyTorch autograd (Hessian trace, Hutchinson), the same network and inputs, one
# thread each, interleaved rounds on one machine. Usage:
#   bash benches/laplacian-compare.sh PYTHON [ROUNDS] [THREADS] [REPEATS]
# PYTHON needs torch and safetensors (not pdenet dependencies). Writes the networks to
# target/laplacian-compare/ and the full log to target/laplacian-compare/log.txt.
set -euo pipefail
py=${1:?python with torch and safetensors}; rounds=${2:-2}; th=${3:-1}; reps=${4:-5}
dir=target/laplacian-compare
mkdir -p "$dir"
cargo build --release --example potential_laplacian
bin=target/release/examples/potential_laplacian
log=$dir/log.txt
: > "$log"
{
  lscpu | grep -E "Model name"
  grep -o -w -E "avx512f|avx2|fma" /proc/cpuinfo | sort -u | tr '\n' ' '; echo
  echo "load before: $(uptime)"
  for r in $(seq "$rounds"); do
    echo "== round $r ($(date -u +%H:%M:%S))"
    RAYON_NUM_THREADS=$th "$bin" "$dir" "$th" "$reps"
    OMP_NUM_THREADS=$th MKL_NUM_THREADS=$th "$py" scripts/laplacian_compare.py "$dir" \
      --threads "$th" --repeats "$reps"
  done
  echo "load after: $(uptime)"
} 2>&1 | tee -a "$log"
"$py" scripts/laplacian_compare.py --table "$log"
