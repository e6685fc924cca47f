"""Time and memory of one Triton NHA forward+backward with the forward's chunk-start states and in-chunk tensors
saved for the backward (`save_states=True`, the default) and recomputed (`False`: also the scan's gates and the slot
probabilities), on a GPU, and of SDPA's (FlashAttention) causal attention on the same inputs for scale.

T time, H heads, D head dim, M slots, w window; bf16, one sequence of 65,536 tokens. Peak = the most memory allocated
during one step above what the inputs hold; held = what the forward leaves allocated for the backward (its output and
the saved tensors: what each layer of a model keeps until its backward). Figures: BENCHMARKS.md, sessions 8 and 11.

    PYTHONPATH=src python benchmarks/bench_save_states.py
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton

from nha.ops.triton import triton_nha

T, H, D, M = 65536, 16, 128, 64


def main() -> None:
    torch.manual_seed(0)
    print(f"card: {torch.cuda.get_device_name(0)}; T={T}, H={H}, D={D}, M={M}, bf16")
    for w in (64, 2048):
        for save in (True, False):
            q, k, v = (torch.randn(1, T, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                       for _ in range(3))
            g = (F.logsigmoid(torch.randn(1, T, H, M, device="cuda")) / 8).bfloat16().requires_grad_()
            do = torch.randn(1, T, H, D, device="cuda", dtype=torch.bfloat16)

            report(f"w={w} save_states={save}", lambda: triton_nha(q, k, v, g, w, save_states=save,
                                                                     check_gates=False)[0], do)
    q, k, v = (torch.randn(1, H, T, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    do = torch.randn(1, H, T, D, device="cuda", dtype=torch.bfloat16)
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
        report("SDPA causal", lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), do)


def report(name: str, forward, do) -> None:
    """Time one forward+backward; memory held from the forward to the backward (the output and what autograd saved)
    and the peak during both, each above what was allocated before the forward."""
    step = lambda: forward().backward(do)  # noqa: E731
    step()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    o = forward()
    torch.cuda.synchronize()
    held = (torch.cuda.memory_allocated() - base) / 2**20
    o.backward(do)
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    del o
    ms = triton.testing.do_bench(step, warmup=5, rep=40)
    print(f"{name}: fwd+bwd {ms:.2f} ms, held from forward to backward {held:.0f} MiB, "
          f"peak above inputs {peak:.0f} MiB", flush=True)


if __name__ == "__main__":
    main()
