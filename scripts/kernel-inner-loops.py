#!/usr/bin/env python3
"""Static instruction counts of the convolution kernels' inner loops (issue 19, docs/aarch64.md).

qemu cannot time anything, so the NEON kernels are compared with the AVX2 ones by what their
innermost loops execute per iteration: instructions, FMAs, loads, and the FLOP each FMA does.

    python3 scripts/kernel-inner-loops.py BINARY [OBJDUMP]

BINARY is a runtime test binary (host: target/debug/deps/runtime-*, aarch64:
target/aarch64/aarch64-unknown-linux-gnu/debug/deps/runtime-*); OBJDUMP defaults to `objdump`
(x86-64) or `aarch64-linux-gnu-objdump`. For every instance of `kernels::{avx2,neon}::tile`
(one per register-tile shape and tap walk), it finds the loop with the most FMAs (the loop over
input channels and taps) and prints its size. Prints one line per distinct loop.

Then the other vector kernels (the prologue `neon::map`/`add`, `neon::pool`, `neon::linear`,
the Winograd split and transforms; on x86-64 their AVX2 counterparts): every innermost loop
with vector instructions, its instructions, vector arithmetic (FMAs among them), loads and
stores, and the source line it comes from (from the binary's debug information: `objdump -l`;
`?` without it). Which function a loop is in says what one iteration does (docs/aarch64.md).
"""
import re
import subprocess
import sys

binary = sys.argv[1]
arm = "aarch64" in binary
objdump = sys.argv[2] if len(sys.argv) > 2 else ("aarch64-linux-gnu-objdump" if arm else "objdump")
flags = ["-d", "--no-show-raw-insn", "-C"]
if not arm:
    flags += ["-M", "intel"]
text = subprocess.run([objdump, *flags, binary], capture_output=True, text=True, check=True).stdout

func_re = re.compile(r"^([0-9a-f]+) <(.*)>:$")
insn_re = re.compile(r"^\s+([0-9a-f]+):\s+(\S+)\s*(.*)$")
funcs, name, body = [], None, []
for line in text.splitlines():
    m = func_re.match(line)
    if m:
        if name:
            funcs.append((name, body))
        name, body = m.group(2), []
        continue
    m = insn_re.match(line)
    if m and name:
        body.append((int(m.group(1), 16), m.group(2), m.group(3)))
if name:
    funcs.append((name, body))

kernel = "kernels::neon::" if arm else "kernels::avx2::"
is_fma = (lambda op: op.startswith("fmla")) if arm else (lambda op: op.startswith("vfmadd"))
lanes = 4 if arm else 8


def is_load(op, args):
    if arm:
        return op.startswith("ld")
    # A memory source operand: the last operand reads memory (stores write the first).
    return "PTR [" in args.split(",")[-1] and not op.startswith("vmovaps") or (
        op in ("vbroadcastss", "vmovups", "vmovaps") and "PTR [" in args.split(",")[-1]
    )


rows = set()
for fname, body in funcs:
    if kernel not in fname or "winograd::" in fname:
        continue
    addrs = {a: i for i, (a, _, _) in enumerate(body)}
    loops = []
    for i, (a, op, args) in enumerate(body):
        if not re.match(r"^(b|j|cb|tb)", op):
            continue
        t = re.search(r"\b([0-9a-f]+) <", args)
        if not t:
            continue
        target = int(t.group(1), 16)
        if target > a or target not in addrs:
            continue
        loops.append((addrs[target], i))
    fma_loops = [
        (lo, hi) for lo, hi in loops if any(is_fma(o) for _, o, _ in body[lo : hi + 1])
    ]
    # Innermost: no other FMA loop strictly inside.
    for lo, hi in fma_loops:
        if any((l2, h2) != (lo, hi) and lo <= l2 and h2 <= hi for l2, h2 in fma_loops):
            continue
        loop = body[lo : hi + 1]
        fmas = sum(1 for _, o, _ in loop if is_fma(o))
        loads = sum(1 for _, o, x in loop if is_load(o, x))
        rows.add((fmas, len(loop), loads, fname.split("::")[-1]))
arch = "aarch64 NEON" if arm else "x86-64 AVX2+FMA"
print(f"{arch}: innermost FMA loops in {kernel}* (tile instances, inlined or not)")
print(
    f"{'function':>10} {'instructions':>12} {'FMAs':>5} {'loads':>6} {'FLOP/iter':>10} "
    f"{'FMA share':>10} {'FLOP/insn':>10}"
)
for fmas, n, loads, fname in sorted(rows):
    flop = fmas * lanes * 2
    print(f"{fname:>10} {n:>12} {fmas:>5} {loads:>6} {flop:>10} {fmas / n:>10.2f} {flop / n:>10.1f}")


