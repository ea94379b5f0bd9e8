"""A real torchvision DenseNet (ImageNet, 224x224, random weights) exported by torch.onnx, compiled
by sparsec and checked against ONNX Runtime on the same file (issue 16, docs/onnx.md "Real
exports").

The model is torchvision.models.densenet121(weights=None) (or densenet169/201) in eval mode, with
seed 0, and every batch norm given random statistics and affine parameters (torchvision
initialises them to 1/0/0/1, which would make every batch norm the identity and let the
exporters deduplicate them into one shared initializer). Both exporters run:

- the default of the installed torch (torch >= 2.9: the dynamo / torch.export one, opset 18,
  weights in an external file `NAME.onnx.data` beside `NAME.onnx`), and
- the legacy TorchScript one (`dynamo=False`, opset 17, weights inside the file),

each with a dynamic batch dimension. For each file: `sparsec FILE -o FILE.bin` (timed),
`sparsec stats --json FILE` (MACs and memory, planned against naive), then batches 1 and 8 of
the same random input through `sparsec run` and ONNX Runtime; the relative error
||sparsec - ort|| / ||ort|| must be below 2e-4, or the script exits non-zero. PyTorch's own
output is compared as well (reported, not a condition: it is a third implementation).

usage: python scripts/onnx-densenet-export.py SPARSEC [--model densenet121] [--work DIR]
       [--exporters dynamo,legacy] [--keep-init]
(run by scripts/onnx-densenet121-export.sh, which makes the venv)
"""
import argparse
import json
import os
import subprocess
import sys
import time
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torchvision

TOLERANCE = 2e-4
BATCHES = (1, 8)


def build(name, keep_init):
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    if keep_init:
        return model
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            elif isinstance(m, torch.nn.Linear):
                m.bias.copy_(torch.randn(m.out_features, generator=g) * 0.01)
    return model


def export(model, path, exporter):
    x = torch.randn(1, 3, 224, 224)
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            # What a user gets from torch.onnx.export(model, (x,), path) on torch >= 2.9, plus a
            # dynamic batch.
            torch.onnx.export(model, (x,), path, dynamo=True, opset_version=18,
                              input_names=["input"], output_names=["output"],
                              dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
        else:
            torch.onnx.export(model, (x,), path, dynamo=False, opset_version=17,
                              input_names=["input"], output_names=["output"],
                              dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    seconds = time.perf_counter() - t
    m = onnx.load(path, load_external_data=False)
    ops = {}
    for n in m.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    external = sum(1 for i in m.graph.initializer if i.data_location == onnx.TensorProto.EXTERNAL)
    opset = max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))
    size = os.path.getsize(path) + (os.path.getsize(path + ".data") if os.path.exists(path + ".data") else 0)
    print(f"  exported in {seconds:.1f} s: opset {opset}, {len(m.graph.node)} nodes "
          f"({', '.join(f'{k} {v}' for k, v in sorted(ops.items(), key=lambda kv: -kv[1]))}), "
          f"{len(m.graph.initializer)} initializers ({external} external), "
          f"{len(m.graph.value_info)} value_info, {size / 1e6:.1f} MB")


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr}")
    return r


def check(sparsec, model, path, tag):
    binary = path[:-5] + ".bin"
    cmd = [sparsec, path, "-o", binary]
    t = time.perf_counter()
    r = run(cmd)
    compile_s = time.perf_counter() - t
    print(f"  $ {' '.join(cmd)}\n  {r.stderr.strip()}\n  compile time {compile_s:.2f} s")
    s = json.loads(run([sparsec, "stats", "--json", path]).stdout)
    naive_macs, macs = s["macs_per_image"], s["optimized_macs_per_image"]
    print(f"  parameters {s['params']:,}; multiply-adds per image {naive_macs / 1e9:.3f} G naive, "
          f"{macs / 1e9:.3f} G planned ({100 * (1 - macs / naive_macs):.2f}% fewer)")
    print(f"  activation memory per image: arena {s['arena_bytes']:,} bytes "
          f"(lower bound {s['lower_bound_bytes']:,}), naive {s['naive_activation_bytes']:,} "
          f"(every tensor its own buffer: {s['naive_activation_bytes'] / s['arena_bytes']:.1f}x), "
          f"{s['materialising_peak_bytes']:,} concat-materialising peak "
          f"({s['materialising_peak_bytes'] / s['arena_bytes']:.2f}x)")
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    errors = []
    for batch in BATCHES:
        x = rng.standard_normal((batch, 3, 224, 224)).astype(np.float32)
        xin, yout = f"{path[:-5]}-x{batch}.npy", f"{path[:-5]}-y{batch}.npy"
        np.save(xin, x)
        run([sparsec, "run", binary, "--input", xin, "--output", yout])
        want = session.run(None, {"input": x})[0]
        got = np.load(yout).reshape(want.shape)
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        err = float(np.linalg.norm(got - want) / np.linalg.norm(want))
        torch_err = float(np.linalg.norm(ref - want) / np.linalg.norm(want))
        print(f"  batch {batch}: relative error sparsec vs ONNX Runtime {ort.__version__}: {err:.2e} "
              f"(max abs {np.abs(got - want).max():.2e}; PyTorch vs ONNX Runtime {torch_err:.2e})")
        errors.append(err)
    return errors


def main():
    p = argparse.ArgumentParser()
    p.add_argument("sparsec")
    p.add_argument("--model", default="densenet121")
    p.add_argument("--work", default="target/densenet-export")
    p.add_argument("--exporters", default="dynamo,legacy")
    p.add_argument("--keep-init", action="store_true",
                   help="torchvision's own initialisation (identity batch norms, zero classifier "
                        "bias): the exporters then share one initializer among the batch norms")
    a = p.parse_args()
    os.makedirs(a.work, exist_ok=True)
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, onnx {onnx.__version__}, "
          f"onnxruntime {ort.__version__}, numpy {np.__version__}")
    model = build(a.model, a.keep_init)
    bad = []
    for exporter in a.exporters.split(","):
        path = f"{a.work}/{a.model}-{exporter}.onnx"
        print(f"{a.model}, torch.onnx.export ({exporter}) -> {path}")
        export(model, path, exporter)
        errs = check(os.path.abspath(a.sparsec), model, path, exporter)
        bad += [f"{exporter} batch {b}: {e:.2e}" for b, e in zip(BATCHES, errs) if not e < TOLERANCE]
    if bad:
        sys.exit(f"relative error above {TOLERANCE}: {'; '.join(bad)}")
    print(f"all within {TOLERANCE}")


if __name__ == "__main__":
    main()
