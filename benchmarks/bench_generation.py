"""Generation speed and cache memory of NHA models vs the same-size Transformer at growing context (CPU).

For each model and context length: prefill `context` tokens, then decode `--new-tokens` tokens one at a time
through the `NHACache` (what `generate` does), timing the decode steps only. Prints a table and writes
`results/generation_cpu.md` and `results/generation_cpu.png`.

    python benchmarks/bench_generation.py                      # 1k, 4k, 16k context (1 to 5 minutes on 2 cores)
    python benchmarks/bench_generation.py --contexts 512 1024  # quicker
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from nha.models import NHACache, NHAForCausalLM, preset_config

RESULTS = Path(__file__).parent / "results"
# one small model shape for all: 6 layers, hidden 256, 4 query / 2 key-value heads of 64
SHAPE = dict(vocab_size=4096, hidden_size=256, intermediate_size=704, num_hidden_layers=6, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=32768)
NHA = dict(window_size=64, num_slots=64)
# name: (preset, overrides); nha-h: layers 2 and 5 full attention
MODELS = {"transformer": ("transformer", {}), "nha": ("nha", NHA), "nha-h": ("nha", dict(NHA, full_attention_every=3))}


@torch.inference_mode()
def measure(model: NHAForCausalLM, context: int, new_tokens: int, prefill_chunk: int) -> dict:
    """Prefill `context` random tokens (in chunks, through the cache), then time greedy decoding of `new_tokens`."""
    ids = torch.randint(0, model.config.vocab_size, (1, context))
    cache = NHACache(model.config.layer_windows)
    t0 = time.perf_counter()
    for start in range(0, context, prefill_chunk):
        out = model(ids[:, start:start + prefill_chunk], past_key_values=cache, use_cache=True, logits_to_keep=1)
    prefill_s = time.perf_counter() - t0
    token = out.logits[:, -1:].argmax(-1)
    steps = []
    for _ in range(new_tokens):
        t0 = time.perf_counter()
        out = model(token, past_key_values=cache, use_cache=True)
        token = out.logits[:, -1:].argmax(-1)
        steps.append(time.perf_counter() - t0)
    # the median step: the machine is shared, and a burst of other work should not decide the number
    return dict(prefill_s=prefill_s, tokens_per_s=1 / statistics.median(steps),
                mean_tokens_per_s=len(steps) / sum(steps), cache_mib=cache.memory_bytes() / 2**20)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prefill-chunk", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for name, (preset, extra) in MODELS.items():
        model = NHAForCausalLM(preset_config(preset, "tiny", **SHAPE, **extra)).eval()
        print(name, "windows", model.config.layer_windows, flush=True)
        measure(model, 256, 4, args.prefill_chunk)  # warm-up
        for context in args.contexts:
            r = measure(model, context, args.new_tokens, args.prefill_chunk)
            rows.append(dict(model=name, context=context, **r))
            print(f"{name:12s} ctx {context:6d}  decode {r['tokens_per_s']:7.1f} tok/s  "
                  f"cache {r['cache_mib']:8.2f} MiB  prefill {r['prefill_s']:6.1f} s", flush=True)
    params = sum(p.numel() for p in model.parameters())
    # the 1-minute load average tells whether other work shared the cores during the run
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} threads, "
               f"torch {torch.__version__}, load average at the end {os.getloadavg()[0]:.1f}")
    write_markdown(rows, args, params, machine)
    write_plot(rows)


def write_markdown(rows, args, params, machine) -> None:
    lines = [
        f"Machine: {machine}. Model: 6 layers, hidden 256, 4 query / 2 key-value heads x 64, vocab 4096 "
        f"(~{params / 1e6:.1f}M parameters), float32, batch 1. NHA: window 64, 64 slots per head; nha-h: layers 2 "
        "and 5 full attention.",
        f"Decode: {args.new_tokens} greedy tokens after the context, each step timed alone; tokens/s = 1 / median step "
        f"(mean in brackets); cache: bytes held by "
        f"the NHACache after decoding; prefill in chunks of {args.prefill_chunk} through the cache.",
        "",
        "| model | context | decode tokens/s | cache MiB | prefill s |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['context']} | {r['tokens_per_s']:.1f} ({r['mean_tokens_per_s']:.1f}) | "
                     f"{r['cache_mib']:.2f} | "
                     f"{r['prefill_s']:.1f} |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "generation_cpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def write_plot(rows) -> None:
    import matplotlib  # noqa: PLC0415  (only the benchmark needs it)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, (ax_speed, ax_mem) = plt.subplots(1, 2, figsize=(10, 4))
    for name in MODELS:
        sel = [r for r in rows if r["model"] == name]
        ctx = [r["context"] for r in sel]
        ax_speed.plot(ctx, [r["tokens_per_s"] for r in sel], marker="o", label=name)
        ax_mem.plot(ctx, [r["cache_mib"] for r in sel], marker="o", label=name)
    for ax, title in ((ax_speed, "decode tokens/s (CPU)"), (ax_mem, "cache MiB")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context tokens")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "generation_cpu.png", dpi=120)


if __name__ == "__main__":
    main()
