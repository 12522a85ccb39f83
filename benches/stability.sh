#!/usr/bin/env bash
# Issue 15's stability table: trains the same small MNIST network with each step type and
# `ode` (1 epoch on the shipped subset, seed 0), then runs `pdenet stability` on it.
#   bash benches/stability.sh [OUT_DIR]   (default runs/stability)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/stability}
mkdir -p "$out"
cargo build --release --quiet
bin=target/release/pdenet
for layer in resnet antisymmetric parabolic hyperbolic hamiltonian ode; do
  cfg="$out/$layer.json"
  echo "{\"kind\":\"image\",\"in_channels\":1,\"classes\":10,\"widths\":[8,16],\"steps\":[4,4],\"layer\":\"$layer\",\"h\":0.25}" > "$cfg"
  "$bin" train --config "$cfg" --epochs 1 --seed 0 --out "$out/$layer" --force 2>&1 | grep -E "^trained" | sed "s/^/$layer: /"
  echo "== $layer"
  "$bin" stability --config "$cfg" --weights "$out/$layer/model.safetensors" --batch 16
done
