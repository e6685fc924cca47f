"""Registers and spills of the slot read-out kernels, compiled for an H100/H200 (sm_90a) on a machine without a GPU.

Triton compiles each kernel for the target with the specialization a GPU run gives it at 64k tokens x 16 heads (every
pointer 16-byte aligned, every integer argument a multiple of 16), and `cuobjdump --dump-resource-usage` (shipped
with Triton, `triton/backends/nvidia/bin`) reads registers per thread and stack (spill) bytes from its cubin. Checked
against the driver's figures on an H200 (`bench_gpu_profile.py`, session 6): the same registers and spills for the
session-5 logits kernel in both directions and the session-6 `logits_chunk_kernel`. Sizes: M = 64, D = 128, chunk
64, 16-row sub-chunks, tf32x3 products. Not a timing: on an H200 the in-chunk kernels ran fastest at 2 warps while
spilling (BENCHMARKS.md, session 6); this is for seeing what a change does to register pressure before a GPU is at
hand.

    python benchmarks/kernel_registers_offline.py [path/to/slot_chunk.py ...]   # default: this checkout's
"""
from __future__ import annotations

import argparse
import inspect
import os
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from scan_inputs import load_copy

TARGET = GPUTarget("cuda", 90, 32)
CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
F32, BF16, I8, I32 = "*fp32", "*bf16", "*i8", "i32"
# the forward's output read-out's extra inputs: the merge's (`WindowMerge`)
MERGE = dict(lse_win=F32, live=I8, scale="fp32")

# (kernel, signature, constexprs) as slot_logits / slot_read launch them at M = 64, D = 128; REVERSE is added below.
# Forward-type calls are the forward's: bf16 chunk states in segments (slot_states_pair: SPAN 32, float32 start
# states hs and decays hd) and, for slot_read_kernel, NHA's output without gradients (the merge inside it and a bf16
# window output; its float32 output stands for the bf16 one); reverse-type calls float32 states (slot_states), no
# window epilogue.
KERNELS = [
    ("read_weights_kernel", dict(p=F32, x=F32, gc=F32, gentle=I8, w=F32, **MERGE, E=I32, H=I32, M=I32),
     dict(BT=64, BC=16, BM=64, LEVELS=4, DOT_PREC="tf32x3")),
    ("logits_intra_kernel", dict(x=F32, gc=F32, gentle=I8, a_qy=F32, z=F32, x2=F32, a_qy2=F32, E=I32, H=I32, M=I32),
     dict(BT=64, BC=16, BM=64, LEVELS=4, DOT_PREC="tf32x3", DUAL=False, A_SWAPPED=False)),
    # the backward's paired reverse logits (slot_logits' `plus`)
    ("logits_intra_kernel", dict(x=F32, gc=F32, gentle=I8, a_qy=F32, z=F32, x2=F32, a_qy2=F32, E=I32, H=I32, M=I32),
     dict(BT=64, BC=16, BM=64, LEVELS=4, DOT_PREC="tf32x3", DUAL=True, A_SWAPPED=True)),
    ("logits_chunk_kernel", dict(q=BF16, x=F32, gc=F32, gentle=I8, y=BF16, h="STATES", hs=F32, hd=F32, z=F32, a_qy=F32,
                                 **MERGE, E=I32, H=I32, M=I32, D=I32),
     dict(BT=64, BM=64, BD=128, ND=1, DOT_PREC="tf32x3", WITH_Z=True, WITH_A=True)),
    ("slot_read_kernel", dict(p=F32, x=F32, gc=F32, gentle=I8, y=BF16, h="STATES", hs=F32, hd=F32, w=F32, o=F32,
                              a=F32, o_win=BF16, **MERGE, E=I32, H=I32, M=I32, D=I32, OUT_ROWS=I32, OUT_SHIFT=I32),
     dict(BT=64, BM=64, BD=128, DOT_PREC="tf32x3", SCALED=False, W_SWAPPED=False)),
]


def registers(fn, signature: dict, constexprs: dict, num_warps: int) -> tuple[int, int]:
    """`(registers per thread, stack bytes)` of one specialization, from the cubin Triton builds for sm_90a."""
    aligned = {(i,): [["tt.divisibility", 16]] for i in range(len(signature))}
    compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=aligned),
                              target=TARGET, options={"num_warps": num_warps})
    with tempfile.TemporaryDirectory() as tmp:
        cubin = os.path.join(tmp, "kernel.cubin")
        with open(cubin, "wb") as f:
            f.write(compiled.asm["cubin"])
        report = subprocess.run([CUOBJDUMP, "--dump-resource-usage", cubin], capture_output=True, text=True,
                                check=True).stdout
    usage = re.search(r"REG:(\d+) STACK:(\d+)", report)
    return int(usage.group(1)), int(usage.group(2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    here = os.path.join(os.path.dirname(__file__), "..", "src", "nha", "ops", "triton", "slot_chunk.py")
    ap.add_argument("files", nargs="*", default=[here], help="slot_chunk.py files (default: this checkout's)")
    ap.add_argument("--warps", type=int, nargs="+", default=[2, 4])
    args = ap.parse_args()
    print("| file | kernel | scan | warps | registers | stack (spill) bytes |\n|---|---|---|---|---|---|")
    for i, path in enumerate(args.files):
        module = load_copy(path, f"slot_chunk_{i}")
        for name, signature, constexprs in KERNELS:
            for reverse in (False, True):
                fn = getattr(module, name)
                # constexprs the table leaves out take their defaults (e.g. H_GROUP 1: one state per head)
                defaults = {a.name: a.default for a in fn.params
                            if a.is_constexpr and a.default is not inspect.Parameter.empty}
                consts = {**defaults, **constexprs, "REVERSE": reverse}
                if "SPAN" in fn.arg_names:  # forward-type reads take the forward scans' states in segments of 32
                    consts["SPAN"] = 0 if reverse else 32
                for flag in ("MERGE", "WIN"):  # and the forward's output (MERGE)
                    if flag in fn.arg_names:
                        consts[flag] = not reverse
                # arguments the table does not name are integers (e.g. the D-side inputs' row maps, `_source`)
                sig = {a: (F32 if reverse else BF16) if signature.get(a) == "STATES" else signature.get(a, I32)
                       for a in fn.arg_names if a not in consts}
                for warps in args.warps:
                    regs, spills = registers(fn, sig, consts, warps)
                    scan = "reverse" if reverse else "forward"
                    label = name + (" (paired)" if consts.get("DUAL") else "")
                    print(f"| {path} | {label} | {scan} | {warps} | {regs} | {spills} |", flush=True)


if __name__ == "__main__":
    main()
