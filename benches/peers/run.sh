#!/usr/bin/env bash
# The peer benchmark: installs the Python peers (setup.sh), then builds and runs the `peers`
# binary in release mode in the main target folder (sharing the compiler's release build).
# Arguments go to the binary: `bash benches/peers/run.sh --quick --batch 1 sparsenet-40-24`.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-$(bash benches/peers/setup.sh)}"
export PYTHON
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
exec cargo run --release --manifest-path benches/peers/Cargo.toml -- "$@"
