#!/usr/bin/env python3
"""Times one ONNX model in ONNX Runtime (CPU) for the peer benchmark (tests/benches/peers.rs).

Settings match the sparsec side: intra-op threads as given (2 by default), one inter-op thread,
sequential execution, all graph optimisations on. Runs `--warmup` calls, then up to `--iters`
timed calls (at least `--min-iters`, stopping early once `--budget-s` seconds of timed calls
have passed; fewer, at least one, when a warm-up call shows they would overrun `--cap-s`), and prints one JSON object with the median in milliseconds.

The timed input is read from `--input` (raw little-endian float32, NCHW, `batch` images), as
written by the Rust harness, or else drawn from numpy with `--seed`. With `--check-input` (raw
float32, any whole number of images) the script also runs that input once and returns the
output in the JSON (`check_output`), so the harness can compare it with the golden output.

Needs `pip install onnxruntime` (which brings numpy).
"""

import argparse
import json
import statistics
import sys
import time


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="path to the .onnx file")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=2, help="intra-op threads")
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
        import onnxruntime as ort
    except ImportError as e:
        print(json.dumps({"error": f"{e}; install with `pip install onnxruntime`"}))
        return 2

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    t0 = time.perf_counter()
    sess = ort.InferenceSession(args.model, sess_options=opts, providers=["CPUExecutionProvider"])
    load_s = time.perf_counter() - t0
    name = sess.get_inputs()[0].name
    image = (3, 32, 32)
    per_image = 3 * 32 * 32

    if args.input:
        x = np.fromfile(args.input, dtype="<f4")
        if x.size != args.batch * per_image:
            print(json.dumps({"error": f"{args.input}: {x.size} floats, want {args.batch * per_image}"}))
            return 2
    else:
        x = np.random.default_rng(args.seed).uniform(-1.0, 1.0, args.batch * per_image)
    x = x.astype(np.float32).reshape((args.batch,) + image)

    out = {
        "ort_version": ort.__version__,
        "model": args.model,
        "batch": args.batch,
        "threads": args.threads,
        "load_s": load_s,
    }
    if args.check_input:
        c = np.fromfile(args.check_input, dtype="<f4")
        c = c.astype(np.float32).reshape((-1,) + image)
        out["check_output"] = [float(v) for v in sess.run(None, {name: c})[0].ravel()]

    cell_start = time.perf_counter()
    last = 0.0
    for _ in range(args.warmup):
        t = time.perf_counter()
        sess.run(None, {name: x})
        last = time.perf_counter() - t
    min_iters = args.min_iters
    if last > 0.0:
        left = args.cap_s - (time.perf_counter() - cell_start)
        min_iters = max(1, min(min_iters, int(left / last)))
    times = []
    start = time.perf_counter()
    while len(times) < args.iters:
        t = time.perf_counter()
        sess.run(None, {name: x})
        times.append((time.perf_counter() - t) * 1e3)
        if len(times) >= min_iters and time.perf_counter() - start > args.budget_s:
            break
    out["iters"] = len(times)
    out["median_ms"] = statistics.median(times)
    out["min_ms"] = min(times)
    out["times_ms"] = times
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
