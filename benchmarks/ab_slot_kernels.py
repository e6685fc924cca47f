"""A/B timing of the slot-scan kernels: this checkout's `slot_chunk.py` against older copies of the file, same run;
then a quick end-to-end timing of this checkout's `triton_nha` (forward without gradients, forward+backward).

N sequences, E time, H heads, M slots, D head dim; bf16 inputs, float32 gates (64k tokens x 16 heads). Each read-out
is timed as one forward+backward calls it: forward-type (on the forward scans' states, bf16 where `slot_states` makes
them so) and reverse-type (the backward's reverse scans: float32 row inputs and states, read back to front); "x2" sums
the four twice, as a forward+backward makes 2 logits and 2 read-outs of each type. The operator's report with its
baselines (SDPA, fla) measured in the same run is `bench_gpu_ops.py`; this script is for judging a kernel change.

    git show 6c5bf26:src/nha/ops/triton/slot_chunk.py > /tmp/old_slot_chunk.py
    PYTHONPATH=src python benchmarks/ab_slot_kernels.py --old /tmp/old_slot_chunk.py [more files ...]
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
import triton

from nha.ops.triton import scan_states, slot_chunk, triton_nha
from nha.ops.triton.gates import reverse_chunk_cumsum, slot_gates_grad
from scan_inputs import load_copy, scan_inputs

CHUNK = 64


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--old", nargs="+", required=True, help="paths of the slot_chunk.py files to compare against")
    p.add_argument("--tokens", type=int, default=65536)
    p.add_argument("--heads", type=int, default=16)
    args = p.parse_args()
    N, E, H, M, D = 1, args.tokens, args.heads, 64, 128
    x = scan_inputs(N, E, H, M, D, CHUNK)
    g, s, gc, y, q, p_, r = (x[n] for n in ("g", "s", "gc", "y", "q", "p", "r"))
    ms = lambda f: triton.testing.do_bench(f, warmup=10, rep=40, return_mode="median")  # noqa: E731
    print(f"card: {torch.cuda.get_device_name(0)}; E={E}, H={H}, M={M}, D={D}, median ms (triton do_bench)")
    trees = [(path, load_copy(path, f"old_slot_chunk_{i}")) for i, path in enumerate(args.old)]
    for name, mod in trees + [("this checkout", slot_chunk)]:
        # a file of before scan_states.py holds its own slot_states; a later one's come from this checkout's
        slot_states = getattr(mod, "slot_states", scan_states.slot_states)
        h, _ = slot_states(s, gc, y, None, CHUNK, "tf32x3")
        hr, _ = slot_states(r, gc, q, None, CHUNK, "tf32x3", reverse=True)
        t = {"states": ms(lambda: slot_states(s, gc, y, None, CHUNK, "tf32x3")),
             "logits": ms(lambda: mod.slot_logits(q, s, gc, y, h, CHUNK, "tf32x3")),
             "read": ms(lambda: mod.slot_read(p_, s, gc, y, h, CHUNK, "tf32x3")),
             "reverse logits": ms(lambda: mod.slot_logits(y, r, gc, q, hr, CHUNK, "tf32x3", reverse=True)),
             "reverse read": ms(lambda: mod.slot_read(s, r, gc, q, hr, CHUNK, "tf32x3", reverse=True))}
        read_outs = 2 * sum(v for k, v in t.items() if k != "states")
        print(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in t.items()) + f" | read-outs x2 {read_outs:.2f} ms",
              flush=True)
    valid, ends = torch.ones(N, E, device="cuda", dtype=torch.int8), torch.full((N,), E, device="cuda")
    grad = lambda: slot_gates_grad(g, valid, ends, 64, CHUNK, s, r, r)  # noqa: E731
    print(f"gates: reverse_chunk_cumsum {ms(lambda: reverse_chunk_cumsum(g, CHUNK)):.3f} ms, "
          f"slot_gates_grad (both passes) {ms(grad):.3f} ms")
    end_to_end(E, H, M, D, ms)


def end_to_end(tokens: int, H: int, M: int, D: int, ms) -> None:
    for T in [2048, tokens]:
        B = tokens // T
        q, k, v = (torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        g = F.logsigmoid(torch.randn(B, T, H, M, device="cuda")).div(8).bfloat16().requires_grad_()
        do = torch.randn_like(q)
        for w in [64, 2048]:
            def forward():
                with torch.no_grad():
                    triton_nha(q, k, v, g, w)

            def forward_backward():
                triton_nha(q, k, v, g, w)[0].backward(do)

            print(f"triton_nha T={T} w={w}: fwd {ms(forward):.2f} ms  fwd+bwd {ms(forward_backward):.2f} ms",
                  flush=True)


if __name__ == "__main__":
    main()
