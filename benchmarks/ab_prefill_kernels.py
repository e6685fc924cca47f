"""A/B timing of a prefill's slot kernels, one variant per row, same run: the scan's gates (`slot_gates`, from bf16
layer gates, the scan shifted by a window of 64), the forward scans' chunk-start states (`slot_states_pair`), the
logits (`slot_logits`) and NHA's output read-out with the merge inside it (`slot_read(z, ..., merge=...)`), as
`triton_nha` calls them without gradients at 64k tokens x 16 heads.

Each variant names a slot_chunk.py file (this checkout's, or a copy with the kernels changed), a product precision
(`slot_chunk._mm`'s DOT_PREC: "tf32", "bf16", ...), the dtype of the slot write strengths x = 1 - exp(g) (float32,
or bf16: half the bytes of that input in all three slot kernels) and, optionally, a gates.py file and launch options
(`key=value,...`: states_span, states_bd, states_warps for `slot_states_pair`'s span, block_d and num_warps;
logits_bd, logits_warps, read_bd, read_warps for the read-outs' per-chunk kernels). The states kernel lives in
scan_states.py and always comes from this checkout (only its precision, x's dtype and its launch vary). Median ms by
triton.testing.do_bench.

    PYTHONPATH=src python benchmarks/ab_prefill_kernels.py [--variant FILE:PREC:XDTYPE[:GATES_FILE[:OPTIONS]] ...]
    # FILE or GATES_FILE "this": this checkout's; default: this checkout at tf32 and bf16, x float32 and bf16
"""
from __future__ import annotations

import argparse
import inspect

import torch
import triton

from nha.ops.triton import gates, scan_states, slot_chunk
from nha.ops.triton.merge import WindowMerge
from scan_inputs import load_copy, scan_inputs

CHUNK = 64


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variant", nargs="+", default=["this:tf32:float32", "this:bf16:float32", "this:tf32:bfloat16",
                                                     "this:bf16:bfloat16"],
                    help="FILE:PREC:XDTYPE[:GATES_FILE[:OPTIONS]], a file 'this' for this checkout's")
    ap.add_argument("--tokens", type=int, default=65536)
    ap.add_argument("--heads", type=int, default=16)
    args = ap.parse_args()
    N, E, H, M, D = 1, args.tokens, args.heads, 64, 128
    x = scan_inputs(N, E, H, M, D, CHUNK)
    s32, gc, k, q = x["s"], x["gc"], x["y"], x["q"]
    v = torch.randn_like(k)
    o_win = torch.randn_like(k)
    merge = WindowMerge(torch.randn(N, E, H, device="cuda") + 3.0, torch.ones(N, E, dtype=torch.int8, device="cuda"),
                        D ** -0.5)
    gentle = slot_chunk.gentle_chunks(gc, CHUNK)
    g_layer = x["g"].bfloat16()  # the layer's gates; a window of 64: the scan absorbs row t - 64 at step t
    valid, ends = torch.ones(N, E, dtype=torch.int8, device="cuda"), torch.full((N,), E, device="cuda")
    ms = lambda f: triton.testing.do_bench(f, warmup=10, rep=100, return_mode="median")  # noqa: E731
    print(f"card: {torch.cuda.get_device_name(0)}; E={E}, H={H}, M={M}, D={D}; median ms (triton do_bench)")
    print("| slot_chunk.py | precision | x dtype | gates.py | launch | gates | states | logits | read | sum |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for i, variant in enumerate(args.variant):
        path, prec, xdtype, gates_path, options = (variant + ":this:").split(":")[:5]
        opt = {key: int(value) for key, value in (o.split("=") for o in options.split(",") if o)}
        states_launch = dict(span=opt.get("states_span", 32), block_d=opt.get("states_bd", 0),
                             num_warps=opt.get("states_warps", 4))
        logits_launch = dict(block_d=opt.get("logits_bd", 0), num_warps=opt.get("logits_warps", 4))
        read_launch = dict(block_d=opt.get("read_bd", 0), num_warps=opt.get("read_warps", 4))
        mod = slot_chunk if path == "this" else load_copy(path, f"slot_chunk_{i}")
        gates_mod = gates if gates_path == "this" else load_copy(gates_path, f"gates_{i}")
        s = s32.to(getattr(torch, xdtype))
        (h_k, _), (h_v, _) = scan_states.slot_states_pair(s, gc, k, v, None, None, CHUNK, prec, **states_launch)
        h_k, h_v = (mod.ChunkStates(*h) for h in (h_k, h_v))  # a copy's read-outs check for their own class
        z = mod.slot_logits(q, s, gc, k, h_k, CHUNK, prec, gentle=gentle, **logits_launch)
        # a gates.py before session 18 wrote the scan's gates too unless told not to
        old_gates = {"with_g_in": False} if "with_g_in" in inspect.signature(gates_mod.slot_gates).parameters else {}
        t = {"gates": ms(lambda: gates_mod.slot_gates(g_layer, valid, ends, 64, 1, E, CHUNK, s_dtype=s.dtype,
                                                     **old_gates)),
             "states": ms(lambda: scan_states.slot_states_pair(s, gc, k, v, None, None, CHUNK, prec,
                                                               **states_launch)),
             "logits": ms(lambda: mod.slot_logits(q, s, gc, k, h_k, CHUNK, prec, gentle=gentle, **logits_launch)),
             "read": ms(lambda: mod.slot_read(z, s, gc, v, h_v, CHUNK, prec, gentle=gentle, merge=merge,
                                              o_win=o_win, dtype=torch.bfloat16, **read_launch))}
        cells = " | ".join(f"{t[c]:.3f}" for c in ("gates", "states", "logits", "read"))
        print(f"| {path} | {prec} | {xdtype} | {gates_path} | {options or '-'} | {cells} | {sum(t.values()):.3f} |",
              flush=True)


if __name__ == "__main__":
    main()
