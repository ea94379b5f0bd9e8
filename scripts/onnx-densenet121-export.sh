#!/usr/bin/env bash
# A real torchvision DenseNet-121 exported by torch.onnx (both exporters), compiled by sparsec and
# checked against ONNX Runtime at batches 1 and 8 (relative error < 2e-4); prints the MAC and
# memory savings of sparsec's plan (docs/onnx.md, "Real exports"). Run by hand, not in CI: torch
# from PyPI pulls about 5 GB of CUDA wheels (the Linux wheel does not import without them).
#
# usage: scripts/onnx-densenet121-export.sh [densenet121|densenet169|densenet201] [extra args]
# Idempotent: the venv target/torch-venv is made once; the .onnx files go to
# target/densenet-export/ (never committed).
set -euo pipefail
cd "$(dirname "$0")/.."
model="${1:-densenet121}"
shift || true
venv=target/torch-venv
# Versions checked on CPython 3.11 (docs/onnx.md).
pkgs=(torch==2.14.1 torchvision==0.29.2 onnx==1.23.2 onnxruntime==1.32.0 onnxscript==0.7.2
      numpy==2.4.6)
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c 'import torch, torchvision, onnx, onnxruntime, onnxscript' 2>/dev/null; then
    "$venv/bin/pip" install -q "${pkgs[@]}"
fi
cargo build --release -q -p sparsec --bin sparsec
exec "$venv/bin/python" scripts/onnx-densenet-export.py target/release/sparsec --model "$model" "$@"
