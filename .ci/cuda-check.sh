#!/usr/bin/env bash
# Compiles every kernel for sm_80 and sm_90 with ptxas verbose output, prints a table
# (kernel, registers, shared memory, spills, stack frame) and fails on any spill or stack use.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
eval "$(../shared/tools/cuda-env.sh)"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
bash .ci/kernel-constants.sh "$tmp/gen"
for arch in sm_80 sm_90; do
  for f in kernels/*.cu; do
    nvcc -cubin -arch="$arch" -std=c++17 -O3 -I kernels -I "$tmp/gen" -Xptxas -v -o "$tmp/k.cubin" "$f" \
      2>&1 | sed "s|^|$arch $(basename "$f" .cu) |"
  done
done > "$tmp/log"
python3 - "$tmp/log" <<'PY'
import re, sys
rows, cur = [], None
for line in open(sys.argv[1]):
    arch, mod = line.split()[:2]
    m = re.search(r"Compiling entry function '(\w+)'", line)
    if m:
        cur = {"arch": arch, "kernel": m.group(1), "regs": 0, "smem": 0, "stack": 0, "spst": 0, "spld": 0}
        rows.append(cur); continue
    if cur is None: continue
    m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
    if m: cur["stack"], cur["spst"], cur["spld"] = map(int, m.groups())
    m = re.search(r"Used (\d+) registers", line)
    if m: cur["regs"] = int(m.group(1))
    m = re.search(r"(\d+) bytes smem", line)
    if m: cur["smem"] = int(m.group(1))
print(f"{'arch':6} {'kernel':20} {'regs':>5} {'smem':>6} {'spill st':>9} {'spill ld':>9} {'stack':>6}")
bad = 0
for r in rows:
    flag = r["spst"] or r["spld"] or r["stack"]
    bad += bool(flag)
    print(f"{r['arch']:6} {r['kernel']:20} {r['regs']:5} {r['smem']:6} {r['spst']:9} {r['spld']:9} {r['stack']:6}{'  <- SPILL/STACK' if flag else ''}")
print(f"{len(rows)} kernel builds, {bad} with spills or stack use")
if not rows: sys.exit("no kernels compiled")
sys.exit(1 if bad else 0)
PY
