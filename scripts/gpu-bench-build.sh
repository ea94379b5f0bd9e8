#!/usr/bin/env bash
# Step 1 of the GPU benchmark, on a machine with Rust (this one): builds everything the GPU
# machine needs, which has PyTorch and a GPU but no Rust and no network. Makes
# target/gpu-bench-bundle/ (and a .tar.gz of it): the golden models compiled for CUDA with
# NVRTC (max batch 256), the release `gpu-bench` binary (runtime built with `cuda`), the
# golden weights and input/output pairs, gpu_bench.py and gpu-bench.sh. See docs/cuda.md.
# CUDA_ARCH=sm_90 builds cubins for H100/H200 only (smaller files); PTX is always included.
# MODELS="a b" narrows the models (default: the four golden ones); NO_PTX=1 leaves the PTX out
# (sparsenet-bc-1000-12's PTX is hundreds of MB, too big to carry to a GPU machine).
# PRECISIONS="fp32 tf32 bf16" (the default) also compiles each model with --precision tf32 and
# bf16 (MODEL.tf32.bin, MODEL.bf16.bin) for `gpu-bench.sh --precisions fp32,tf32,bf16`;
# PRECISIONS=fp32 makes the FP32 bundle only. NO_WEIGHTS=1 leaves the golden .safetensors out
# (PyTorch then times its default initialisation; sparsec is still checked against golden).
set -euo pipefail
cd "$(dirname "$0")/.."
test -d ../shared/golden || { echo "needs ../shared/golden beside the clone"; exit 1; }
NVRTC_LIB="$(bash .ci/nvrtc.sh)"
export LD_LIBRARY_PATH="$NVRTC_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
cargo build --release -p sparsec -p gpu-bench --features gpu-bench/cuda
out=target/gpu-bench-bundle
rm -rf "$out" && mkdir -p "$out"
for m in ${MODELS:-sparsenet-40-24 sparsenet-bc-100-24 densenet-bc-100-12 sparsenet-bc-1000-12}; do
  echo "compiling $m for CUDA"
  for p in ${PRECISIONS:-fp32 tf32 bf16}; do
    name="$m.bin"
    [ "$p" = fp32 ] || name="$m.$p.bin"
    target/release/sparsec "examples/models/$m.snet" --target cuda --precision "$p" \
      --weights "../shared/golden/$m.safetensors" --max-batch 256 \
      --cuda-arch "${CUDA_ARCH:-sm_80,sm_90}" ${NO_PTX:+--no-ptx} -o "$out/$name"
  done
  cp "../shared/golden/$m.io.safetensors" "$out/"
  # NO_WEIGHTS=1: PyTorch runs its default initialisation (timings only, its golden check
  # skipped); sparsec's model.bin holds the golden weights either way.
  [ -n "${NO_WEIGHTS:-}" ] || cp "../shared/golden/$m.safetensors" "$out/"
done
cp target/release/gpu-bench scripts/gpu_bench.py scripts/gpu-bench.sh "$out/"
tar -C target -czf target/gpu-bench-bundle.tar.gz gpu-bench-bundle
echo "bundle: $out (and target/gpu-bench-bundle.tar.gz); on the GPU machine: bash gpu-bench.sh"
