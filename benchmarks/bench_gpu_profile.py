"""Where the Triton NHA operator spends its time: CUDA kernel totals from torch.profiler, forward and backward.

B batch, T time, H heads, D head dim, M slots, w window (bf16, 65,536 tokens per batch as in bench_gpu_ops.py).

    PYTHONPATH=src python benchmarks/bench_gpu_profile.py [T ...]
"""
from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from nha.ops.triton import triton_nha

H, D, M, W = 16, 128, 64, 64


def main() -> None:
    for T in [int(a) for a in sys.argv[1:]] or [2048, 65536]:
        B = max(1, 65536 // T)
        rnd = lambda *s: torch.randn(*s, device="cuda", dtype=torch.bfloat16, requires_grad=True)  # noqa: E731
        q, k, v = rnd(B, T, H, D), rnd(B, T, H, D), rnd(B, T, H, D)
        g = F.logsigmoid(torch.randn(B, T, H, M, device="cuda")).div(8).bfloat16().requires_grad_()
        do = torch.randn_like(q)
        for _ in range(2):  # compile and warm up
            triton_nha(q, k, v, g, W)[0].backward(do)
        torch.cuda.synchronize()
        for phase in ("forward", "forward+backward"):
            with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
                for _ in range(3):
                    o = triton_nha(q, k, v, g, W)[0]
                    if phase != "forward":
                        o.backward(do)
                torch.cuda.synchronize()
            print(f"\n=== T={T} B={B} {phase} (3 iterations) ===")
            print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=40, max_name_column_width=60))


if __name__ == "__main__":
    main()
