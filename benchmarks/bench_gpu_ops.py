"""GPU timings of the Triton NHA operator against the baselines, re-measured in the same run.

B batch, T time, H heads, D head dim, M slots, w window. Every training row processes 65,536 tokens (B = 65536 / T),
16 heads (`--heads HQ HKV`: GQA), K = V = 128, M = 64, bf16: FlashAttention (torch SDPA, flash backend) causal,
fla's sliding-window attention and gated slot attention (when fla is installed; GSA only without GQA), NHA for w in
{64, 512, 2048} as the layers call it on a GPU (`check_gates=False`; w = 64 also with the check, a host sync, as a
direct call does by default); median ms by triton.testing.do_bench, as ../shared/bench/anchors_gpu.py does.
A prefill table: SDPA, NHA w = 64 and fla's GSA forward without gradients (`torch.no_grad()`).
Decoding: one token at batch 1, 16 and 64 (32 query heads, 8 key/value heads, head dim 128), SDPA over a
4k/32k/128k KV cache against NHA's step over its state, as the wall-clock mean of a loop of calls (`wall_ms`: host
work included).
Prints markdown tables; writes gpu_ops.json, gpu_ops.md and gpu_ops.png to --out (default $OUT or /tmp).

    PYTHONPATH=src python benchmarks/bench_gpu_ops.py [--quick] [--lengths 65536] [--windows 64] [--heads 32 8]
        [--no-decode | --no-train]
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import time

import torch
import torch.nn.functional as F
import triton

from nha.ops.state import NHAState
from nha.ops.triton import triton_nha, triton_nha_step

TOKENS, H, D, M = 65536, 16, 128, 64
WINDOWS = (64, 512, 2048)


def bench(fn, rep=50, name="") -> float:
    start = time.time()
    ms = triton.testing.do_bench(fn, warmup=25, rep=rep, return_mode="median")
    print(f"  {name}: {ms:.3f} ms (measured in {time.time() - start:.1f} s)", flush=True)
    return ms


def wall_ms(fn, steps=500, name="", warmup=20, repeats=1) -> float:
    """Mean wall-clock ms per call over `steps` back-to-back calls (one sync at the end), the best of `repeats` such
    loops: a decoding loop's latency.

    do_bench times the GPU between events with an L2 flush before every call, which lets a host-bound call (a
    decoding step is one) hide up to the flush's duration of its host work; a loop of calls shows all of it.
    Garbage is collected first: the reference cycles earlier rows left (autograd graphs, closures) would otherwise
    make Python's cyclic collector, which a decoding loop's small objects trigger, scan them again and again (an
    H200 run read 0.12 ms a step after the training rows and 0.07 after a `gc.collect()`, session 11)."""
    gc.collect()
    for _ in range(warmup):
        fn()
    loops = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
        loops.append((time.perf_counter() - start) * 1000 / steps)
    ms = min(loops)
    print(f"  {name}: {ms:.3f} ms per call (wall clock, {steps} calls, best of {repeats})", flush=True)
    return ms


DECODE_HEADS = (32, 8)  # query, key/value heads of the decoding rows (head dim D, M slots)


def decode_step(B: int, context: int, w: int = 64):
    """`(step, state)`: one NHA decoding step as the layer calls it, over a bf16 state after `context` tokens
    (slots + a w-row ring buffer, whatever the context); its gates are <= 0 by construction, so no gate check."""
    dt, dev, (HQ, HKV) = torch.bfloat16, "cuda", DECODE_HEADS
    state = NHAState.empty(B, HKV, M, D, D, w, dtype=dt, device=dev)
    state.seen.fill_(context)
    state.slots_live.fill_(True)
    x = [torch.randn(B, 1, n, D, device=dev, dtype=dt) for n in (HQ, HKV, HKV)]
    g = F.logsigmoid(torch.randn(B, 1, HKV, M, device=dev)).div(8).to(dt)
    return (lambda: triton_nha_step(*x, g, w, state, check_gates=False)), state


def fwd_bwd(fn, inputs, do):
    def run():
        for x in inputs:
            x.grad = None
        fn().backward(do)
    return run


def no_grad(fn):
    def run():
        with torch.no_grad():
            return fn()
    return run


def training_rows(lengths, fla, with_gsa: bool, rows: list[dict], windows=WINDOWS, heads=(H, H)) -> list[dict]:
    """Time every method at each T; `heads` = (query heads, key/value heads): GQA when they differ (SDPA with
    `enable_gqa`; fla's GSA, which takes one head count, only without GQA)."""
    dt, dev, (HQ, HKV) = torch.bfloat16, "cuda", heads
    for T in lengths:
        B = max(1, TOKENS // T)
        row = next((r for r in rows if r["T"] == T), None)
        if row is None:
            row = {"T": T, "B": B}
            rows.append(row)
        rnd = lambda *s: torch.randn(*s, device=dev, dtype=dt, requires_grad=True)  # noqa: E731
        q, k, v = rnd(B, T, HQ, D), rnd(B, T, HKV, D), rnd(B, T, HKV, D)
        do = torch.randn(B, T, HQ, D, device=dev, dtype=dt)
        g = F.logsigmoid(torch.randn(B, T, HKV, M, device=dev)).div(8).to(dt).requires_grad_()
        qt, kt, vt = (x.detach().transpose(1, 2).contiguous().requires_grad_() for x in (q, k, v))
        dot = do.transpose(1, 2).contiguous()
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
            f = lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, enable_gqa=HQ != HKV)  # noqa: E731
            if not with_gsa:
                row["sdpa"] = (bench(f, name=f"T{T} sdpa"), bench(fwd_bwd(f, (qt, kt, vt), dot), name="bwd"))
                row.setdefault("prefill", {})["sdpa"] = bench(no_grad(f), name="sdpa no grad")
        del qt, kt, vt, dot
        for w in windows if not with_gsa else ():
            if w >= T:
                continue
            # as the layers call it on a GPU: their gates are <= 0 by construction, so no check (a host sync)
            f = lambda w=w: triton_nha(q, k, v, g, w, check_gates=False)[0]  # noqa: E731
            row[f"nha_w{w}"] = (bench(f, name=f"nha w{w}"), bench(fwd_bwd(f, (q, k, v, g), do), name="bwd"))
            if w == 64:  # a prefill: the forward without gradients (nothing saved, one tf32 product per float32 one)
                row.setdefault("prefill", {})["nha_w64"] = bench(no_grad(f), name="nha w64 no grad")
            if w == 64:  # what the gate check costs a direct call (its default)
                f = lambda w=w: triton_nha(q, k, v, g, w)[0]  # noqa: E731
                row["nha_w64_checked"] = (bench(f, name="checked"), bench(fwd_bwd(f, (q, k, v, g), do), name="bwd"))
            if fla is not None:
                f = lambda w=w: fla["swa"](q, k, v, window_size=w)  # noqa: E731
                try:
                    row[f"fla_swa_w{w}"] = (bench(f, name=f"swa w{w}"), bench(fwd_bwd(f, (q, k, v), do), name="bwd"))
                except Exception as e:  # noqa: BLE001 (a baseline that cannot run these shapes leaves its cell empty)
                    print(f"  fla swa w{w} failed: {type(e).__name__}: {e}", flush=True)
        if fla is not None and with_gsa and HQ == HKV:
            s = torch.randn(B, T, HKV, M, device=dev, dtype=dt, requires_grad=True)
            f = lambda: fla["gsa"](q, k, v, s, g)[0]  # noqa: E731
            row["fla_gsa"] = (bench(f, name=f"T{T} gsa"), bench(fwd_bwd(f, (q, k, v, s, g), do), name="bwd"))
            row.setdefault("prefill", {})["fla_gsa"] = bench(no_grad(f), name="gsa no grad")
            del s
        print({k: v if not isinstance(v, tuple) else tuple(round(x, 3) for x in v) for k, v in row.items()}, flush=True)
        del q, k, v, g, do
        torch.cuda.empty_cache()
    return rows


def decoding_rows(contexts, batches, w=64) -> list[dict]:
    rows = []
    dt, dev, (HQ, HKV) = torch.bfloat16, "cuda", DECODE_HEADS
    for Bd in batches:
        row = {"B": Bd}
        for L in contexts:
            try:
                kc = torch.randn(Bd, HKV, L, D, device=dev, dtype=dt)
                vc = torch.randn(Bd, HKV, L, D, device=dev, dtype=dt)
                qd = torch.randn(Bd, HQ, 1, D, device=dev, dtype=dt)
                row[f"sdpa_{L}"] = wall_ms(lambda: F.scaled_dot_product_attention(qd, kc, vc, enable_gqa=True),
                                           name=f"B{Bd} sdpa {L}")
                row[f"kv_cache_MiB_{L}"] = 2 * kc.numel() * 2 / 2**20
                del kc, vc
            except torch.OutOfMemoryError:
                row[f"sdpa_{L}"] = float("nan")
            torch.cuda.empty_cache()
            step, state = decode_step(Bd, L, w)
            row[f"nha_{L}"] = wall_ms(step, name=f"B{Bd} nha {L}")
        row["nha_state_MiB"] = sum(t.numel() * t.element_size() for t in state.tensors()) / 2**20
        print(row, flush=True)
        rows.append(row)
    return rows


def tables(device: str, train: list[dict], decode: list[dict], heads=(H, H)) -> str:
    heads_text = f"{heads[0]} heads" if heads[0] == heads[1] else f"{heads[0]} query / {heads[1]} key-value heads"
    out = [f"Card: {device}. bf16, {TOKENS} tokens per batch, {heads_text}, K = V = {D}, M = {M}; median ms. "
           "NHA as the layers call it on a GPU (check_gates=False); nha_w64_checked: with the gate check "
           "(a host sync).", ""]
    for mode, i in (("forward", 0), ("forward+backward", 1)):
        cols = ["sdpa"] + [f"{p}_w{w}" for w in WINDOWS for p in ("nha", "fla_swa")] + ["fla_gsa"]
        cols += ["nha_w64_checked"] if any("nha_w64_checked" in r for r in train) else []
        out += [f"**{mode}**", "", "| T | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for r in train:
            out.append(f"| {r['T']:,} | " + " | ".join(f"{r[c][i]:.2f}" if c in r else "-" for c in cols) + " |")
        out.append("")
    prefill = [r for r in train if r.get("prefill")]
    if prefill:
        cols = ["sdpa", "nha_w64", "fla_gsa"]
        out += ["**forward without gradients** (a prefill: nothing saved for a backward)", "",
                "| T | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for r in prefill:
            out.append(f"| {r['T']:,} | " + " | ".join(f"{r['prefill'][c]:.2f}" if c in r["prefill"] else "-"
                                                      for c in cols) + " |")
        out.append("")
    if decode:
        ctx = sorted({int(k.split("_")[1]) for r in decode for k in r if k.startswith("sdpa_")})
        out += ["**decoding one token** (32 query heads, 8 KV heads, head dim 128; NHA w = 64, M = 64)", "",
                "| batch | " + " | ".join(f"SDPA {c // 1024}k / NHA {c // 1024}k" for c in ctx)
                + " | KV cache at max | NHA state |", "|---" * (len(ctx) + 3) + "|"]
        for r in decode:
            cells = " | ".join(f"{r[f'sdpa_{c}']:.3f} / {r[f'nha_{c}']:.3f}" for c in ctx)
            out.append(f"| {r['B']} | {cells} | {r.get(f'kv_cache_MiB_{ctx[-1]}', float('nan')):.0f} MiB | "
                       f"{r['nha_state_MiB']:.1f} MiB |")
    return "\n".join(out)


def plot(device: str, train: list[dict], path: str, heads=(H, H)) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    methods = sorted({k for r in train for k in r if k not in ("T", "B", "prefill")})
    for ax, i, title in ((axes[0], 0, "forward"), (axes[1], 1, "forward+backward")):
        for m in methods:
            pts = [(r["T"], r[m][i]) for r in train if m in r]
            ax.plot(*zip(*pts), marker="o", ls="-" if m.startswith("nha") else "--", label=m)
        ax.set(xscale="log", yscale="log", xlabel="T (65,536 tokens per batch)", ylabel="ms", title=title)
        ax.set_xticks([r["T"] for r in train], [f"{r['T'] // 1024}k" for r in train])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    heads_text = f"H={heads[0]}" if heads[0] == heads[1] else f"HQ={heads[0]}, H={heads[1]}"
    fig.suptitle(f"NHA Triton vs baselines, bf16, {heads_text}, K=V={D}, M={M} ({device})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp"))
    ap.add_argument("--quick", action="store_true", help="two lengths, batch-1 decoding only")
    ap.add_argument("--lengths", type=int, nargs="+", help="training lengths T (default 2k, 8k, 32k, 64k)")
    ap.add_argument("--windows", type=int, nargs="+", default=list(WINDOWS),
                    help="NHA / SWA windows (default 64 512 2048)")
    ap.add_argument("--no-decode", action="store_true", help="skip the decoding rows")
    ap.add_argument("--no-train", action="store_true", help="skip the training rows (and fla's GSA): decoding only")
    ap.add_argument("--heads", type=int, nargs=2, default=[H, H], metavar=("HQ", "HKV"),
                    help="query and key/value heads of the training rows (default 16 16; e.g. 32 8 for GQA)")
    ap.add_argument("--plot-from", help="only redraw the plot and tables from a gpu_ops.json written earlier")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.plot_from:
        with open(args.plot_from) as f:
            saved = json.load(f)
        saved["train"] = [{k: tuple(v) if isinstance(v, list) else v for k, v in r.items()} for r in saved["train"]]
        heads = tuple(saved.get("heads", (H, H)))
        print(tables(saved["device"], saved["train"], saved["decode"], heads))
        plot(saved["device"], saved["train"], os.path.join(args.out, "gpu_ops.png"), heads)
        return
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        from fla.ops.attn.parallel import parallel_attn  # noqa: PLC0415
        from fla.ops.gsa import chunk_gsa  # noqa: PLC0415

        fla = {"swa": parallel_attn, "gsa": chunk_gsa}
    except ImportError as e:
        print("fla not importable, its baselines are skipped:", e)
        fla = None
    device = torch.cuda.get_device_name()
    lengths = args.lengths or ((2048, 65536) if args.quick else (2048, 8192, 32768, 65536))
    train, decode = [], []
    heads = tuple(args.heads)

    def save() -> None:  # after every phase, so a run cut short still leaves its numbers
        text = tables(device, train, decode, heads)
        print(text, flush=True)
        with open(os.path.join(args.out, "gpu_ops.md"), "w") as f:
            f.write(text + "\n")
        with open(os.path.join(args.out, "gpu_ops.json"), "w") as f:
            json.dump({"device": device, "torch": torch.__version__, "triton": triton.__version__, "heads": heads,
                       "train": train, "decode": decode}, f, indent=1)
        try:
            if train:
                plot(device, train, os.path.join(args.out, "gpu_ops.png"), heads)
        except ImportError as e:  # the GPU image may lack matplotlib: plot later with --plot-from
            print("no plot:", e)

    if not args.no_train:
        training_rows(lengths, fla, False, train, args.windows, heads)
        save()
    if not args.no_decode:
        decode += decoding_rows((4096, 32768, 131072), (1,) if args.quick else (1, 16, 64))
        save()
    # fla's gated slot attention autotunes for minutes on its first calls: it goes last, one length at a time
    for T in lengths if fla is not None and not args.no_train else ():
        training_rows((T,), fla, True, train, heads=heads)
        save()


if __name__ == "__main__":
    main()
