#!/usr/bin/env python3
"""Code size and NVRTC time of each generated CUDA kernel, without a GPU.

usage: python3 scripts/cuda-kernel-sizes.py KERNELS.cu [ARCHS]   (ARCHS: comma-separated,
       default sm_90,compute_80; J=N runs N compiles at once, default 2)

KERNELS.cu is what `sparsec MODEL.snet --emit cuda` prints. Each kernel is compiled alone (the
prelude plus its one `extern "C"` wrapper) with the options `sparsec --target cuda` uses, and
one line per kernel gives its cubin (sm_*) or PTX (compute_*) bytes, less those of the prelude
alone, and the CPU seconds NVRTC took. NVRTC comes from the PyPI wheel `.ci/nvrtc.sh`
installs; its directory must be on LD_LIBRARY_PATH. Issue 18 used it to find where the code
went (docs/cuda.md, "Compile time and size").
"""
import ctypes, os, re, sys, time
from concurrent.futures import ProcessPoolExecutor

OPTIONS = [b"--std=c++17", b"--fmad=true", b"--ftz=false", b"--prec-div=true"]
lib = None


def compile_one(job):
    src, arch = job
    global lib
    if lib is None:
        lib = ctypes.CDLL("libnvrtc.so.12")
    prog = ctypes.c_void_p()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), src, b"k.cu", 0, None, None) == 0
    opts = OPTIONS + [b"--gpu-architecture=" + arch.encode()]
    start = time.process_time()
    status = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
    cpu = time.process_time() - start
    size = ctypes.c_size_t()
    if status != 0:
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, log)
        raise SystemExit(log.value.decode())
    if arch.startswith("sm_"):
        lib.nvrtcGetCUBINSize(prog, ctypes.byref(size))
    else:
        lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return size.value, cpu


def main():
    text = open(sys.argv[1]).read()
    archs = sys.argv[2].split(",") if len(sys.argv) > 2 else ["sm_90", "compute_80"]
    head, tail = text.split("// ---- kernels ----\n")
    prelude = head.split("// ---- steps ----")[0]
    # Each kernel is three lines: the wrapper's signature, its call, its closing brace.
    lines = tail.splitlines(keepends=True)
    kernels = ["".join(lines[i : i + 3]) for i in range(0, len(lines), 3)]
    jobs = [(prelude.encode(), a) for a in archs]
    jobs += [((prelude + k).encode(), a) for k in kernels for a in archs]
    with ProcessPoolExecutor(int(os.environ.get("J", "2"))) as ex:
        results = list(ex.map(compile_one, jobs))
    base, results = results[: len(archs)], results[len(archs) :]
    print(f"{'kernel':40s} " + " ".join(f"{a + ' bytes / s':>22s}" for a in archs))
    total = [[0, 0.0] for _ in archs]
    for i, k in enumerate(kernels):
        name = re.search(r"void __launch_bounds__\(\d+\) (\w+)", k).group(1)
        cells = []
        for j, (size, cpu) in enumerate(results[i * len(archs) : (i + 1) * len(archs)]):
            size -= base[j][0]
            total[j][0] += size
            total[j][1] += cpu
            cells.append(f"{size:>12,d} {cpu:7.2f}")
        print(f"{name:40s} " + " ".join(f"{c:>22s}" for c in cells))
    print(f"{'total':40s} " + " ".join(f"{t[0]:>12,d} {t[1]:7.2f}".rjust(22) for t in total))


if __name__ == "__main__":
    main()
