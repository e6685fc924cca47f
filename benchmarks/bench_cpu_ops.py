"""CPU benchmark of the NHA operator: chunk_nha vs torch SDPA causal attention vs the token-loop reference.

Forward+backward, float32, B=1, H=8, K=V=64, M=64, w=64 (issue 2). Each (method, T) runs in a fresh process so
its peak memory (growth of the resident set over the inputs) is its own. Prints a markdown table, writes it to
benchmarks/results/cpu_ops.md and a plot to benchmarks/results/cpu_ops.png.

    python benchmarks/bench_cpu_ops.py                 # T = 512 .. 16384
    python benchmarks/bench_cpu_ops.py --lengths 512 2048 --naive-max 2048
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def measure(method: str, T: int, repeats: int) -> dict:
    """Runs in the child process: one fwd+bwd for memory, then the median of `repeats` timed runs."""
    import resource
    import statistics
    import time

    import torch
    import torch.nn.functional as F

    from nha.ops import chunk_nha, naive_recurrent_nha

    torch.manual_seed(0)
    B, H, K, M, w = 1, 8, 64, 64, 64
    q, k, v = (torch.randn(B, T, H, K, requires_grad=True) for _ in range(3))
    g = (F.logsigmoid(torch.randn(B, T, H, M)) / 8).requires_grad_()
    do = torch.randn(B, T, H, K)

    def step():
        if method == "sdpa":
            o = F.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v)), is_causal=True).transpose(1, 2)
        elif method == "chunk":
            o, _ = chunk_nha(q, k, v, g, w)
        else:
            o, _ = naive_recurrent_nha(q, k, v, g, w)
        o.backward(do)
        for x in (q, k, v, g):
            x.grad = None

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step()
    peak_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return {"method": method, "T": T, "ms": 1e3 * statistics.median(times), "peak_mib": peak_mib}


def run_child(method: str, T: int, repeats: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", method, str(T), str(repeats)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192, 16384])
    parser.add_argument("--naive-max", type=int, default=2048, help="longest T for the (slow) token loop")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        method, T, repeats = args.child
        print(json.dumps(measure(method, int(T), int(repeats))))
        return

    import torch

    rows = []
    for T in args.lengths:
        for method in ("sdpa", "chunk", "naive"):
            if method == "naive" and T > args.naive_max:
                continue
            r = run_child(method, T, 1 if method == "naive" else args.repeats)
            rows.append(r)
            print(f"T={T:6d} {method:6s} {r['ms']:10.1f} ms  peak {r['peak_mib']:8.1f} MiB", flush=True)

    by = {(r["method"], r["T"]): r for r in rows}
    cpu = platform.processor() or platform.machine()
    lines = [
        f"CPU ({cpu}, {torch.get_num_threads()} threads), torch {torch.__version__}, float32, forward+backward, "
        "B=1, H=8, K=V=64, M=64, w=64; median of runs, peak = resident-set growth during one step.",
        "",
        "| T | SDPA causal ms | chunk_nha ms | chunk / SDPA | naive ms | naive / chunk | SDPA peak MiB "
        "| chunk peak MiB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for T in args.lengths:
        s, c, n = by[("sdpa", T)], by[("chunk", T)], by.get(("naive", T))
        naive_ms = f"{n['ms']:.0f}" if n else "-"
        speedup = f"{n['ms'] / c['ms']:.0f}x" if n else "-"
        lines.append(f"| {T} | {s['ms']:.1f} | {c['ms']:.1f} | {c['ms'] / s['ms']:.2f} | {naive_ms} | {speedup} | "
                     f"{s['peak_mib']:.0f} | {c['peak_mib']:.0f} |")
    table = "\n".join(lines)
    print("\n" + table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cpu_ops.md").write_text(table + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
    for method, label in (("sdpa", "SDPA causal"), ("chunk", "chunk_nha (w=64, M=64)"), ("naive", "naive token loop")):
        pts = [(r["T"], r["ms"], r["peak_mib"]) for r in rows if r["method"] == method]
        if pts:
            ts, ms, mem = zip(*pts)
            ax_t.plot(ts, ms, marker="o", label=label)
            if method != "naive":
                ax_m.plot(ts, mem, marker="o", label=label)
    for ax, ylabel in ((ax_t, "forward+backward (ms)"), (ax_m, "peak memory (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length T")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(f"NHA operator on CPU ({torch.get_num_threads()} threads), float32")
    fig.tight_layout()
    fig.savefig(RESULTS / "cpu_ops.png", dpi=120)
    print(f"wrote {RESULTS / 'cpu_ops.md'} and {RESULTS / 'cpu_ops.png'}")


if __name__ == "__main__":
    main()
