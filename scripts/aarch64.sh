#!/usr/bin/env bash
# aarch64 (issue 19): installs a cross toolchain for aarch64-unknown-linux-gnu from Debian when
# missing (rustup cannot fetch another target's std here: `rustc-web` 1.96 with an arm64 std,
# the cross linker, qemu-user), then runs the runtime's tests for aarch64 under qemu.
#
#   bash scripts/aarch64.sh install      only the installs (idempotent)
#   bash scripts/aarch64.sh test [ARGS]  `cargo test -p runtime --target aarch64-...` [ARGS] under
#                                        qemu (default: every runtime test)
#   bash scripts/aarch64.sh golden       the golden models cross-compiled on the host
#                                        (tests/tests/golden_aarch64.rs; SPARSEC_AARCH64_GOLDEN
#                                        picks models, all four by default), then run under qemu
#                                        (runtime/tests/golden_files.rs) with the NEON kernels and
#                                        again with SPARSEC_KERNELS=portable, outputs compared.
#                                        SPARSEC_AARCH64_HOST_DONE=1 skips the host half (CI: its
#                                        workspace test step already wrote the files).
#   bash scripts/aarch64.sh ci           what CI runs (.ci/run): one cross build for the runtime's
#                                        unit tests (every kernel variant against the f64
#                                        reference; not the throughput measurement) and the golden
#                                        files of the host half (CI's test step wrote the subset
#                                        SPARSEC_AARCH64_GOLDEN names), then the golden files again
#                                        with the portable kernels.
#   bash scripts/aarch64.sh python [--release]
#                                        the Python extension (python/: PyO3 abi3-py39,
#                                        extension-module, so nothing of Python is linked) built
#                                        for aarch64, checked to be an AArch64 ELF shared object
#                                        exporting PyInit__sparsec; then, with
#                                        SPARSEC_AARCH64_PYTHON=1, imported and run under qemu by
#                                        Debian's arm64 python3.11 and numpy, unpacked (apt-get
#                                        download, dpkg -x) into target/aarch64/python-sysroot
#   bash scripts/aarch64.sh env          prints the environment the commands run with
#   bash scripts/aarch64.sh cargo ARGS   any cargo command in that environment
#
# The cross build uses /usr/bin/rustc (Debian's 1.96: the rustup 1.95 compiler cannot use its
# std, E0514), its own CARGO_HOME and target folder under target/aarch64, so it neither fights
# the host build nor shares incompatible artefacts with it. qemu runs without `-L
# /usr/aarch64-linux-gnu`: mixing the cross ld.so with the multiarch libc hangs every program
# that starts a thread (../shared/FACTS.md); the multiarch libc6:arm64 that libstd-rust-web-dev
# pulls in is what the binaries load.
set -euo pipefail
cd "$(dirname "$0")/.."

TRIPLE=aarch64-unknown-linux-gnu

install() {
    local missing=0
    command -v qemu-aarch64 >/dev/null || missing=1
    command -v aarch64-linux-gnu-gcc >/dev/null || missing=1
    test -x /usr/bin/rustc || missing=1
    test -x /usr/bin/cargo || missing=1
    ls /usr/lib/rustlib/$TRIPLE/lib/libstd-*.rlib >/dev/null 2>&1 || missing=1
    [ "$missing" = 0 ] && return 0
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    dpkg --print-foreign-architectures | grep -qx arm64 || $sudo dpkg --add-architecture arm64
    # Wait for the dpkg lock rather than fail, should another install run (CI runs this one in
    # the background).
    $sudo apt-get -o DPkg::Lock::Timeout=600 update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
        --no-install-recommends \
        rustc-web cargo-web libstd-rust-web-dev:arm64 gcc-aarch64-linux-gnu \
        libc6-dev-arm64-cross qemu-user
}

setup_env() {
    local root
    root="$(pwd)"
    export RUSTC=/usr/bin/rustc
    export RUSTDOC=/usr/bin/rustdoc
    export CARGO_HOME="$root/target/aarch64/cargo-home"
    export CARGO_TARGET_DIR="$root/target/aarch64"
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER=qemu-aarch64
    # No rustup proxy in the way: Debian's cargo with Debian's rustc.
    export RUSTUP_TOOLCHAIN=
    unset RUSTUP_TOOLCHAIN
    mkdir -p "$CARGO_HOME"
}

CARGO=/usr/bin/cargo

cmd="${1:-test}"
shift || true
case "$cmd" in
install)
    install
    ;;
env)
    setup_env
    env | grep -E '^(RUSTC|CARGO_HOME|CARGO_TARGET)' | sort
    ;;
cargo)
    install
    setup_env
    "$CARGO" "$@"
    ;;
