#!/usr/bin/env bash
# Runs on the GPU machine as .gpu/run.sh (scripts/gpu-check.sh puts it there): every test
# executable at once (each with its own log, 16 cores), then scripts/gpu-extra.sh (benchmarks
# and PyTorch comparisons). Everything goes to $OUT/gpu.log; the summary comes last.
set -u
log="${OUT:-/tmp}/gpu.log"; : > "$log"
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/nvidia/lib64; do
  [ -d "$d" ] && export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"; done
export PDENET="$PWD/.gpu/bin/pdenet"
# A GPU runner: every SKIP of a CUDA test is a failure (PDENET_REQUIRE_CUDA=0 to allow them).
export PDENET_REQUIRE_CUDA="${PDENET_REQUIRE_CUDA:-1}"
# scripts/gpu-check.sh gzips the executables to fit the carry limit.
for z in .gpu/bin/*.gz .gpu/tests/*.gz; do [ -f "$z" ] && gunzip -f "$z"; done
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader; } 2>&1 | tee -a "$log"
tmp=$(mktemp -d)
start=$(date +%s)
for t in .gpu/tests/*; do
  ( timeout "${GPU_TEST_TIMEOUT:-300}" "$t" --test-threads=4 > "$tmp/$(basename "$t").log" 2>&1
    echo $? > "$tmp/$(basename "$t").rc" ) &
done
wait
fail=0; summary=""
for t in .gpu/tests/*; do
  b=$(basename "$t"); rc=$(cat "$tmp/$b.rc")
  { echo "== $b (exit $rc)"; cat "$tmp/$b.log"; } >> "$log"
  [ "$rc" -eq 0 ] || { fail=$((fail+1)); summary+="FAILED $b (exit $rc)"$'\n'; }
  summary+="$(grep -E '^test result' "$tmp/$b.log" | sed "s/^/$b: /")"$'\n'
done
echo "tests took $(( $(date +%s) - start )) s" | tee -a "$log"
if [ -f .gpu/extra.sh ]; then echo "== extra" | tee -a "$log"; bash .gpu/extra.sh 2>&1 | tee -a "$log"; fi
{ echo "== test summary"; printf '%s' "$summary"; grep -h "SKIP\|FAILED\|panicked" "$tmp"/*.log | sort | uniq -c | head -20
  echo "test executables failed: $fail"; } | tee -a "$log"
