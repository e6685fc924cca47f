"""Which of the forward's per-chunk kernels should make each chunk's gates from the layer's g (`gate_rows.LayerGates`)
instead of reading the scan's float32 write strengths and chunk cumsums from memory (`function.LAYER_GATES_IN`):
every subset worth timing, the prefill and the training forward by `do_bench`, and one prefill's kernels by
torch.profiler (us); then the segment states alone, from memory or from g, by D block and warps (the kernel holds
both passes' states in registers: making the gates adds to them).

B = 65,536 / T sequences, 16 heads, K = V = 128, M = 64, w = 64, bf16 (as bench_gpu_ops.py).

    PYTHONPATH=src python benchmarks/ab_layer_gates.py [T ...]
"""
from __future__ import annotations

import sys
from collections import defaultdict

import torch
import torch.nn.functional as F
import triton
from torch.profiler import ProfilerActivity, profile

from nha.ops.triton import function, triton_nha
from nha.ops.triton.gate_rows import LayerGates
from nha.ops.triton.gates import slot_gates
from nha.ops.triton.scan_states import slot_states_pair
from nha.ops.triton.shift import shifted

H, D, M, W = 16, 128, 64, 64
VARIANTS = [(), ("read",), ("logits", "read"), ("states",), ("states", "logits", "read")]


def kernel_totals(fn) -> dict[str, float]:
    """us per kernel name over one call (after a warm-up call)."""
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    totals: dict[str, float] = defaultdict(float)
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            totals[event.name.split("(")[0][:40]] += event.device_time_total
    return totals


def main() -> None:
    print(f"card: {torch.cuda.get_device_name(0)}")
    for T in [int(a) for a in sys.argv[1:]] or [65536]:
        B = max(1, 65536 // T)
        rnd = lambda *s: torch.randn(*s, device="cuda", dtype=torch.bfloat16, requires_grad=True)  # noqa: E731
        q, k, v = rnd(B, T, H, D), rnd(B, T, H, D), rnd(B, T, H, D)
        g = F.logsigmoid(torch.randn(B, T, H, M, device="cuda")).div(8).bfloat16().requires_grad_()

        def forward():
            return triton_nha(q, k, v, g, W, check_gates=False)[0]

        def prefill():
            with torch.no_grad():
                return forward()

        rows = []
        for variant in VARIANTS:
            function.LAYER_GATES_IN = frozenset(variant)
            ms = [triton.testing.do_bench(f, warmup=20, rep=200, return_mode="median") for f in (prefill, forward)]
            rows.append((variant, ms, kernel_totals(prefill)))
        names = sorted({n for *_, totals in rows for n in totals if max(r[2].get(n, 0) for r in rows) > 10})
        print(f"\nT={T} B={B} w={W}: prefill / forward ms by do_bench, then one prefill's kernels (us)")
        print("| kernels making the gates | prefill | forward | " + " | ".join(names) + " |")
        print("|---" * (3 + len(names)) + "|")
        for variant, (pre, fwd), totals in rows:
            cells = " | ".join(f"{totals.get(n, 0):.0f}" for n in names)
            print(f"| {', '.join(variant) or 'none'} | {pre:.3f} | {fwd:.3f} | {cells} |")
        segment_states(g, k, v, T, B)


def segment_states(g, k, v, T: int, B: int) -> None:
    valid = torch.ones(B, T, dtype=torch.int8, device="cuda")
    ends = torch.full((B,), T, dtype=torch.int64, device="cuda")
    gates = LayerGates(g.detach(), valid, ends, W, 1)
    _, s_in, gc, _ = slot_gates(g.detach(), valid, ends, W, 1, T, 64, with_g_in=False)
    k_in, v_in = shifted(k.detach(), W, T, 1), shifted(v.detach(), W, T, 1)
    print("\n| segment states | D block | warps | ms |\n|---|---|---|---|")
    for layer, block_d, warps in [(None, 64, 4), (gates, 64, 4), (gates, 32, 4), (gates, 64, 8), (gates, 32, 2)]:
        def run():
            return slot_states_pair(s_in, gc, k_in, v_in, None, None, 64, "tf32", block_d=block_d, num_warps=warps,
                                    layer_gates=layer)
        ms = triton.testing.do_bench(run, warmup=10, rep=100, return_mode="median")
        print(f"| {'from g' if layer else 'from memory'} | {block_d} | {warps} | {ms:.3f} |")


if __name__ == "__main__":
    main()
