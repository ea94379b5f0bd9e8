"""Ray Serve test and benchmark (issue 15): starts Ray on 127.0.0.1, serves examples/serve/app.py
with 1 and then 2 replicas, sends a bounded number of concurrent requests (npy bodies, plus a
few JSON ones), checks every answer equals the direct `session.run` of the same input bit for
bit, reports requests/s and p50/p99 latency, and shuts Ray down. Exits 1 on any mismatch.

    scripts/serve-bench.sh            # makes target/serve-venv (ray[serve], the package) and runs this
    python scripts/serve-bench.py [--requests 300] [--concurrency 16] [--replicas 1 2]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

import sparsec

ROOT = Path(__file__).resolve().parents[1]
SERVE_DIR = ROOT / "examples" / "serve"

parser = argparse.ArgumentParser()
parser.add_argument("--model", default=str(ROOT / "examples/models/sparsenet-40-24.snet"))
parser.add_argument("--requests", type=int, default=300)
parser.add_argument("--concurrency", type=int, default=16)
parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
parser.add_argument("--port", type=int, default=8765)
args = parser.parse_args()

out_dir = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "serve"
out_dir.mkdir(parents=True, exist_ok=True)
model_bin = out_dir / "model.bin"
sparsec.compile(args.model, random_weights=0, max_batch=16, out=model_bin)
model = sparsec.Model.load(model_bin)
reference = model.session(threads=1)
rng = np.random.default_rng(0)
images = [rng.standard_normal(model.input_shape, dtype=np.float32) for _ in range(32)]
expected = [reference.run(x[None])[0] for x in images]

# Replica processes import `app` from examples/serve: Ray's workers inherit this environment.
os.environ["PYTHONPATH"] = os.pathsep.join([str(SERVE_DIR), os.environ.get("PYTHONPATH", "")])
sys.path.insert(0, str(SERVE_DIR))
import ray  # noqa: E402
from ray import serve  # noqa: E402

import app as serve_app  # noqa: E402


def post(i: int) -> tuple[float, bool]:
    x = images[i % len(images)]
    if i % 10 == 9:
        body, ctype = json.dumps({"image": x.tolist()}).encode(), "application/json"
    else:
        buf = io.BytesIO()
        np.save(buf, x)
        body, ctype = buf.getvalue(), "application/x-npy"
    req = urllib.request.Request(f"http://127.0.0.1:{args.port}/", data=body, headers={"Content-Type": ctype})
    start = time.perf_counter()
    with urllib.request.urlopen(req, timeout=120) as r:
        answer = np.asarray(json.loads(r.read())["logits"], dtype=np.float32)
    latency = time.perf_counter() - start
    return latency, bool(np.array_equal(answer, expected[i % len(images)]))


ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False)
failed = False
try:
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    for replicas in args.replicas:
        serve.run(serve_app.app({"model": str(model_bin), "replicas": replicas, "threads": 1}),
                  name="sparsec", route_prefix="/")
        for i in range(4):  # warm-up: each replica's session memory
            post(i)
        start = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            results = list(pool.map(post, range(args.requests)))
        wall = time.perf_counter() - start
        lat = sorted(r[0] for r in results)
        bad = sum(not ok for _, ok in results)
        failed |= bad > 0
        p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1e3  # noqa: E731
        print(f"replicas {replicas}: {args.requests} requests, concurrency {args.concurrency}: "
              f"{args.requests / wall:.1f} req/s, p50 {p(0.50):.1f} ms, p99 {p(0.99):.1f} ms, "
              f"mean {statistics.mean(lat) * 1e3:.1f} ms; {bad} answer(s) differ from session.run",
              flush=True)
        serve.delete("sparsec")
finally:
    serve.shutdown()
    ray.shutdown()
sys.exit(1 if failed else 0)
