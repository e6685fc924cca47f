"""Launch-parameter sweep of the window path's kernels (window_attn.py) at one large shape, on a GPU.

N sequences, E time, H heads, D head dim, w window. Times `window_backward` with triton.testing.do_bench for a grid of
query/key blocks and warps for one of its two kernels at a time (dk/dv per key block, dq per query block; the other
at its default), and the forward's tiles (its output in bf16, as the operator asks for it), so the launch defaults in
window_attn.py are measured choices. `maxnreg` caps the registers per thread (more programs per SM, or spills).

    PYTHONPATH=src python benchmarks/tune_window_kernels.py [--tokens 65536] [--heads 16] [--window 64 512]
        [--forward-only]
"""
from __future__ import annotations

import argparse

import torch
import triton

from nha.ops.triton.window_attn import window_backward, window_forward


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, default=65536)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--window", type=int, nargs="+", default=[64, 512])
    p.add_argument("--forward-only", action="store_true", help="sweep the forward's tiles only")
    args = p.parse_args()
    N, E, H, D = 1, args.tokens, args.heads, args.dim
    rnd = lambda *s: torch.randn(*s, device="cuda", dtype=torch.bfloat16)  # noqa: E731
    q, k, v, do = rnd(N, E, H, D), rnd(N, E, H, D), rnd(N, E, H, D), rnd(N, E, H, D)
    valid = torch.ones(N, E, dtype=torch.int8, device="cuda")
    scale = D ** -0.5
    ms = lambda f: triton.testing.do_bench(f, warmup=10, rep=50, return_mode="median")  # noqa: E731
    print(f"card: {torch.cuda.get_device_name()}; E={E}, H={H}, D={D}; median ms (triton do_bench)")
    for w in args.window:
        o, lse = window_forward(q, k, v, valid, w, scale)
        delta = (do.float() * o).sum(-1)
        for BM, BN, warps, regs in [(64, 64, 4, None), (64, 32, 4, None), (64, 64, 8, None), (128, 64, 8, None),
                                    (128, 32, 8, None), (32, 32, 4, None), (64, 32, 4, 168), (64, 32, 4, 128),
                                    (64, 64, 4, 168), (128, 64, 8, 128)]:
            tiles = dict(BM=BM, BN=BN, num_warps=warps, **({} if regs is None else {"maxnreg": regs}))
            try:
                t = ms(lambda: window_forward(q, k, v, valid, w, scale, tiles, dtype=torch.bfloat16))
                print(f"w={w} {tiles}: forward {t:.3f} ms", flush=True)
            except Exception as e:  # an out-of-resources tile is a result too
                print(f"w={w} {tiles}: forward failed {type(e).__name__}: {str(e)[:100]}")
        if args.forward_only:
            continue
        for BM, BN, warps in [(64, 64, 4), (64, 64, 8), (32, 64, 4), (32, 64, 8), (16, 64, 4), (64, 32, 4),
                              (32, 128, 8), (64, 128, 8)]:
            tiles = dict(BM=BM, BN=BN, num_warps=warps)
            try:  # one kernel swept at a time, the other at its default
                kv = ms(lambda: window_backward(q, k, v, valid, lse, delta, do, w, scale, dkdv_tiles=tiles))
                dq = ms(lambda: window_backward(q, k, v, valid, lse, delta, do, w, scale, dq_tiles=tiles))
            except Exception as e:  # an out-of-resources tile is a result too
                print(f"w={w} {tiles}: failed {type(e).__name__}: {str(e)[:100]}")
                continue
            print(f"w={w} {tiles}: backward {kv:.3f} ms with them for dk/dv, {dq:.3f} ms with them for dq", flush=True)


if __name__ == "__main__":
    main()
