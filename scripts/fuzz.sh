#!/usr/bin/env bash
# Runs every fuzz target (fuzz/, cargo-fuzz + libFuzzer) for SECONDS_PER_TARGET (default 60),
# one at a time in one process (no -jobs/-workers), then minimises its corpus (`cargo fuzz cmin`) into the committed
# folder fuzz/corpus/<target>. Crashes land in fuzz/artifacts/<target>/ (not committed: a fixed
# one is copied to fuzz/regressions/<target>/, which tests/tests/fuzz_corpus.rs replays).
# Prints the CPU seconds each target used. docs/fuzzing.md says what each target covers.
#
#   bash scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# The toolchain is stable Rust: cargo-fuzz needs nightly flags (-Zsanitizer, -Cpasses), so
# RUSTC_BOOTSTRAP=1 unlocks them. The sanitizer is off (`-s none`): the code under test is
# safe Rust apart from small audited blocks, and AddressSanitizer doubles the build and run
# time; coverage instrumentation and debug assertions stay on.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET=${1:-60}
shift || true
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
  TARGETS=(model_bin npy safetensors snet onnx)
fi
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
# The seeds (made from fuzz/seeds/tiny.snet by sparsec_tests::fuzz_entry::seeds) into the
# corpus; FUZZ_SEEDS=0 skips this (it builds the workspace's test profile).
if [ "${FUZZ_SEEDS:-1}" != 0 ]; then
  SPARSEC_FUZZ_SEEDS="$PWD/fuzz/corpus" cargo test -q -p sparsec-tests --test fuzz_corpus seeds_run_clean
fi
FUZZ_FLAGS=(--sanitizer none --debug-assertions --fuzz-dir fuzz)
cargo fuzz build "${FUZZ_FLAGS[@]}"
for t in "${TARGETS[@]}"; do
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  TIMEFORMAT="%U %S"
  { time cargo fuzz run "${FUZZ_FLAGS[@]}" "$t" "fuzz/corpus/$t" -- \
      -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=2048 -timeout=10 \
      -max_len=262144 -print_final_stats=1 \
      2>"fuzz/artifacts/$t/last-run.log" >/dev/null || true; } 2>"fuzz/artifacts/$t/cpu.txt"
  echo "== $t: ${SECONDS_PER_TARGET} s wall, CPU seconds (user sys): $(cat "fuzz/artifacts/$t/cpu.txt")"
  grep -E '^stat::(number_of_executed_units|new_units_added|peak_rss_mb)' "fuzz/artifacts/$t/last-run.log" || true
  if ls "fuzz/artifacts/$t"/crash-* "fuzz/artifacts/$t"/oom-* "fuzz/artifacts/$t"/timeout-* >/dev/null 2>&1; then
    echo "== $t: FINDINGS in fuzz/artifacts/$t/"
  fi
  cargo fuzz cmin "${FUZZ_FLAGS[@]}" "$t" "fuzz/corpus/$t" -- -rss_limit_mb=2048 -timeout=10 \
    >"fuzz/artifacts/$t/cmin.log" 2>&1 || echo "== $t: cmin failed (fuzz/artifacts/$t/cmin.log)"
  # Keep the committed corpus small (docs/fuzzing.md): past the target's budget, drop the
  # fuzzer's inputs in name order (libFuzzer names them by SHA-1: a pseudo-random sample),
  # those over 4 KiB first, then any; the seeds are kept.
  budget=$([ "$t" = model_bin ] && echo 655360 || echo 131072)
  python3 - "fuzz/corpus/$t" "$budget" <<'PY'
import os, sys
d, budget = sys.argv[1], int(sys.argv[2])
files = sorted(os.listdir(d))
size = lambda f: os.path.getsize(os.path.join(d, f))
total = sum(size(f) for f in files)
for big_only in (True, False):
    for f in files:
        if total <= budget:
            break
        path = os.path.join(d, f)
        # A libFuzzer name (SHA-1), not a seed.
        if len(f) == 40 and os.path.exists(path) and (size(f) > 4096 or not big_only):
            total -= size(f)
            os.remove(path)
PY
  echo "== $t: corpus $(ls "fuzz/corpus/$t" | wc -l) files, $(cat "fuzz/corpus/$t"/* | wc -c) bytes"
done
