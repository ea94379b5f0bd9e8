"""The cross-built Python extension on aarch64 (issue 19), run by `scripts/aarch64.sh python`
under qemu with Debian's arm64 python3.11 and numpy: imports `sparsec`, compiles a golden model
for this machine (`target="cpu"`, so cpu-aarch64: the compiler runs on aarch64 too), loads it,
runs the golden input with the NEON kernels at 1 and 2 threads and checks the output against
the golden one (relative error under 2e-4, as every executor's golden test).

    python3 scripts/aarch64-python-check.py examples/models/NAME.snet

Reads ../shared/golden/NAME.safetensors (weights) and NAME.io.safetensors (input, output)
with numpy alone (no safetensors package on the board).
"""

import json
import os
import platform
import struct
import sys
import time

import numpy as np

import sparsec


def tensors(path):
    """The tensors of a .safetensors file (F32 only), by name."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        assert t["dtype"] == "F32", (name, t["dtype"])
        lo, hi = t["data_offsets"]
        out[name] = np.frombuffer(data[8 + n + lo : 8 + n + hi], "<f4").reshape(t["shape"])
    return out


def main():
    model = sys.argv[1]
    name = os.path.splitext(os.path.basename(model))[0]
    golden = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "golden")
    io = tensors(os.path.join(golden, f"{name}.io.safetensors"))
    t0 = time.time()
    # A fixed Winograd tile: "auto" measures candidate builds against the interpreter, minutes
    # under qemu.
    blob = sparsec.compile(
        model,
        weights=os.path.join(golden, f"{name}.safetensors"),
        target="cpu",
        max_batch=2,
        winograd="2x2",
    )
    t1 = time.time()
    m = sparsec.Model.load(bytes(blob))
    want = io["output"].astype(np.float64)
    print(
        f"python {platform.python_version()} on {platform.machine()}, numpy {np.__version__}: "
        f"{name} compiled in {t1 - t0:.1f} s ({len(blob)} bytes)"
    )
    for threads in (1, 2):
        got = m.session(threads=threads).run(np.ascontiguousarray(io["input"]))
        err = np.linalg.norm(got - want) / np.linalg.norm(want)
        print(f"  {threads} thread(s): output {got.shape}, relative error vs golden {err:.3e}")
        if not err < 2e-4:
            sys.exit(f"relative error {err:e} over 2e-4")
    print(f"aarch64 python: ok in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
