#!/usr/bin/env bash
# ref-mnist with each step type: test accuracy, parameters, wall time and planned memory.
#   bash benches/mnist-layers.sh DATA EPOCHS OUTDIR     (DATA: an MNIST folder)
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
data=${1:-data/mnist-small}; epochs=${2:-3}; out=${3:-runs/mnist-layers}
P=target/release/pdenet
cargo build --release -q
echo "| layer | test accuracy | parameters | wall time (s) | planned peak, batch 64, store / reversible (MB) |"
echo "| --- | --- | --- | --- | --- |"
for l in hyperbolic parabolic hamiltonian resnet antisymmetric; do
  cfg=configs/mnist-$l.json
  t0=$(date +%s.%N)
  "$P" train --config "$cfg" --data "$data" --epochs "$epochs" --seed 0 --out "$out/$l" >/dev/null 2>&1
  t1=$(date +%s.%N)
  acc=$("$P" eval --config "$cfg" --weights "$out/$l/model.safetensors" --data "$data" | tail -1 | awk '{print $2}')
  params=$("$P" info --config "$cfg" --batch 64 | awk '/^parameters/ {print $2}')
  mem=$("$P" info --config "$cfg" --batch 64 | awk '$1=="store" || $1=="reversible" {printf "%s ", $2}')
  echo "| $l | $acc | $params | $(awk "BEGIN{printf \"%.0f\", $t1-$t0}") | $(echo $mem | sed 's/ / \/ /') |"
done
