"""sparsec on the GPU against PyTorch (eager cuDNN, a captured torch.cuda.CUDAGraph, and
torch.compile(mode="reduce-overhead")), on the golden models at batch 1 and 256.

Runs inside the bundle that scripts/gpu-bench-build.sh makes (model.bin files compiled for
CUDA, the prebuilt `gpu-bench` binary, the golden weights and input/output pairs). Needs
python3 and PyTorch with CUDA; no network, no Rust. Every variant is timed the same way:
host input copied to the GPU, forward, output copied back, synchronised; medians over
`--iters` runs after warm-up. Before timing, sparsec's output is checked against the golden
output and so is PyTorch's.

Precisions (`--precisions fp32,tf32,bf16`, default fp32; the bundle holds MODEL.tf32.bin and
MODEL.bf16.bin, compiled with `sparsec --precision`): each is compared with PyTorch at the
matching setting. fp32: TF32 off for PyTorch (cuDNN and matmul), golden bound 2e-4. tf32:
PyTorch with `allow_tf32` on (cuDNN's default), bound 0.1. bf16: PyTorch under
`torch.autocast("cuda", dtype=torch.bfloat16)` with the model and input in channels_last
(AMP as people run it), bound 0.25. The bounds are the shim suite's golden bounds
(tests/tests/cuda_shim.rs: sparsenet-bc-100-24's trained weights amplify rounding; the other
models measured 5e-4 to 8e-3); each error is printed.

usage: python3 gpu_bench.py [--models a,b] [--batches 1,256] [--iters N] [--no-compile]
                            [--precisions fp32,tf32,bf16]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import struct
import subprocess
import sys
import time
from collections import OrderedDict

import torch
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))

# The golden models' architecture (official SparseNet module names; ../shared/golden).
CONFIGS = {
    "sparsenet-40-24": dict(growth=24, depth=40, reduction=1, classes=100, bottleneck=False),
    "sparsenet-bc-100-24": dict(growth=24, depth=100, reduction=0.5, classes=100, bottleneck=True),
    "densenet-bc-100-12": dict(growth=12, depth=100, reduction=0.5, classes=100, bottleneck=True,
                               fetch="dense"),
    "sparsenet-bc-1000-12": dict(growth=12, depth=1000, reduction=0.5, classes=10,
                                 bottleneck=True),
}


def exp_fetch(lst):
    n, i, out = len(lst), 1, []
    while i <= n:
        out.append(lst[n - i])
        i *= 2
    return out


def dense_fetch(lst):
    return list(lst)


class Unit(nn.Sequential):
    def __init__(self, cin, k, bottleneck):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU()
        if bottleneck:
            self.conv1 = nn.Conv2d(cin, 4 * k, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(4 * k)
            self.relu2 = nn.ReLU()
            self.conv2 = nn.Conv2d(4 * k, k, 3, padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(cin, k, 3, padding=1, bias=False)


class Stage(nn.Module):
    def __init__(self, n, cin, k, bottleneck, fetch):
        super().__init__()
        self.n, self.fetch = n, fetch
        chans = [cin]
        for i in range(n):
            self.add_module(f"block-{i + 1}", Unit(sum(fetch(chans)), k, bottleneck))
            chans.append(k)
        self.cout = sum(fetch(chans))

    def forward(self, x):
        outs = [x]
        for i in range(self.n):
            outs.append(self._modules[f"block-{i + 1}"](x))
            x = torch.cat(self.fetch(outs), 1)
        return x


class Transition(nn.Sequential):
    def __init__(self, cin, cout):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(cin, cout, 1, bias=False)
        self.avgpool = nn.AvgPool2d(2)


class Net(nn.Module):
    def __init__(self, growth, depth, reduction, classes, bottleneck, fetch="exp"):
        super().__init__()
        n = (depth - 4) // 3
        if bottleneck:
            n //= 2
        else:
            reduction = 1
        f = exp_fetch if fetch == "exp" else dense_fetch
        c = 2 * growth
        self.features = nn.Sequential(OrderedDict(conv0=nn.Conv2d(3, c, 3, padding=1, bias=False)))
        for s in range(3):
            st = Stage(n, c, growth, bottleneck, f)
            self.features.add_module(f"dense-stage-{s}", st)
            c = st.cout
            if s < 2:
                co = int(math.floor(c * reduction))
                self.features.add_module(f"transition-{s}", Transition(c, co))
                c = co
        self.features.add_module("norm_last", nn.BatchNorm2d(c))
        self.features.add_module("relu_last", nn.ReLU())
        self.classifier = nn.Sequential(OrderedDict(avgpool=nn.AvgPool2d(8), flatten=nn.Flatten(),
                                                    linear=nn.Linear(c, classes)))

    def forward(self, x):
        return self.classifier(self.features(x))


def read_safetensors(path):
    """float32 tensors of a .safetensors file (no `safetensors` package needed)."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        if meta["dtype"] != "F32":
            raise ValueError(f"{path}: {name} is {meta['dtype']}, expected F32")
        a, b = meta["data_offsets"]
        t = torch.frombuffer(bytearray(data[base + a:base + b]), dtype=torch.float32)
        out[name] = t.reshape(meta["shape"])
    return out


def rel_error(got, want):
    got, want = got.double().flatten(), want.double().flatten()
    return float((got - want).norm() / want.norm())


