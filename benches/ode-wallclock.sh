#!/usr/bin/env bash
# Issue 15: discretize-optimize vs optimize-discretize (adjoint) MNIST training at an equal
# wall-clock budget. Both runs go side by side, one thread each, so that they share whatever
# else the machine is doing, with the same schedule (cosine over EPOCHS) and `--time-limit`
# SECONDS of training each; the epoch lines give accuracy, NFE and time.
#   bash benches/ode-wallclock.sh DATA EPOCHS SECONDS [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:?data folder}
epochs=${2:?epochs of the schedule}
limit=${3:?seconds of training per run}
out=${4:-runs/ode-wallclock}
mkdir -p "$out"
cargo build --release --quiet
pids=()
for mode in discretize adjoint; do
  cfg="$out/$mode.json"
  echo "{\"kind\":\"image\",\"in_channels\":1,\"classes\":10,\"widths\":[8,16],\"steps\":[2,2],\"layer\":\"ode\",\"h\":0.5,\"gradient\":\"$mode\"}" > "$cfg"
  RAYON_NUM_THREADS=1 target/release/pdenet train --config "$cfg" --data "$data" \
    --epochs "$epochs" --time-limit "$limit" --seed 0 --out "$out/$mode" --force > "$out/$mode.log" 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
for mode in discretize adjoint; do
  echo "== $mode (epoch lines; cumulative seconds from log.csv)"
  grep -E "^epoch|^time limit|^trained" "$out/$mode.log"
  awk -F, 'NR > 1 { t += $6; printf "epoch %d test_acc %.4f cumulative_s %.1f\n", $1, $4, t }' \
    "$out/$mode/log.csv"
done
