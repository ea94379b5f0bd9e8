#!/usr/bin/env bash
# Ray Serve check (issue 15), kept out of .ci/run (Ray is heavy): a venv under target/ with
# ray[serve], numpy and the sparsec package (release build via maturin), then
# scripts/serve-bench.py (local Ray on 127.0.0.1, 1 and 2 replicas, every answer checked
# against session.run). Extra arguments go to serve-bench.py. Exits non-zero on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-$PWD/target}"
venv="$target/serve-venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "ray[serve]" numpy "maturin>=1.9,<2"
VIRTUAL_ENV="$venv" PATH="$venv/bin:$PATH" maturin develop --release --quiet -m python/Cargo.toml
exec "$venv/bin/python" scripts/serve-bench.py "$@"
