#!/usr/bin/env bash
# Issue 14's CPU kernel measurements in one run on this machine: the FMA roofline beside the
# GEMM, the 3x3 convolution kernels (direct AVX-512 / AVX2 against im2col + GEMM, side by side
# in every round), and the ref-cifar training step under the direct and the GEMM kernels, two
# rounds. Numbers move with the neighbours' load: compare rows of the same round.
#   bash benches/cpukern-measure.sh > benches/results/cpukern-$(date +%F)-run.txt
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
nice cargo build --release -q
P=target/release/pdenet
echo "date: $(date -u +%FT%TZ); commit: $(git rev-parse --short HEAD); $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "flags: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|fma|avx512[a-z_0-9]*|amx[a-z_0-9]*)$' | xargs)"
for round in 1 2; do
  echo; echo "## round $round: load $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "\$ pdenet bench --kernels --batch 32 --repeats 5"
  "$P" bench --kernels --batch 32 --repeats 5
  echo "\$ pdenet bench --config ref-cifar --batch 32 --steps 8 --policies store,reversible --repeats 3 --cpu-kernels avx512,gemm"
  "$P" bench --config ref-cifar --batch 32 --steps 8 --policies store,reversible --repeats 3 --cpu-kernels avx512,gemm
done
