#!/usr/bin/env bash
# Full, lean and mgic operators and the IMEX step on one MNIST network (configs/mnist-ops-*.json):
# parameters, FLOPs, test accuracy, training time and peak RSS.
#   bash benches/mnist-ops.sh [DATA] [EPOCHS] [JOBS]    (defaults: ../shared/data/mnist 4 2)
#   bash benches/mnist-ops.sh --table                   (only rebuild the table from the logs)
# Runs with a checkpoint in runs/mnist-ops/OP continue from it (pdenet train --resume), so an
# interrupted script is restarted by running it again.
# One fixed recipe for all four: Adam, lr 0.001 cosine-decayed to 0 over the epochs, batch 64,
# seed 0. Each run gets one thread (RAYON_NUM_THREADS=1) and nice 19, JOBS runs at a time, so
# that the times compare and other work on the machine keeps priority.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
P=${PDENET:-target/release/pdenet}   # PDENET: a copy, so that rebuilds do not touch running jobs
R=benches/results/mnist-ops
OPS=${OPS:-full imex mgic lean}   # slowest first, so that two slots finish together
mkdir -p "$R"

table() {
  echo "| network | parameters | vs full | forward MFLOP / image | test accuracy (%) | training time (s) | s / epoch | peak RSS (MB) |"
  echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
  local pfull
  pfull=$("$P" info --config configs/mnist-ops-full.json | awk '/^parameters/ {print $2}')
  for op in $OPS; do
    local cfg=configs/mnist-ops-$op.json params flops acc secs ep rss
    params=$("$P" info --config "$cfg" | awk '/^parameters/ {print $2}')
    flops=$("$P" info --config "$cfg" | awk '/^FLOPs/ {print $2}')
    if [[ -s $R/$op.csv && -s $R/$op.time ]]; then
      # Last epoch's test accuracy.
      acc=$(tail -1 "$R/$op.csv" | awk -F, '{printf "%.2f", 100*$4}')
      ep=$(tail -1 "$R/$op.csv" | cut -d, -f1)
      # Training time: the per-epoch times of log.csv (they add up across resumed runs);
      # peak RSS: the largest of the (resumed) processes.
      secs=$(awk -F, 'NR > 1 {s += $6} END {printf "%.0f", s}' "$R/$op.csv")
      rss=$(awk '$1 ~ /^[0-9.]+$/ && $2 + 0 > m {m = $2 + 0} END {printf "%.0f", m/1024}' "$R/$op.time")
      echo "| $op | $params | $(awk "BEGIN{printf \"%.2f\", $params/$pfull}") | $flops | $acc | $secs | $(awk "BEGIN{printf \"%.0f\", $secs/$ep}") | $rss |"
    else
      echo "| $op | $params | $(awk "BEGIN{printf \"%.2f\", $params/$pfull}") | $flops | (not run) | | | |"
    fi
  done
}

if [[ ${1:-} == --table ]]; then
  table | tee "$R/table.md"
  exit 0
fi
data=${1:-../shared/data/mnist}; epochs=${2:-4}; jobs=${3:-2}
[[ -n ${PDENET:-} ]] || cargo build --release -q

run() {
  local op=$1 resume=()
  [[ -f runs/mnist-ops/$op/checkpoint/LATEST ]] && resume=(--resume)
  RAYON_NUM_THREADS=1 nice -n 19 /usr/bin/time -a -f "%e %M %U" -o "$R/$op.time" \
    "$P" train --config "configs/mnist-ops-$op.json" --data "$data" --epochs "$epochs" \
    --optimizer adam --seed 0 --out "runs/mnist-ops/$op" "${resume[@]}" >>"$R/$op.log" 2>&1 ||
    { echo "$op: pdenet train failed, see $R/$op.log" >&2; return 0; }
  cp "runs/mnist-ops/$op/log.csv" "$R/$op.csv"
}

for op in $OPS; do
  while (( $(jobs -rp | wc -l) >= jobs )); do wait -n; done
  run "$op" &
done
wait
table | tee "$R/table.md"
