"""The timing harness shared by the Python peers of the peer benchmark (`ort_bench.py`,
`openvino_bench.py`; driven by `src/main.rs`): one command line, one input format, one timing
loop and one JSON answer, so the peers are measured alike and differ only in how they load and
run a model.

Each script calls `main(peer)` with a `peer(args)` function that imports its runtime and returns
`(version, extra, compile)`: `extra` is a dict of settings for the JSON, and `compile(batch)`
loads the model for `batch` images and returns a function from a float32 NCHW numpy array to
the output array. Runs `--warmup` calls, then up to `--iters` timed calls (at least
`--min-iters`, stopping early once `--budget-s` seconds of timed calls have passed; fewer, at
least one, when a warm-up call shows they would overrun `--cap-s`), and prints one JSON object
with every time and the median in milliseconds.

The timed input is read from `--input` (raw little-endian float32, NCHW, `batch` images), as
written by the Rust harness, or else drawn from numpy with `--seed`. With `--check-input` (raw
float32, any whole number of images) the script also runs that input once and returns the
output in the JSON (`check_output`), so the harness can compare it with the golden output.
An import failure or a bad input is a JSON `error`, exit status 2.

Memory: `peak_rss_delta_mib` is the process's peak resident memory while it loads the model for
`batch` and runs the warm-up and timed calls, less its resident memory just before loading (the
peak counter is reset there through `/proc/self/clear_refs`), so the runtime's import and the
input array are not counted. The check run comes after, outside the measurement.
"""

import argparse
import json
import os
import statistics
import time

IMAGE = (3, 32, 32)
PER_IMAGE = 3 * 32 * 32


def _status_kib(field):
    """A `VmRSS`/`VmHWM` figure of /proc/self/status in KiB, or None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss():
    """Resets VmHWM to the current RSS (Linux 4.0+); False where that is not possible."""
    try:
        with open(f"/proc/{os.getpid()}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def main(description, peer) -> int:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", required=True, help="path to the .onnx file")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=2, help="threads for the peer")
    p.add_argument("--iters", type=int, default=20, help="most timed calls")
    p.add_argument("--min-iters", type=int, default=3, help="fewest timed calls")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls first")
    p.add_argument("--budget-s", type=float, default=1e9, help="stop timing after this long")
    p.add_argument("--cap-s", type=float, default=1e9,
                   help="slow calls get fewer timed calls (at least one) to stay within this")
    p.add_argument("--input", help="raw float32 input for the timed calls")
    p.add_argument("--seed", type=int, default=42, help="numpy seed when --input is absent")
    p.add_argument("--check-input", help="raw float32 input to run once and return")
    args = p.parse_args()

    try:
        import numpy as np
        version, extra, compile_for = peer(args)
    except ImportError as e:
        print(json.dumps({"error": f"{e}; run `bash benches/peers/setup.sh` (a venv in target/)"}))
        return 2

    if args.input:
        x = np.fromfile(args.input, dtype="<f4")
        if x.size != args.batch * PER_IMAGE:
            print(json.dumps({"error": f"{args.input}: {x.size} floats, want {args.batch * PER_IMAGE}"}))
            return 2
    else:
        x = np.random.default_rng(args.seed).uniform(-1.0, 1.0, args.batch * PER_IMAGE)
    x = np.ascontiguousarray(x.astype(np.float32).reshape((args.batch,) + IMAGE))

    rss_before = _status_kib("VmRSS")
    peak_reset = _reset_peak_rss()
    t0 = time.perf_counter()
    run = compile_for(args.batch)
    load_s = time.perf_counter() - t0
    out = {
        "version": version,
        "model": args.model,
        "batch": args.batch,
        "threads": args.threads,
        "load_s": load_s,
        **extra,
    }

    cell_start = time.perf_counter()
    last = 0.0
    for _ in range(args.warmup):
        t = time.perf_counter()
        run(x)
        last = time.perf_counter() - t
    min_iters = args.min_iters
    if last > 0.0:
        left = args.cap_s - (time.perf_counter() - cell_start)
        min_iters = max(1, min(min_iters, int(left / last)))
    times = []
    start = time.perf_counter()
    while len(times) < args.iters:
        t = time.perf_counter()
        run(x)
        times.append((time.perf_counter() - t) * 1e3)
        if len(times) >= min_iters and time.perf_counter() - start > args.budget_s:
            break
    peak = _status_kib("VmHWM")
    if peak_reset and peak is not None and rss_before is not None:
        out["peak_rss_delta_mib"] = max(0, peak - rss_before) / 1024.0
    if args.check_input:
        c = np.fromfile(args.check_input, dtype="<f4")
        c = np.ascontiguousarray(c.astype(np.float32).reshape((-1,) + IMAGE))
        check = run if c.shape[0] == args.batch else compile_for(c.shape[0])
        out["check_output"] = [float(v) for v in np.asarray(check(c)).ravel()]
    out["iters"] = len(times)
    out["median_ms"] = statistics.median(times)
    out["min_ms"] = min(times)
    out["times_ms"] = times
    print(json.dumps(out))
    return 0
