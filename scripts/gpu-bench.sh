#!/usr/bin/env bash
# Step 2 of the GPU benchmark, on the GPU machine (PyTorch + CUDA, no Rust, no network), run
# from inside the bundle made by scripts/gpu-bench-build.sh:
#   bash gpu-bench.sh [--models a,b] [--batches 1,256] [--iters N] [--no-compile]
# Checks sparsec's CUDA output against the golden outputs, then prints medians of sparsec,
# PyTorch eager (cuDNN), a captured torch.cuda.CUDAGraph and torch.compile(reduce-overhead),
# with ratios (PyTorch / sparsec). See docs/cuda.md.
set -euo pipefail
cd "$(dirname "$0")"
test -x ./gpu-bench || { echo "run this from the bundle made by scripts/gpu-bench-build.sh"; exit 1; }
exec python3 gpu_bench.py "$@"
