"""Several models side by side: accuracy (lm-eval and/or suite tasks), decoding-state memory, and speed.

Speed is measured here, on this machine: prefill tokens/s over one `speed_len`-token forward with a cache, then
milliseconds per decoded token over `decode_steps` single-token steps on that cache (batch 1, median of `repeats`).
"""
from __future__ import annotations

import statistics
import time

import torch

from nha.eval.windows import current_layout, format_layout, state_bytes


@torch.no_grad()
def measure_speed(model, *, speed_len: int = 1024, decode_steps: int = 32, repeats: int = 3) -> dict:
    """`prefill_tok_s` and `decode_ms` (per token) of batch-1 inference, median over `repeats` runs."""
    device = next(model.parameters()).device
    ids = torch.randint(0, model.config.vocab_size, (1, speed_len), device=device)
    step = torch.randint(0, model.config.vocab_size, (1, 1), device=device)
    prefill, decode = [], []
    model(ids[:, :16], use_cache=True)  # warm-up: first calls allocate and pick kernels
    for _ in range(repeats):
        t0 = time.perf_counter()
        cache = model(ids, use_cache=True).past_key_values
        t1 = time.perf_counter()
        for _ in range(decode_steps):
            cache = model(step, past_key_values=cache, use_cache=True).past_key_values
        t2 = time.perf_counter()
        prefill.append(speed_len / (t1 - t0))
        decode.append(1000 * (t2 - t1) / decode_steps)
    return {"prefill_tok_s": statistics.median(prefill), "decode_ms": statistics.median(decode),
            "measured_state_bytes": cache.memory_bytes()}


def model_row(name: str, model, tokenizer, *, tasks=(), suite_tasks=(), lengths=(1024,), limit=None,
              data_dir=None, context_len: int = 4096, speed_len: int = 1024, decode_steps: int = 32,
              repeats: int = 3, num_examples: int = 20) -> dict:
    """One model's report row: accuracies, state bytes at `context_len`, and speed."""
    from nha.eval.harness import evaluate  # noqa: PLC0415
    from nha.eval.longctx import run_suite  # noqa: PLC0415

    layout = current_layout(model)
    row = {"model": name, "windows": format_layout(layout),
           "params": sum(p.numel() for p in model.parameters()),
           "state_bytes": state_bytes(model, layout, context_len), "context_len": context_len, "accuracy": {}}
    if tasks:
        ev = evaluate(model, tokenizer, list(tasks), data_dir=data_dir, limit=limit, bootstrap_iters=0)
        for task, metrics in ev["results"].items():
            key = next((m for m in ("acc", "bits_per_byte", "perplexity", "word_perplexity") if m in metrics), None)
            if key is not None:
                row["accuracy"][f"{task} {key}"] = metrics[key]
    if suite_tasks:
        for r in run_suite(model, tasks=list(suite_tasks), lengths=list(lengths), num_examples=num_examples,
                           tokenizer=tokenizer):
            row["accuracy"][f"{r['task']}@{r['length']}"] = r["accuracy"]
    row.update(measure_speed(model, speed_len=speed_len, decode_steps=decode_steps, repeats=repeats))
    row["speed_len"] = speed_len
    return row


def report_markdown(rows: list[dict], device: str = "cpu") -> str:
    metrics = list(dict.fromkeys(k for r in rows for k in r["accuracy"]))
    ctx, slen = rows[0]["context_len"], rows[0]["speed_len"]
    head = (["model", "windows", "params"] + metrics +
            [f"state @{ctx} (MiB)", f"prefill {slen} (tok/s)", "decode (ms/tok)"])
    lines = ["| " + " | ".join(head) + " |", "| --- | --- |" + " ---: |" * (len(head) - 2)]
    for r in rows:
        cells = [r["model"], r["windows"], f"{r['params'] / 1e6:.2f}M"]
        cells += [f"{r['accuracy'][m]:.4f}" if m in r["accuracy"] else "" for m in metrics]
        cells += [f"{r['state_bytes'] / 2 ** 20:.3f}", f"{r['prefill_tok_s']:.0f}", f"{r['decode_ms']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(f"\nDevice: {device}, batch 1; state counted at {ctx} tokens (full-attention layers grow with it).")
    return "\n".join(lines)


def plot_report(rows: list[dict], path: str) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    metrics = list(dict.fromkeys(k for r in rows for k in r["accuracy"]))
    panels = [(m, [r["accuracy"].get(m, float("nan")) for r in rows]) for m in metrics[:3]]
    panels += [(f"state @{rows[0]['context_len']} (MiB)", [r["state_bytes"] / 2 ** 20 for r in rows]),
               ("decode (ms/token)", [r["decode_ms"] for r in rows])]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4))
    names = [r["model"] for r in rows]
    for ax, (title, values) in zip(axes, panels):
        ax.bar(range(len(rows)), values, color=[f"C{i}" for i in range(len(rows))])
        ax.set_xticks(range(len(rows)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
