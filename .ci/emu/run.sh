#!/usr/bin/env bash
# Builds and runs the CPU emulation of the kernels (no GPU needed): .ci/emu/run.sh
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
gen=$(mktemp -d); trap 'rm -rf "$gen"' EXIT
bash .ci/kernel-constants.sh "$gen"
g++ -std=c++20 -O1 -pthread -I kernels -I "$gen" -I .ci/emu -include .ci/emu/cuda_shim.h -o /tmp/pdenet-kernel-emu .ci/emu/emu.cpp
/tmp/pdenet-kernel-emu