def timeit(fn, iters, warmup):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    return times[len(times) // 2]


# The golden check's bound per precision (gpu-bench --tolerance; tests/tests/cuda_shim.rs).
TOLERANCE = {"fp32": 2e-4, "tf32": 0.1, "bf16": 0.25}


def bundle_file(name, precision):
    return os.path.join(HERE, f"{name}.bin" if precision == "fp32" else f"{name}.{precision}.bin")


def sparsec(name, batches, iters, warmup, precision="fp32"):
    cmd = [os.path.join(HERE, "gpu-bench"), bundle_file(name, precision),
           "--check", os.path.join(HERE, f"{name}.io.safetensors"),
           "--tolerance", str(TOLERANCE[precision]),
           "--iters", str(iters), "--warmup", str(warmup)]
    for b in batches:
        cmd += ["--batch", str(b)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    err = next(r["relative_error"] for r in rows if "relative_error" in r)
    return err, {r["batch"]: r["median_ms"] for r in rows if "median_ms" in r}


def torch_variants(name, batches, iters, warmup, use_compile, precision="fp32"):
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    bf16 = precision == "bf16"
    # AMP as people run it: autocast to bfloat16, channels_last model and input.
    amp = ((lambda: torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False))
           if bf16 else contextlib.nullcontext)
    layout = torch.channels_last if bf16 else torch.contiguous_format
    model = Net(**CONFIGS[name])
    weights = os.path.join(HERE, f"{name}.safetensors")
    # Timings do not depend on weight values: without the file (a smaller bundle), PyTorch
    # runs its default initialisation and only its golden check is skipped.
    if os.path.exists(weights):
        missing, unexpected = model.load_state_dict(read_safetensors(weights), strict=False)
        if unexpected or any(not k.endswith("num_batches_tracked") for k in missing):
            raise ValueError(f"{name}: weights do not fit: missing {missing}, unexpected {unexpected}")
    model = model.eval().cuda().to(memory_format=layout)

    def forward(m, t):
        with amp():
            return m(t.cuda().contiguous(memory_format=layout)).float()

    io = read_safetensors(os.path.join(HERE, f"{name}.io.safetensors"))
    err = float("nan")
    if os.path.exists(weights):
        with torch.no_grad():
            err = rel_error(forward(model, io["input"]).cpu(), io["output"])
    results = {}
    for b in batches:
        x = torch.randn(b, 3, 32, 32)
        row = {}
        with torch.no_grad():
            row["eager"] = timeit(lambda: forward(model, x).cpu(), iters(b), warmup)
            static_in = torch.zeros(b, 3, 32, 32, device="cuda").contiguous(memory_format=layout)
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(3):
                    forward(model, static_in)
            torch.cuda.current_stream().wait_stream(s)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                static_out = forward(model, static_in)

            def replay():
                static_in.copy_(x)
                g.replay()
                return static_out.cpu()

            row["cuda_graph"] = timeit(replay, iters(b), warmup)
        if use_compile:
            try:
                compiled = torch.compile(model, mode="reduce-overhead")
                with torch.no_grad():
                    row["compile"] = timeit(lambda: forward(compiled, x).cpu(), iters(b), warmup)
            except Exception as e:  # noqa: BLE001 - report and go on
                print(f"  torch.compile failed on {name} batch {b}: {e}", file=sys.stderr)
        results[b] = row
    return err, results


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--models", default=",".join(CONFIGS))
    p.add_argument("--batches", default="1,256")
    p.add_argument("--iters", type=int, default=200, help="runs at batch 1 (fewer at larger batches)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    p.add_argument("--compile-deep", action="store_true",
                   help="also torch.compile sparsenet-bc-1000-12 (can take many minutes)")
    p.add_argument("--precisions", default="fp32",
                   help="fp32,tf32,bf16: sparsec's MODEL[.P].bin against PyTorch at the same setting")
    a = p.parse_args()
    batches = [int(b) for b in a.batches.split(",")]
    precisions = a.precisions.split(",")
    for prec in precisions:
        if prec not in TOLERANCE:
            p.error(f"unknown precision {prec!r} (fp32, tf32 or bf16)")
    iters = lambda b: max(20, a.iters // max(1, b // 16))  # noqa: E731
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
    print("median ms per call (host input -> GPU -> host output, synchronised); ratio = PyTorch / sparsec")
    failed = False
    for name, prec in [(n, q) for n in a.models.split(",") for q in precisions]:
        if not os.path.exists(bundle_file(name, prec)):
            print(f"\n{name} at {prec}: {bundle_file(name, prec)} is not in the bundle "
                  "(PRECISIONS for scripts/gpu-bench-build.sh)", file=sys.stderr)
            failed = True
            continue
        s_err, s_ms = sparsec(name, batches, a.iters, a.warmup, prec)
        use_compile = not a.no_compile and (name != "sparsenet-bc-1000-12" or a.compile_deep)
        t_err, t_ms = torch_variants(name, batches, iters, a.warmup, use_compile, prec)
        print(f"\n{name} at {prec}: relative error vs golden: sparsec {s_err:.2e}, "
              f"PyTorch eager {t_err:.2e}")
        failed |= not s_err < TOLERANCE[prec]
        for b in batches:
            line = f"  batch {b:>3}: sparsec {s_ms[b]:8.3f}"
            for k, v in t_ms[b].items():
                line += f" | {k} {v:8.3f} (x{v / s_ms[b]:.2f})"
            print(line)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