golden | ci)
    # The host half, with the host's toolchain and target folder (before setup_env).
    host_target="${CARGO_TARGET_DIR:-$(pwd)/target}"
    if [ "${SPARSEC_AARCH64_HOST_DONE:-}" != 1 ]; then
        cargo test -p sparsec-tests --test golden_aarch64 -- --nocapture
    fi
    dir="$host_target/tmp/aarch64-golden"
    ls "$dir"/*.bin >/dev/null 2>&1 || { echo "aarch64 golden: no model.bin in $dir" >&2; exit 1; }
    install
    setup_env
    rm -f "$dir"/*.out.*.f32
    if [ "$cmd" = ci ]; then
        echo "== aarch64 under qemu: runtime unit tests and golden files, NEON kernels"
        SPARSEC_GOLDEN_DIR="$dir" "$CARGO" test -p runtime --target "$TRIPLE" \
            --features golden-files --lib --tests -- --skip conv_throughput --nocapture
        echo "== aarch64 under qemu: golden files, portable kernels"
        SPARSEC_KERNELS=portable SPARSEC_GOLDEN_RUNS=data-only SPARSEC_GOLDEN_DIR="$dir" \
            "$CARGO" test -p runtime \
            --target "$TRIPLE" --features golden-files --test golden_files -- --nocapture
        exit 0
    fi
    for kernels in default portable; do
        echo "== aarch64 golden under qemu, $kernels kernels"
        if [ "$kernels" = portable ]; then export SPARSEC_KERNELS=portable; fi
        SPARSEC_GOLDEN_DIR="$dir" "$CARGO" test -p runtime --target "$TRIPLE" \
            --features golden-files --test golden_files -- --nocapture
    done
    ;;
python)
    install
    setup_env
    profile=debug
    if [ "${1:-}" = --release ]; then profile=release; fi
    # abi3 + extension-module: PyO3 needs no interpreter or libpython of the target to build;
    # these say which one the wheel is for (the abi3 floor, CPython on Linux).
    PYO3_CROSS=1 PYO3_CROSS_PYTHON_VERSION=3.9 PYO3_CROSS_PYTHON_IMPLEMENTATION=CPython \
        "$CARGO" build -p sparsec-python --target "$TRIPLE" "$@"
    so="$CARGO_TARGET_DIR/$TRIPLE/$profile/lib_sparsec.so"
    readelf -h "$so" | grep -q 'Machine:.*AArch64' || { echo "$so: not AArch64" >&2; exit 1; }
    readelf -h "$so" | grep -q 'Type:.*DYN' || { echo "$so: not a shared object" >&2; exit 1; }
    nm -D --defined-only "$so" | grep -qw PyInit__sparsec ||
        { echo "$so: no PyInit__sparsec" >&2; exit 1; }
    if readelf -d "$so" | grep -q 'NEEDED.*libpython'; then
        echo "$so: links libpython (extension-module missing)" >&2
        exit 1
    fi
    echo "aarch64 python: $so is an AArch64 ELF shared object exporting PyInit__sparsec" \
        "($(du -h "$so" | cut -f1))"
    [ "${SPARSEC_AARCH64_PYTHON:-}" = 1 ] || exit 0
    # An arm64 CPython and numpy from Debian, unpacked into a private sysroot that qemu
    # searches first (-L); what it lacks (libc, ld.so) comes from the host's multiarch
    # libc6:arm64, the same libc the test binaries load. The sysroot holds no libc of its own,
    # so the loader and libc never mix (../shared/FACTS.md: the cross libc under -L hangs
    # threads).
    sysroot="$CARGO_TARGET_DIR/python-sysroot"
    if [ ! -x "$sysroot/usr/bin/python3.11" ]; then
        mkdir -p "$sysroot/debs"
        (cd "$sysroot/debs" && apt-get download python3.11-minimal:arm64 \
            libpython3.11-minimal:arm64 libpython3.11-stdlib:arm64 python3-numpy:arm64 \
            libblas3:arm64 liblapack3:arm64 libgfortran5:arm64 libffi8:arm64 \
            libexpat1:arm64 zlib1g:arm64)
        for deb in "$sysroot"/debs/*.deb; do dpkg -x "$deb" "$sysroot"; done
        # What update-alternatives would link: the reference BLAS and LAPACK.
        lib="$sysroot/usr/lib/aarch64-linux-gnu"
        ln -sf blas/libblas.so.3 "$lib/libblas.so.3"
        ln -sf lapack/liblapack.so.3 "$lib/liblapack.so.3"
    fi
    pkg="$CARGO_TARGET_DIR/python-aarch64/sparsec"
    rm -rf "$pkg"
    mkdir -p "$pkg"
    cp python/sparsec/*.py "$pkg/"
    cp "$so" "$pkg/_sparsec.abi3.so"
    model=examples/models/sparsenet-40-24.snet
    PYTHONPATH="$(dirname "$pkg")" qemu-aarch64 -L "$sysroot" "$sysroot/usr/bin/python3.11" \
        scripts/aarch64-python-check.py "$model"
    ;;
test)
    install
    setup_env
    # `--lib --tests`: the unit and integration tests (doctests need no other architecture).
    if [ "$#" = 0 ]; then set -- --lib --tests; fi
    "$CARGO" test -p runtime --target "$TRIPLE" "$@"
    ;;
*)
    echo "usage: scripts/aarch64.sh [install|test [ARGS]|golden|ci|python [--release]|env|cargo ARGS]" >&2
    exit 2
    ;;
esac
