#!/usr/bin/env bash
# The real-board benchmark for aarch64 (issue 19): run ON the ARM board (Raspberry Pi 5, Jetson,
# RK3588; 64-bit Linux, Rust 1.95 from rustup, `../shared` beside the clone). qemu cannot time
# anything, so docs/aarch64.md only predicts; this measures.
#
#   bash scripts/arm-bench.sh [MODEL...]    default: the four golden models
#
# Builds sparsec natively (release), compiles each golden model for this board (`--target
# cpu-aarch64`, the default accuracy-guarded kernels, measured here), checks its output against
# the golden vector, then `sparsec bench` at batch 1 and 64 on every core and on one, with the
# NEON kernels and again with SPARSEC_KERNELS=portable, data-only and native code. Prints one
# table; writes every JSON report to target/arm-bench/.
# Set ARM_BENCH_QUICK=1 for 10 timed runs instead of 50.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(uname -m)" = aarch64 ] || { echo "arm-bench: run this on the aarch64 board (this is $(uname -m))" >&2; exit 1; }
test -d ../shared/golden || { echo "arm-bench needs ../shared (golden models) beside the clone" >&2; exit 1; }

models=("$@")
[ "${#models[@]}" -gt 0 ] || models=(sparsenet-40-24 sparsenet-bc-100-24 densenet-bc-100-12 sparsenet-bc-1000-12)
iters=50
[ "${ARM_BENCH_QUICK:-}" = 1 ] && iters=10
out=target/arm-bench
mkdir -p "$out"

cargo build --release -p sparsec
sparsec=target/release/sparsec
echo "== board: $(tr -d '\0' </proc/device-tree/model 2>/dev/null || uname -m), $(nproc) cores"
grep -m1 -iE "^(model name|CPU part)" /proc/cpuinfo || true

printf '%-22s %-9s %-7s %-6s %-8s %12s %12s\n' model kernels code batch threads "median ms" "GFLOP/s"
for m in "${models[@]}"; do
    bin="$out/$m.bin"
    "$sparsec" "examples/models/$m.snet" --weights "../shared/golden/$m.safetensors" \
        --target cpu-aarch64 -o "$bin" >/dev/null
    "$sparsec" run "$bin" --input "../shared/golden/$m.io.safetensors" --logits >/dev/null
    for kernels in neon portable; do
        for code in data native; do
            for batch in 1 64; do
                for threads in "$(nproc)" 1; do
                    flags=(--batch "$batch" --threads "$threads" --iters "$iters" --json)
                    [ "$code" = native ] && flags+=(--allow-unsigned-code)
                    json="$out/$m.$kernels.$code.b$batch.t$threads.json"
                    if [ "$kernels" = portable ]; then
                        SPARSEC_KERNELS=portable "$sparsec" bench "$bin" "${flags[@]}" >"$json"
                    else
                        "$sparsec" bench "$bin" "${flags[@]}" >"$json"
                    fi
                    python3 - "$json" "$m" "$kernels" "$code" "$batch" "$threads" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
p50 = r["latency_ms"]["median"]
gf = r["gflops"]
print(f"{sys.argv[2]:<22} {sys.argv[3]:<9} {sys.argv[4]:<7} {sys.argv[5]:<6} {sys.argv[6]:<8} {p50:>12.3f} {gf:>12.2f}")
PY
                done
            done
        done
    done
done
echo "== JSON reports in $out (keys: README, 'Using it')"
