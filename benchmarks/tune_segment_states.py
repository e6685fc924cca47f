"""Launch sweep of the forward scans' segment states (`slot_states_pair`, scan_states.py): span x D block x warps x
pipeline stages, timed alone against the two `slot_states` it replaced, then the two forward read-outs over its
states against the same read-outs over plain bf16 states, and every compiled variant's registers and spill bytes.
Figures: `slot_states_pair`'s docstring (gpu_session15_h200.log, calls 2 and 3, which ran this sweep's earlier form).

One sequence of T = 65,536 tokens, H heads, M slots, K = V = D, chunk 64, bf16 keys and values.

    PYTHONPATH=src python benchmarks/tune_segment_states.py
"""
from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
import triton

from nha.ops.triton import scan_states as ss
from nha.ops.triton import slot_chunk as sc
from nha.ops.triton.common import chunk_cumsum

T, H, M, D, CHUNK, PREC = 65536, 16, 64, 128, 64, "tf32x3"


def ms(fn) -> float:
    return triton.testing.do_bench(fn, warmup=10, rep=100, return_mode="median")


def main() -> None:
    x = torch.rand(1, T, H, M, device="cuda")
    gc = chunk_cumsum(F.logsigmoid(torch.randn(1, T, H, M, device="cuda")).div(8), CHUNK)
    q, k, v = (torch.randn(1, T, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    p = torch.rand(1, T, H, M, device="cuda")
    flags = sc.gentle_chunks(gc, CHUNK)
    h_k, _ = ss.slot_states(x, gc, k, None, CHUNK, PREC)
    h_v, _ = ss.slot_states(x, gc, v, None, CHUNK, PREC)

    def read_outs(states_k, states_v):
        return (sc.slot_logits(q, x, gc, k, states_k, CHUNK, PREC, gentle=flags),
                sc.slot_read(p, x, gc, v, states_v, CHUNK, PREC, gentle=flags))

    def two_scans():
        return ss.slot_states(x, gc, k, None, CHUNK, PREC), ss.slot_states(x, gc, v, None, CHUNK, PREC)

    print(f"card: {torch.cuda.get_device_name(0)}; T={T}, H={H}, M={M}, K=V={D}")
    print(f"two slot_states: {ms(two_scans):.3f} ms; read-outs over them: {ms(lambda: read_outs(h_k, h_v)):.3f} ms")
    print("| span | D block | warps | stages | states ms | read-outs ms | max abs(h - plain) / max abs(plain) |")
    print("|---|---|---|---|---|---|---|")
    for span, block_d, warps, stages in itertools.product([16, 32], [32, 64, 128], [4, 8], [1, 2, 3]):
        def states():
            return ss.slot_states_pair(x, gc, k, v, None, None, CHUNK, PREC, span=span, block_d=block_d,
                                       num_warps=warps, num_stages=stages)

        (s_k, _), (s_v, _) = states()
        err = (s_k.materialize().float() - h_k.float()).abs().max() / h_k.float().abs().max()
        print(f"| {span} | {block_d} | {warps} | {stages} | {ms(states):.3f} | {ms(lambda: read_outs(s_k, s_v)):.3f} "
              f"| {err.item():.1e} |")
    print("\ncompiled segment_states_kernel variants:")
    for kernel_cache, *_ in ss.segment_states_kernel.device_caches.values():
        for compiled in kernel_cache.values():
            compiled._init_handles()  # loads the binary, which is where Triton reads the counts
            meta = compiled.metadata
            print(f"  {compiled.n_regs} regs, {4 * compiled.n_spills} spill bytes, {meta.num_warps} warps, "
                  f"{meta.num_stages} stages")


if __name__ == "__main__":
    main()