# ---------------------------------------------------------------------------------------------
# The other vector kernels: every innermost loop with vector instructions.
# ---------------------------------------------------------------------------------------------
text = subprocess.run(
    [objdump, *flags, "-l", binary], capture_output=True, text=True, check=True
).stdout
line_re = re.compile(r"^(/\S+\.rs):(\d+)")
funcs, name, body, where = [], None, [], "?"
for line in text.splitlines():
    m = func_re.match(line)
    if m:
        if name:
            funcs.append((name, body))
        name, body, where = m.group(2), [], "?"
        continue
    m = line_re.match(line)
    if m:
        # Inlined code reports its innermost location (an intrinsic's, a library's): keep the
        # last line of this crate's source, the kernel's own code.
        if "/runtime/src/" in m.group(1):
            where = f"{m.group(1).split('/')[-1]}:{m.group(2)}"
        continue
    m = insn_re.match(line)
    if m and name:
        body.append((int(m.group(1), 16), m.group(2), m.group(3), where))
if name:
    funcs.append((name, body))

if arm:
    wanted = re.compile(
        r"kernels::neon::(map|add|pack_row2|pool|linear|conv)$|winograd::neon::(split|transform)"
    )
    is_vec = lambda op, args: re.search(r"\bv\d+\.(4s|2s|2d|s)\b|\bq\d+\b", args) is not None
    is_arith = lambda op: op.startswith(("fadd", "fsub", "fmul", "fmla", "fmls", "fmax", "fmin", "fcvt", "faddp"))
    is_fused = lambda op: op.startswith(("fmla", "fmls"))
    load = lambda op, args: op.startswith("ld")
else:
    wanted = re.compile(r"kernels::avx2::(pool|linear)$|winograd::avx2::(split|transform)")
    is_vec = lambda op, args: "ymm" in args or "xmm" in args
    is_arith = lambda op: re.match(r"v(add|sub|mul|max|min|fn?m(add|sub)|cvt)", op) is not None
    is_fused = lambda op: re.match(r"vfn?m(add|sub)", op) is not None
    load = is_load

print()
print(f"{arch}: innermost vector loops of the other kernels (runtime source line of the first vector op)")
print(
    f"{'function':>36} {'line':>16} {'insns':>6} {'vec ops':>8} {'fused':>6} "
    f"{'loads':>6} {'stores':>7}"
)
seen = set()
for fname, body in funcs:
    short = "::".join(fname.split("::")[-3:]) if "winograd" in fname else "::".join(fname.split("::")[-2:])
    if not wanted.search(fname):
        continue
    addrs = {a: i for i, (a, _, _, _) in enumerate(body)}
    loops = []
    for i, (a, op, args, _) in enumerate(body):
        if not re.match(r"^(b|j|cb|tb)", op):
            continue
        t = re.search(r"\b([0-9a-f]+) <", args)
        if not t:
            continue
        target = int(t.group(1), 16)
        if target > a or target not in addrs:
            continue
        loops.append((addrs[target], i))
    for lo, hi in loops:
        if any((l2, h2) != (lo, hi) and lo <= l2 and h2 <= hi for l2, h2 in loops):
            continue
        loop = body[lo : hi + 1]
        vec = [(o, x, w) for _, o, x, w in loop if is_vec(o, x)]
        if not vec:
            continue
        ops = sum(1 for o, _, _ in vec if is_arith(o))
        fused = sum(1 for o, _, _ in vec if is_fused(o))
        if arm:
            loads = sum(1 for _, o, x, _ in loop if load(o, x))
            stores = sum(1 for _, o, _, _ in loop if o.startswith("st"))
        else:
            loads = sum(1 for _, o, x, _ in loop if is_load(o, x))
            stores = sum(
                1 for _, o, x, _ in loop if "PTR [" in x.split(",")[0] and o.startswith("v")
            )
        where = next((w for _, _, w in vec if w != "?"), "?")
        key = (short, where, len(loop), ops, fused, loads, stores)
        if key in seen:
            continue
        seen.add(key)
        print(f"{short:>36} {where:>16} {len(loop):>6} {ops:>8} {fused:>6} {loads:>6} {stores:>7}")
