"""Checks `sparsec MODEL.snet --emit onnx` against ONNX Runtime: each model is exported with
random weights, compiled by sparsec from the same weights, and both run the same random batch;
the relative error ||sparsec - ort|| / ||ort|| must be below 2e-4. A model whose ONNX Runtime
output is not finite with random weights (deep summed networks overflow) is listed as not
compared, never as passed.

usage: python scripts/onnx-ort-check.py SPARSEC [MODEL.snet ...]   (default: every example model)
set-up: python3 -m venv target/venv && target/venv/bin/pip install onnxruntime numpy
"""
import glob
import os
import subprocess
import sys
import tempfile

import numpy as np
import onnxruntime as ort

TOLERANCE = 2e-4


def check(sparsec, model, tmp, batch=2, seed=3):
    stem = os.path.splitext(os.path.basename(model))[0]
    onnx_path, bin_path = f"{tmp}/{stem}.onnx", f"{tmp}/{stem}.bin"
    x_path, y_path = f"{tmp}/{stem}.x.npy", f"{tmp}/{stem}.y.npy"
    subprocess.run([sparsec, model, "--random-weights", str(seed), "--emit", "onnx", "-o", onnx_path],
                   check=True, capture_output=True)
    subprocess.run([sparsec, model, "--random-weights", str(seed), "-o", bin_path],
                   check=True, capture_output=True)
    s = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    shape = [batch] + [d for d in s.get_inputs()[0].shape[1:]]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    np.save(x_path, x)
    subprocess.run([sparsec, "run", bin_path, "--input", x_path, "--output", y_path],
                   check=True, capture_output=True)
    want = s.run(None, {s.get_inputs()[0].name: x})[0].reshape(batch, -1)
    got = np.load(y_path).reshape(batch, -1)
    if not np.isfinite(want).all():
        # Random weights overflow deep summed networks (sparsenet-plus-*): nothing to compare.
        same = bool((np.isfinite(got) == np.isfinite(want)).all())
        print(f"{stem}: NOT COMPARED: ONNX Runtime's output is not finite with random weights "
              f"(sparsec's non-finite entries {'match' if same else 'differ'})", flush=True)
        return None
    err = float(np.linalg.norm(got - want) / np.linalg.norm(want))
    print(f"{stem}: relative error {err:.2e} (sparsec vs ONNX Runtime {ort.__version__})", flush=True)
    return err < TOLERANCE


def main():
    sparsec = sys.argv[1]
    models = sys.argv[2:] or sorted(glob.glob("examples/models/*.snet"))
    with tempfile.TemporaryDirectory() as tmp:
        results = {m: check(sparsec, m, tmp) for m in models}
    bad = [m for m, ok in results.items() if ok is False]
    skipped = [m for m, ok in results.items() if ok is None]
    if skipped:
        print(f"not compared: {', '.join(skipped)}")
    if bad:
        sys.exit(f"above {TOLERANCE}: {', '.join(bad)}")


if __name__ == "__main__":
    main()
