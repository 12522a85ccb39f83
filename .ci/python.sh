#!/usr/bin/env bash
# CI for the Python package: a fresh virtual environment with numpy, maturin and pytest (no torch:
# the pdenet.torch tests print SKIP and why), the extension built in release, then pytest.
# Shares target/ with the root build so that pdenet and its dependencies compile once.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

venv="${PDENET_CI_VENV:-target/ci-python-venv}"
echo "== python venv in $venv"
rm -rf "$venv"
python3 -m venv "$venv"
# shellcheck disable=SC1091
source "$venv/bin/activate"
python -m pip install --quiet --upgrade pip
python -m pip install --quiet numpy maturin pytest

echo "== pdenet CLI (release): the tests compare the Python API with it"
cargo build --release --bin pdenet
export PDENET_BIN="$PWD/target/release/pdenet"

echo "== maturin develop --release"
(cd python && CARGO_TARGET_DIR="$PWD/../target" maturin develop --release --quiet)

echo "== pytest"
(cd python && python -m pytest -rs tests)
