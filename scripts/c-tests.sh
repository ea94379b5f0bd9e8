#!/usr/bin/env bash
# The C ABI's tests (issue 15): `cargo test -p sparsec-capi` (the header is current, the ABI's
# status codes and messages, and examples/c/classify.c compiled with the system cc against the
# static library, run on the golden sparsenet-40-24 and compared with the golden vector), then
# that same program once under valgrind, which must report no leak (definite or indirect) and no
# invalid access. Installs valgrind (Debian) when missing. Exits non-zero on any failure.
# Called by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
test -d ../shared/golden || { echo "c-tests needs ../shared (golden vectors) beside the clone"; exit 1; }

if ! command -v valgrind >/dev/null; then
    sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq && $sudo apt-get install -y -qq valgrind
fi

# .ci/run sets SPARSEC_CAPI_TESTED=1: its workspace test step already ran these tests (which
# build the example below); `-p sparsec-capi` alone would resolve features differently and
# rebuild most dependencies.
if [ "${SPARSEC_CAPI_TESTED:-}" != 1 ]; then
    cargo test -p sparsec-capi
fi

target="${CARGO_TARGET_DIR:-target}"
dir="$target/tmp/c-example"   # written by runtime/capi/tests/c_example.rs
test -x "$dir/classify" || { echo "c-tests: $dir/classify is missing: run cargo test -p sparsec-capi"; exit 1; }
# Two session threads: the team's worker threads are started and joined under valgrind too.
SPARSEC_THREADS=2 valgrind --error-exitcode=1 --leak-check=full \
    --errors-for-leak-kinds=definite,indirect \
    "$dir/classify" "$dir/model.bin" "$dir/input.f32" "$dir/expected.f32"
echo "c-tests: valgrind clean"
