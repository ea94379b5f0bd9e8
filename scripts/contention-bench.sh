#!/usr/bin/env bash
# Threads under contention (docs/benchmarks.md, issue 17 item 4): one `sparsec` binary, three
# ways to run each model, interleaved round by round: 1 thread; 2 threads with the session's
# tuner (the default: each pass on the whole team or the caller alone, by measured time); and
# 2 threads pinned to the whole team (SPARSEC_ADAPTIVE_THREADS=0). Each without and with a
# busy loop pinned to CPU 1 (`taskset -c 1 sh -c 'while :; do :; done'`); everything at
# nice -15 when run as root, so that the other users of a shared machine disturb it less.
# Batch 1 runs 150 timed passes, larger batches 20 (BATCHES, default "1 64").
# usage: scripts/contention-bench.sh ROUNDS OUT.tsv MODEL.bin [MODEL.bin ...]
#   SPARSEC=path/to/sparsec (default target/release/sparsec)
set -u
ROUNDS=$1; OUT=$2; shift 2
SPARSEC=${SPARSEC:-target/release/sparsec}
BATCHES=${BATCHES:-1 64}
NICE="nice -n -15"; [ "$(id -u)" = 0 ] || NICE=""
echo -e "round\tbusy\tmodel\tbatch\tcase\tmedian_ms\tp90_ms\tmin_ms\truns_all\truns_one" > "$OUT"
for r in $(seq 1 "$ROUNDS"); do
  for busy in 0 1; do
    BUSY=
    if [ "$busy" = 1 ]; then $NICE taskset -c 1 sh -c 'while :; do :; done' & BUSY=$!; sleep 0.3; fi
    for model in "$@"; do
      for b in $BATCHES; do
        if [ "$b" = 1 ]; then iters=150; warm=15; else iters=20; warm=6; fi
        for case in 1 2-tuned 2-team; do
          t=${case%%-*}; adaptive=1; [ "$case" = 2-team ] && adaptive=0
          j=$(SPARSEC_ADAPTIVE_THREADS=$adaptive $NICE "$SPARSEC" bench "$model" --threads "$t" \
              --batch "$b" --iters $iters --warmup $warm --json 2>/dev/null)
          python3 - "$r" "$busy" "$(basename "$model" .bin)" "$b" "$case" "$j" >> "$OUT" <<'PY'
import json, sys
r, busy, model, b, case, j = sys.argv[1:]
d = json.loads(j); l = d["latency_ms"]
print("\t".join([r, busy, model, b, case, f'{l["median"]:.3f}', f'{l["p90"]:.3f}',
                 f'{l["min"]:.3f}', str(d["runs_on_all_threads"]), str(d["runs_on_one_thread"])]))
PY
        done
      done
    done
    if [ -n "$BUSY" ]; then kill "$BUSY"; wait "$BUSY" 2>/dev/null; fi
  done
done
# Summary: median over rounds of each case's median latency.
python3 - "$OUT" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
keys = sorted({(r["busy"], r["model"], int(r["batch"])) for r in rows})
print("busy\tmodel\tbatch\t1 thread\t2 tuned\t2 team\ttuned/1\truns on one (tuned)")
for busy, model, b in keys:
    med = {}
    one = 0; total = 0
    for case in ["1", "2-tuned", "2-team"]:
        xs = [float(r["median_ms"]) for r in rows
              if (r["busy"], r["model"], int(r["batch"]), r["case"]) == (busy, model, b, case)]
        med[case] = statistics.median(xs)
        if case == "2-tuned":
            for r in rows:
                if (r["busy"], r["model"], int(r["batch"]), r["case"]) == (busy, model, b, case):
                    one += int(r["runs_one"]); total += int(r["runs_one"]) + int(r["runs_all"])
    print(f"{busy}\t{model}\t{b}\t{med['1']:.2f}\t{med['2-tuned']:.2f}\t{med['2-team']:.2f}\t"
          f"{med['2-tuned'] / med['1']:.2f}\t{one}/{total}")
PY
