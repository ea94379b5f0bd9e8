#!/usr/bin/env python3
"""Registers, spills and shared memory of every generated CUDA kernel, without a GPU.

usage: python3 scripts/ptxas-report.py KERNELS.cu [ARCH]   (ARCH defaults to sm_90)

Compiles the file `sparsec MODEL.snet --emit cuda` printed with NVRTC (the PyPI wheel
`.ci/nvrtc.sh` installs; its directory must be on LD_LIBRARY_PATH) and `--ptxas-options=-v`,
then prints one line per kernel: name, registers, spill stores/loads, shared bytes. A kernel
that spills has a tile too big for its registers (see compiler/src/backend/cuda/tile.rs).
"""
import ctypes, re, sys

src = open(sys.argv[1], "rb").read()
arch = sys.argv[2] if len(sys.argv) > 2 else "sm_90"
lib = ctypes.CDLL("libnvrtc.so.12")
prog = ctypes.c_void_p()
assert lib.nvrtcCreateProgram(ctypes.byref(prog), src, b"kernels.cu", 0, None, None) == 0
opts = [b"--std=c++17", b"--gpu-architecture=" + arch.encode(), b"--ptxas-options=-v"]
arr = (ctypes.c_char_p * len(opts))(*opts)
status = lib.nvrtcCompileProgram(prog, len(opts), arr)
size = ctypes.c_size_t()
lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
log = ctypes.create_string_buffer(size.value)
lib.nvrtcGetProgramLog(prog, log)
text = log.value.decode()
if status != 0:
    sys.exit(text)
name = None
for line in text.splitlines():
    m = re.search(r"Compiling entry function '(\w+)'", line)
    if m:
        name = m.group(1)
    m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
    if m and name:
        spills = (int(m.group(1)), int(m.group(2)))
    m = re.search(r"Used (\d+) registers.*?(\d+) bytes smem", line)
    if m and name:
        print(f"{name:40s} regs {m.group(1):>4s}  spill st/ld {spills[0]:>5d}/{spills[1]:<5d} smem {m.group(2)}")
        name = None
