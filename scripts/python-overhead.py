"""The Python binding's overhead per call at batch 1 (issue 15): `session.run(x)` from Python
against `Session::run` looped in Rust on the same session (`Session._rust_run_seconds`, same
build, same threads). Rounds alternate between the two; the medians are compared.

    python scripts/python-overhead.py [MODEL.snet | --tiny] [--threads N] [--iterations K] [--rounds R]

Needs the package installed (scripts/python-tests.sh makes target/py-venv with a release build).
"""

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

import sparsec

ROOT = Path(__file__).resolve().parents[1]

parser = argparse.ArgumentParser()
parser.add_argument("model", nargs="?", default=str(ROOT / "examples/models/sparsenet-40-24.snet"))
parser.add_argument("--threads", type=int, default=None)
parser.add_argument("--tiny", action="store_true",
                    help="a one-convolution 8x8 model instead: the binding's fixed cost per call in microseconds")
parser.add_argument("--iterations", type=int, default=200)
parser.add_argument("--rounds", type=int, default=7)
args = parser.parse_args()

TINY = ('model "tiny"\ninput [3, 8, 8]\nstem { conv0 = conv(4, kernel = 3, pad = 1) }\n'
        "head { norm = batch_norm()\n relu()\n global_avg_pool()\n fc = linear(5) }\n")
source = TINY if args.tiny else args.model
model = sparsec.Model.load(sparsec.compile(source, random_weights=0, max_batch=1))
session = model.session(threads=args.threads)
x = np.random.default_rng(0).standard_normal((1, *model.input_shape), dtype=np.float32)
for _ in range(20):
    session.run(x)

rust, python = [], []
for _ in range(args.rounds):
    rust.append(session._rust_run_seconds(x, args.iterations) / args.iterations)
    start = time.perf_counter()
    for _ in range(args.iterations):
        session.run(x)
    python.append((time.perf_counter() - start) / args.iterations)

r, p = statistics.median(rust), statistics.median(python)
print(f"model {model.name}, batch 1, {session.threads} thread(s), {args.rounds} rounds of {args.iterations} calls")
print(f"Rust Session::run   median {r * 1e6:9.1f} us/call  (rounds: {', '.join(f'{v * 1e6:.1f}' for v in rust)})")
print(f"Python session.run  median {p * 1e6:9.1f} us/call  (rounds: {', '.join(f'{v * 1e6:.1f}' for v in python)})")
print(f"overhead {(p - r) * 1e6:+.1f} us/call = {(p / r - 1) * 100:+.2f}%")
