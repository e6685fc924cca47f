"""Where the Triton NHA operator spends its time: CUDA kernel totals from torch.profiler, forward without gradients
(a prefill), forward and forward+backward; one prefill's and one forward's kernels in launch order with the GPU's
idle time before each, their sum against `do_bench`'s median (session 15's call 1 ran this timeline as a separate
script); then every compiled Triton kernel's registers per thread and local-memory (spill) bytes (spills are what
tile-size sweeps swing on; Triton's `n_spills` counts 4-byte words).

B batch, T time, H heads, D head dim, M slots, w window (bf16, 65,536 tokens per batch as in bench_gpu_ops.py).

    PYTHONPATH=src python benchmarks/bench_gpu_profile.py [T ...]
"""
from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
import triton
from torch.profiler import ProfilerActivity, profile

from nha.ops.triton import triton_nha
from nha.ops.triton import decode, gates, merge, scan_states, shift, slot_chunk, window_attn

H, D, M, W = 16, 128, 64, 64


def main() -> None:
    for T in [int(a) for a in sys.argv[1:]] or [2048, 65536]:
        B = max(1, 65536 // T)
        rnd = lambda *s: torch.randn(*s, device="cuda", dtype=torch.bfloat16, requires_grad=True)  # noqa: E731
        q, k, v = rnd(B, T, H, D), rnd(B, T, H, D), rnd(B, T, H, D)
        g = F.logsigmoid(torch.randn(B, T, H, M, device="cuda")).div(8).bfloat16().requires_grad_()
        do = torch.randn_like(q)
        leaves = (q, k, v, g)

        def forward_backward():  # gradients set to None first, as bench_gpu_ops.py times them (no accumulation)
            for x in leaves:
                x.grad = None
            triton_nha(q, k, v, g, W, check_gates=False)[0].backward(do)

        for _ in range(2):  # compile and warm up
            forward_backward()
        torch.cuda.synchronize()
        for phase in ("forward without gradients", "forward", "forward+backward"):
            with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
                for _ in range(3):
                    if phase == "forward+backward":
                        forward_backward()
                    else:
                        with torch.set_grad_enabled(phase == "forward"):
                            triton_nha(q, k, v, g, W, check_gates=False)
                torch.cuda.synchronize()
            print(f"\n=== T={T} B={B} {phase} (3 iterations) ===")
            print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=40, max_name_column_width=60))
        for grad in (False, True):
            def forward(grad=grad):
                with torch.set_grad_enabled(grad):
                    triton_nha(q, k, v, g, W, check_gates=False)

            print_timeline(forward, f"T={T} B={B} {'forward' if grad else 'forward without gradients'}")
    print_registers()


def print_timeline(step, label: str) -> None:
    """One call of `step` under the profiler: every CUDA kernel in launch order, its start, duration and the GPU's
    idle time before it (us), then the kernels' sum against `do_bench`'s median of the same call (where the two
    differ, the GPU waited for the host)."""
    median = triton.testing.do_bench(step, warmup=10, rep=200, return_mode="median")
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    kernels = sorted((e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA),
                     key=lambda e: e.time_range.start)
    print(f"\n=== {label}: one call, kernels in launch order (us) ===")
    first = end = kernels[0].time_range.start
    busy = 0.0
    for e in kernels:
        start, took = e.time_range.start, e.time_range.end - e.time_range.start
        print(f"{start - first:9.1f} {took:8.1f}  idle before {start - end:7.1f}  {e.name[:80]}")
        end, busy = e.time_range.end, busy + took
    print(f"kernels {busy:.1f} us in all; do_bench median {1000 * median:.1f} us")


def print_registers() -> None:
    """One line per compiled variant of every `@triton.jit` kernel of the operator's modules: regs/thread, spills."""
    print("\n=== compiled Triton kernels: registers per thread, spill bytes, warps ===")
    for module in (decode, gates, merge, scan_states, shift, slot_chunk, window_attn):
        for name, fn in sorted(vars(module).items()):
            if not name.endswith("_kernel") or not hasattr(fn, "device_caches"):
                continue
            for kernel_cache, *_ in fn.device_caches.values():
                for compiled in kernel_cache.values():
                    compiled._init_handles()  # loads the binary, which is where Triton reads the counts
                    src = compiled.src
                    consts = {fn.arg_names[i[0]]: v for i, v in src.constants.items()
                              if len(i) == 1 and fn.arg_names[i[0]].isupper()}
                    pointers = ",".join(t.lstrip("*") for t in src.signature.values() if t.startswith("*"))
                    print(f"{module.__name__.rsplit('.', 1)[-1]}.{name}: {compiled.n_regs} regs, "
                          f"{4 * compiled.n_spills} spill bytes, {compiled.metadata.num_warps} warps; {consts}; "
                          f"pointers {pointers}")


if __name__ == "__main__":
    main()
