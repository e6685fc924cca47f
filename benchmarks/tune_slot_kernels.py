"""Launch-parameter sweep of the three slot-scan kernels (slot_chunk.py) at one large shape, on a GPU.

N sequences, E time, H heads, M slots, D head dim. Times each primitive alone with triton.testing.do_bench for a
grid of tiles / warps (of each read-out's two kernels) / dot precisions, so the launch defaults in slot_chunk.py
are measured choices; `--chunk` times another chunk length, `--reverse` the backward's reverse-type calls.

    PYTHONPATH=src python benchmarks/tune_slot_kernels.py [--tokens 65536] [--heads 16] [--chunk 64] [--quick]
        [--reverse]
    PYTHONPATH=src python benchmarks/tune_slot_kernels.py --reverse --paired   # the backward's paired logits
"""
from __future__ import annotations

import argparse
import itertools
import json
import os

import torch
import triton

from nha.ops.triton.scan_states import slot_states
from nha.ops.triton.slot_chunk import slot_logits, slot_read
from scan_inputs import scan_inputs


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, default=65536)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--slots", type=int, default=64)
    p.add_argument("--chunk", type=int, default=64)
    p.add_argument("--quick", action="store_true", help="tf32x3 products, D blocks of 64 or 128")
    p.add_argument("--reverse", action="store_true",
                   help="the backward's reverse-type calls: float32 row inputs and states, read back to front")
    p.add_argument("--paired", action="store_true",
                   help="the backward's paired reverse logits (slot_logits' plus) against two calls")
    args = p.parse_args()
    CHUNK = args.chunk
    N, E, H, M, D = 1, args.tokens, args.heads, args.slots, args.dim
    x = scan_inputs(N, E, H, M, D, CHUNK)
    s, gc, y, q, pr = (x[n] for n in ("s", "gc", "y", "q", "p"))
    rows = []

    def time(name, fn, **cfg):
        try:
            ms = triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median")
        except Exception as e:  # an out-of-resources tile is a result too
            ms = float("nan")
            print(f"{name} {cfg}: failed {type(e).__name__}: {str(e)[:120]}", flush=True)
        rows.append({"kernel": name, **cfg, "ms": ms})
        print(f"{name:7s} {cfg}: {ms:.3f} ms", flush=True)

    rev = args.reverse
    if rev:  # as slot_scan's _reverse_scan: states from a float32 row gradient r, read-outs of y and of s
        s, q, pr = x["r"], y, s
    for bd, warps in itertools.product([64, 128], [4, 8]):
        time("states", lambda: slot_states(s, gc, y, None, CHUNK, "tf32x3", reverse=rev, block_d=bd,
                                           num_warps=warps), prec="tf32x3", bd=bd, warps=warps)
    h, _ = slot_states(s, gc, y, None, CHUNK, "tf32x3", reverse=rev)
    if args.paired:
        paired(q, s, gc, y, h, CHUNK, rev, time)
        return
    # prec, rows per in-chunk program, D block, warps of the per-chunk D kernel, warps of the in-chunk kernel
    grid = itertools.product(["tf32x3", "tf32"], [16, 32], [32, 64, 128], [2, 4, 8], [1, 2, 4])
    if args.quick:
        grid = itertools.product(["tf32x3"], [16], [64, 128], [4, 8], [2, 4])
    for prec, sub, bd, warps, intra in grid:
        if prec == "tf32" and (sub, warps, intra) != (16, 4, 2):
            continue
        cfg = dict(prec=prec, sub=sub, bd=bd, warps=warps, intra=intra)
        kw = dict(sub=sub, block_d=bd, num_warps=warps, intra_warps=intra, reverse=rev)
        time("logits", lambda: slot_logits(q, s, gc, y, h, CHUNK, prec, **kw), **cfg)
        time("read", lambda: slot_read(pr, s, gc, y, h, CHUNK, prec, **kw), **cfg)
    out = os.environ.get("OUT", "/tmp")
    with open(os.path.join(out, f"tune_slot_kernels_chunk{CHUNK}{'_reverse' * rev}.json"), "w") as f:
        json.dump({"card": torch.cuda.get_device_name(), "chunk": CHUNK, "N": N, "E": E, "H": H, "M": M, "D": D,
                   "rows": rows}, f, indent=1)
    for name in ("states", "logits", "read"):
        best = min((r for r in rows if r["kernel"] == name and r["ms"] == r["ms"]), key=lambda r: r["ms"])
        print("best", best)


def paired(q, x, gc, y, h, chunk: int, rev: bool, time) -> None:
    """Times the two reverse scans' logits read-outs side by side (one in-chunk kernel for both, at each warp count)
    against the same read-outs one call each: pass 1's (x, y, h) as the sweep's, pass 2's with a softmax row input.
    (Session 9 timed reads paired the same way too, one W kernel for both: 3.30 ms against 3.28 for two calls.)"""
    x2 = torch.softmax(torch.randn_like(x), -1)
    y2, q2 = torch.randn_like(y), torch.randn_like(q)
    h2, _ = slot_states(x2, gc, y2, None, chunk, "tf32x3", reverse=rev)
    for intra in (2, 4, 8):
        time("paired logits", lambda: slot_logits(q, x, gc, y, h, chunk, "tf32x3", reverse=rev, intra_warps=intra,
                                                  plus=(q2, x2, y2, h2)), intra=intra)
    time("two logits", lambda: (slot_logits(q, x, gc, y, h, chunk, "tf32x3", reverse=rev),
                                slot_logits(q2, x2, gc, y2, h2, chunk, "tf32x3", reverse=rev)))


if __name__ == "__main__":
    main()
