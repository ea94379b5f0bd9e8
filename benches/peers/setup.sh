#!/usr/bin/env bash
# The peer benchmark's Python peers: ONNX Runtime and OpenVINO from PyPI in a venv under
# target/ (made once), the versions docs/benchmarks.md reports. Prints the venv's python, for
# PYTHON.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=target/peers-venv
if ! "$venv/bin/python" -c 'import onnxruntime, openvino, numpy' >/dev/null 2>&1; then
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet 'onnxruntime==1.32.*' 'openvino==2026.4.*' numpy >&2
fi
echo "$PWD/$venv/bin/python"
