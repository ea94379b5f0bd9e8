#!/usr/bin/env bash
# The Python package's tests (issue 15): a venv under target/ (created once, reused), maturin,
# numpy and pytest from PyPI, the extension built in release into the venv (`maturin develop`,
# the same build `pip install ./python` makes; see SPARSEC_PY_PROFILE below), then pytest on python/tests with the golden
# vectors of ../shared/golden. Exits non-zero on any failure. Called by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
test -d ../shared/golden || { echo "python-tests needs ../shared (golden vectors) beside the clone"; exit 1; }

target="${CARGO_TARGET_DIR:-target}"
venv="$target/py-venv"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "maturin>=1.9,<2" numpy pytest
# maturin installs into the active venv.
export VIRTUAL_ENV="$PWD/$venv"
[ "${venv#/}" != "$venv" ] && export VIRTUAL_ENV="$venv"
export PATH="$VIRTUAL_ENV/bin:$PATH"
# SPARSEC_PY_PROFILE=test (what .ci/run sets) builds with the profile `cargo test` used, so the
# extension reuses every compiled dependency instead of a second, release build of them.
maturin develop --profile "${SPARSEC_PY_PROFILE:-release}" --quiet -m python/Cargo.toml
python -m pytest -q python/tests "$@"
