#!/usr/bin/env bash
# Installs NVRTC from PyPI into target/nvrtc-venv (once) and prints the directory holding
# libnvrtc.so.12, for LD_LIBRARY_PATH. Pinned to 12.9: the target GPUs run driver 580 (CUDA
# 13.0), which can JIT the PTX of an NVRTC up to 13.0, and cudarc is built for the 12.9 API.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/nvrtc-venv
lib="$venv/lib/python3*/site-packages/nvidia/cuda_nvrtc/lib"
if ! ls $lib/libnvrtc.so.12 >/dev/null 2>&1; then
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet 'nvidia-cuda-nvrtc-cu12==12.9.*' >&2
fi
cd $lib && pwd
