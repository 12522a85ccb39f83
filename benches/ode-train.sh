#!/usr/bin/env bash
# Issue 15: MNIST training of one ode network with `discretize` (store, reversible) and
# `adjoint`: accuracy, right-hand-side evaluations and time per epoch (the epoch lines).
#   bash benches/ode-train.sh [DATA] [EPOCHS] [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-data/mnist-small}
epochs=${2:-2}
out=${3:-runs/ode-train}
mkdir -p "$out"
cargo build --release --quiet
for mode in discretize adjoint; do
  cfg="$out/$mode.json"
  echo "{\"kind\":\"image\",\"in_channels\":1,\"classes\":10,\"widths\":[8,16],\"steps\":[2,2],\"layer\":\"ode\",\"h\":0.5,\"gradient\":\"$mode\"}" > "$cfg"
  policies=reversible
  [ "$mode" = discretize ] && policies="store reversible"
  for policy in $policies; do
    echo "== $mode $policy"
    target/release/pdenet train --config "$cfg" --data "$data" --epochs "$epochs" --seed 0 \
      --policy "$policy" --out "$out/$mode-$policy" --force 2>&1 | grep -E "^epoch|^trained"
  done
done
