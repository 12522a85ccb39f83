#!/usr/bin/env bash
# Writes pdenet_constants.cuh (generated from src/backend/kernel_constants.rs, as build.rs does)
# into the folder $1, for compiling kernels/ outside cargo: -I kernels -I "$1".
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
mkdir -p "$1"
gen=$(mktemp); trap 'rm -f "$gen"' EXIT
rustc --edition 2021 -o "$gen" .ci/kernel-constants.rs
"$gen" > "$1/pdenet_constants.cuh"
