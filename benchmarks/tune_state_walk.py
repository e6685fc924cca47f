"""Launch sweep of the slot scan's walk over chunks (`state_scan_kernel`, scan_states.py): elements per program x
warps, writing bf16 states (a forward scan) and in place in float32 (a reverse scan), each checked to give the same
states as the first setting. Figures: the comment in `slot_states` (gpu_session8_h200.log, call 4).

N sequences, E time, H heads, M slots, D head dim, chunk 64.

    PYTHONPATH=src python benchmarks/tune_state_walk.py
"""
from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
import triton

from nha.ops.triton.common import chunk_cumsum
from nha.ops.triton.scan_states import state_scan_kernel

N, E, H, M, D, CHUNK = 1, 65536, 16, 64, 128, 64


def main() -> None:
    gc = chunk_cumsum(F.logsigmoid(torch.randn(N, E, H, M, device="cuda")).div(8), CHUNK)
    sums = torch.randn(N, H, E // CHUNK, M, D, device="cuda")
    ht = torch.empty(N, H, M, D, device="cuda")
    print(f"card: {torch.cuda.get_device_name(0)}; E={E}, H={H}, M={M}, D={D}")
    for half in (True, False):
        ref = None
        for width, warps in itertools.product([128, 256, 512, 1024, 2048], [1, 2, 4, 8]):
            if width < 32 * warps:
                continue

            def walk(h):
                states = torch.empty_like(h, dtype=torch.bfloat16) if half else h
                state_scan_kernel[(triton.cdiv(M * D, width), N * H)](gc, ht, h, states, ht, E, H, M, D, BT=CHUNK,
                                                                      BLOCK=width, HAS_H0=False, num_warps=warps)
                return states

            out = walk(sums.clone())
            ref = out if ref is None else ref
            h = sums.clone()
            ms = triton.testing.do_bench(lambda: walk(h), warmup=5, rep=30)
            kind = "bf16 states" if half else "f32 in place"
            print(f"{kind} width={width} warps={warps}: {ms:.3f} ms {'same' if torch.equal(out, ref) else 'DIFFERENT'}",
                  flush=True)


if __name__ == "__main__":
    main()
