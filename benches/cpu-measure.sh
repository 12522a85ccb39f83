#!/usr/bin/env bash
# The CPU measurements of the engine issue, in one run on this machine: the ref-cifar training
# step's GFLOP/s beside the GEMM crate's (same run), and the peak RSS of `pdenet grad` on
# ref-cifar at steps 8/8/8 and 32/32/32 under store and reversible.
#   bash benches/cpu-measure.sh > benches/results/cpu-$(date +%F).md
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
cargo build --release -q
P=target/release/pdenet
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
python3 - "$tmp/b.safetensors" <<'PY'
import json, random, struct, sys
# A safetensors file by hand: x f32 [32,3,32,32], labels i64 [32].
random.seed(0)
n = 32 * 3 * 32 * 32
x = struct.pack(f"<{n}f", *[random.uniform(-1, 1) for _ in range(n)])
l = struct.pack("<32q", *[random.randrange(10) for _ in range(32)])
h = {"x": {"dtype": "F32", "shape": [32, 3, 32, 32], "data_offsets": [0, len(x)]},
     "labels": {"dtype": "I64", "shape": [32], "data_offsets": [len(x), len(x) + len(l)]}}
hb = json.dumps(h).encode(); hb += b" " * (-len(hb) % 8)
open(sys.argv[1], "wb").write(struct.pack("<Q", len(hb)) + hb + x + l)
PY
echo "# CPU measurements"
echo
echo "- date: $(date -u +%FT%TZ); machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "- commit: $(git rev-parse --short HEAD)"
echo
echo "## ref-cifar training step (batch 32, steps 8/8/8, hyperbolic, store; forward + backward + SGD)"
echo
echo '```'
echo "\$ pdenet bench --config ref-cifar --batch 32 --steps 8 --policies store,reversible --repeats 3"
"$P" bench --config ref-cifar --batch 32 --steps 8 --policies store,reversible --repeats 3
echo '```'
echo
echo "## Peak RSS of pdenet grad on ref-cifar (batch 32)"
echo
echo "| steps per unit | policy | max RSS (MB) |"
echo "| --- | --- | --- |"
for steps in 8 32; do
  sed "s/\"steps\":\[8,8,8\]/\"steps\":[$steps,$steps,$steps]/" > "$tmp/c$steps.json" <<'JSON'
{"kind":"image","in_channels":3,"classes":10,"widths":[32,64,112],"steps":[8,8,8],"layer":"hyperbolic","h":0.5,"operator":"full","norm":"tv","activation":"relu"}
JSON
  "$P" init --config "$tmp/c$steps.json" --out "$tmp/w$steps.safetensors" 2>/dev/null
  for policy in store reversible; do
    rss=$( { /usr/bin/time -f "%M" "$P" grad --config "$tmp/c$steps.json" --weights "$tmp/w$steps.safetensors" \
      --input "$tmp/b.safetensors" --out "$tmp/g.safetensors" --policy "$policy" --device cpu 2>&1 >/dev/null; } | tail -1)
    echo "| $steps | $policy | $(awk "BEGIN{printf \"%.1f\", $rss/1024}") |"
  done
done
