"""A/B timing of the whole Triton operator: this checkout's `triton_nha` against another source tree's, same run.

T time, B = 65,536 / T batch, 16 heads, K = V = 128, M = 64, bf16, inputs that need gradients (as bench_gpu_ops.py);
median ms by triton.testing.do_bench of the forward without gradients (a prefill), the forward and forward+backward,
per window. Each tree runs in its own
process (one import of `nha` each). For judging a change; the report with its baselines is `bench_gpu_ops.py`.

    git worktree add /tmp/base <commit>   # or: git archive <commit> src | tar -x -C /tmp/base
    PYTHONPATH=src python benchmarks/ab_end_to_end.py --old /tmp/base/src [--lengths 8192 65536] [--windows 64 2048]
    PYTHONPATH=src python benchmarks/ab_end_to_end.py --old /tmp/base/src --decode 1 16   # decoding steps instead
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

TOKENS, H, D, M = 65536, 16, 128, 64


def measure(lengths: list[int], windows: list[int]) -> list[dict]:
    import torch  # noqa: PLC0415 (imported in the worker process only)
    import torch.nn.functional as F  # noqa: PLC0415
    import triton  # noqa: PLC0415

    from nha.ops.triton import triton_nha  # noqa: PLC0415

    rows = []
    for T in lengths:
        B = max(1, TOKENS // T)
        rnd = lambda *s: torch.randn(*s, device="cuda", dtype=torch.bfloat16, requires_grad=True)  # noqa: E731
        q, k, v = rnd(B, T, H, D), rnd(B, T, H, D), rnd(B, T, H, D)
        g = F.logsigmoid(torch.randn(B, T, H, M, device="cuda")).div(8).bfloat16().requires_grad_()
        do = torch.randn_like(q)
        for w in windows:
            def forward(w=w):
                return triton_nha(q, k, v, g, w, check_gates=False)[0]  # as the layers call it on a GPU

            def forward_backward(w=w):
                for x in (q, k, v, g):
                    x.grad = None
                forward(w).backward(do)

            def prefill(w=w):
                with torch.no_grad():
                    forward(w)

            pre = triton.testing.do_bench(prefill, warmup=10, rep=200, return_mode="median")
            fwd = triton.testing.do_bench(forward, warmup=10, rep=200, return_mode="median")
            fb = triton.testing.do_bench(forward_backward, warmup=10, rep=400, return_mode="median")
            rows.append({"T": T, "w": w, "prefill": pre, "fwd": fwd, "fwd_bwd": fb})
    return rows


def measure_decode(batches: list[int], steps: int = 1000, repeats: int = 5) -> list[dict]:
    """Wall-clock ms per decoding step (bench_gpu_ops.py's `decode_step` over 128k tokens, w = 64) in a loop of
    `steps` calls, best of `repeats` loops: a step is host-bound, so its host work is what this times."""
    from bench_gpu_ops import decode_step, wall_ms  # noqa: PLC0415 (this folder; imports the tree under test)

    rows = []
    for B in batches:
        step, _ = decode_step(B, 131072)
        rows.append({"B": B, "step_ms": wall_ms(step, steps, name=f"B{B} step", warmup=50, repeats=repeats)})
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--old", required=True, help="the `src` folder of the tree to compare against")
    p.add_argument("--lengths", type=int, nargs="+", default=[8192, 65536])
    p.add_argument("--windows", type=int, nargs="+", default=[64, 512, 2048])
    p.add_argument("--decode", type=int, nargs="+", metavar="B",
                   help="time decoding steps at these batch sizes instead (wall clock, over a state of 128k tokens)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(measure_decode(args.decode) if args.decode else measure(args.lengths, args.windows)))
        return
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
    results = {}
    for name, src in (("old", args.old), ("new", here)):
        env = dict(os.environ, PYTHONPATH=os.path.abspath(src))
        cmd = [sys.executable, __file__, "--old", args.old, "--worker", "--lengths", *map(str, args.lengths),
               "--windows", *map(str, args.windows)] + (["--decode", *map(str, args.decode)] if args.decode else [])
        out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
        results[name] = json.loads(out.strip().splitlines()[-1])
    import torch  # noqa: PLC0415

    print(f"card: {torch.cuda.get_device_name()}")
    if args.decode:
        print("| batch | old ms per step | new ms per step |\n|---|---|---|")
        for a, b in zip(results["old"], results["new"]):
            print(f"| {a['B']} | {a['step_ms']:.4f} | {b['step_ms']:.4f} |")
        return
    print("| T | w | old prefill | new prefill | old fwd | new fwd | old fwd+bwd | new fwd+bwd |")
    print("|---|---|---|---|---|---|---|---|")
    for a, b in zip(results["old"], results["new"]):
        cells = " | ".join(f"{a[k]:.2f} | {b[k]:.2f}" for k in ("prefill", "fwd", "fwd_bwd"))
        print(f"| {a['T']:,} | {a['w']} | {cells} |")


if __name__ == "__main__":
    main()
