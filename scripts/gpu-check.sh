#!/usr/bin/env bash
# Prepares the GPU check: run HERE (no GPU needed). It builds release binaries and test
# executables with PTX embedded (nvcc 13.0 from ../shared/tools/cuda-env.sh) into .gpu/.
# Then, with the device tool:  command "bash .gpu/run.sh", carry [".gpu"]
# On the GPU machine run.sh (scripts/gpu-run.sh) runs every test executable, then
# scripts/gpu-extra.sh (benchmarks, PyTorch comparisons); everything goes to $OUT/gpu.log.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
pack=../shared/tools/gpu-pack.sh
if [ -f .git ]; then
  # In a git worktree .git is a file and gpu-pack.sh's `>> .git/info/exclude` fails: run a copy
  # that asks git for the exclude file's real path (.gitignore already lists /.gpu/).
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  cp ../shared/tools/cuda-env.sh "$tmp/"
  sed 's|\.git/info/exclude|"$(git rev-parse --git-path info/exclude)"|g' ../shared/tools/gpu-pack.sh > "$tmp/gpu-pack.sh"
  mkdir -p "$(dirname "$(git rev-parse --git-path info/exclude)")"
  pack="$tmp/gpu-pack.sh"
fi
bash "$pack" --extra scripts/gpu-extra.sh
# The CUDA criterion bench (CUDA-event timing) travels too; gpu-pack.sh packs bins and tests only.
# Same nvcc as the pack, so the bench embeds the same PTX.
eval "$(../shared/tools/cuda-env.sh)"
bench=$(cargo bench --bench cuda_ops --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import sys, json
for l in sys.stdin:
    try: m = json.loads(l)
    except ValueError: continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "cuda_ops":
        print(m["executable"])')
cp "$bench" .gpu/bin/cuda_ops && strip .gpu/bin/cuda_ops
# Test executables with no CUDA test stay here (they run in CI): the carry limit is 64 MiB.
for src in $(grep -L -i cuda tests/*.rs); do
  rm -f ".gpu/tests/$(basename "$src" .rs)"-*
done
# Our runner: all test executables at once, then the extras (the pack's own runs them in turn).
cp scripts/gpu-run.sh .gpu/run.sh
# Compressed for the carry (the embedded PTX shrinks about 4x; 66 MiB uncompressed with the f16
# kernels): run.sh unpacks them on the GPU machine.
gzip -6 .gpu/bin/* .gpu/tests/*
grep -q 'KernelFormat::Ptx' target/release/build/pdenet-*/out/kernels.rs \
  || { echo "gpu-check: release build did not embed PTX (nvcc not used)" >&2; exit 1; }
size=$(du -sm .gpu | cut -f1)
[ "$size" -lt 64 ] || { echo "gpu-check: .gpu is ${size} MiB (limit 64)" >&2; exit 1; }
echo "ready: .gpu (${size} MiB); run \"bash .gpu/run.sh\" on the GPU machine with carry [\".gpu\"]"
