#!/usr/bin/env bash
# Threads under contention (docs/benchmarks.md, issue 17 item 4): two `sparsec` binaries
# (/tmp/sparsec-before and /tmp/sparsec-after, release builds of two commits) interleaved,
# 1 vs 2 threads at batch 1, without and with a busy loop pinned to CPU 1; everything at
# nice -15 so that the other users of a shared machine disturb it less (run as root).
# usage: scripts/contention-bench.sh ROUNDS MODEL.bin OUT.tsv
set -u
ROUNDS=$1; MODEL=$2; OUT=$3
export SPARSEC_KEY_DIR=/tmp/fz-keys
echo -e "round\tbusy\tbinary\tthreads\tmedian_ms\tp90_ms\tmin_ms" > "$OUT"
for r in $(seq 1 "$ROUNDS"); do
  for busy in 0 1; do
    if [ "$busy" = 1 ]; then nice -n -15 taskset -c 1 sh -c 'while :; do :; done' & BUSY=$!; sleep 0.3; fi
    for bin in before after; do
      for t in 1 2; do
        j=$(nice -n -15 /tmp/sparsec-$bin bench "$MODEL" --threads $t --batch 1 --iters 150 --warmup 15 --json 2>/dev/null)
        python3 - "$r" "$busy" "$bin" "$t" "$j" >> "$OUT" <<'PY'
import json,sys
r,b,bn,t,j=sys.argv[1:]
d=json.loads(j); l=d.get("latency_ms",d)
print("\t".join([r,b,bn,t,str(l.get("median")),str(l.get("p90")),str(l.get("min"))]))
PY
      done
    done
    if [ "$busy" = 1 ]; then kill "$BUSY"; wait "$BUSY" 2>/dev/null; fi
  done
done
