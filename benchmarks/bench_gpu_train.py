"""GPU training run of issue 5: a ~100M-parameter NHA-H vs the same-size Transformer on the same tokens, and the
same NHA run on 2 GPUs under DDP and FSDP2 (torchrun).

Runs `nha train` as subprocesses on byte-level Shakespeare, then prints a markdown table (final and held-out loss,
tokens/s, peak GPU memory) and writes it with a loss-curve plot to --results.

    python benchmarks/bench_gpu_train.py --data path/to/texts --steps 150 --results out/
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path



def model_args(preset: str, hidden: int, layers: int) -> list[str]:
    """The default (768 wide, 14 layers, head dim 64, byte vocabulary) has ~100M parameters; `nha-h` has w = 64,
    M = 64 and makes layers 5 and 11 full attention (the preset's one in every 6)."""
    fields = {"vocab_size": 256, "hidden_size": hidden, "intermediate_size": hidden * 8 // 3,
              "num_hidden_layers": layers, "num_attention_heads": hidden // 64,
              "num_key_value_heads": max(1, hidden // 192), "tie_word_embeddings": "true"}
    if preset != "transformer":
        fields.update(window_size=64, num_slots=64)
    args = ["--size", "340m"]
    for key, value in fields.items():
        args += ["--set", f"{key}={value}"]
    return args


def train(name: str, preset: str, args, gpus: int, extra: list[str]) -> dict:
    """One `nha train` run; returns its summary from log.jsonl."""
    out = Path(args.results) / name
    cmd = ["-m", "nha.cli", "train", "--model", preset, *model_args(preset, args.hidden, args.layers),
           "--data", args.data, "--seq-len", str(args.seq_len), "--micro-batch-size", str(8 // gpus),
           "--steps", str(args.steps), "--warmup-steps", "20", "--lr", "6e-4",
           "--eval-every", str(args.steps), "--eval-batches", "4", "--log-every", "10", "--save-every", "0",
           "--out", str(out), "--no-progress", *extra]
    launcher = [sys.executable] if gpus == 1 else [sys.executable, "-m", "torch.distributed.run",
                                                   f"--nproc_per_node={gpus}", "--standalone"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    print(f"== {name}: {' '.join(launcher + cmd)}", flush=True)
    done = subprocess.run(launcher + cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        print("\n".join((done.stdout + done.stderr).splitlines()[-25:]), flush=True)
        raise subprocess.CalledProcessError(done.returncode, launcher[:1] + cmd[:4])
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if line]
    steps = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval_loss" in r]
    last = steps[-1]
    tail = steps[len(steps) // 2:]
    return {"name": name, "gpus": gpus, "steps": last["step"], "loss": last["loss"],
            "eval_loss": evals[-1]["eval_loss"] if evals else float("nan"),
            "tokens_per_s": sum(r["tokens_per_s"] for r in tail) / len(tail),
            "peak_gib": max(r.get("peak_mem_gib", float("nan")) for r in steps),
            "curve": [(r["step"], r["loss"]) for r in steps]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--layers", type=int, default=14)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--results", default="benchmarks/results/gpu_train")
    p.add_argument("--runs", nargs="+", default=["nha", "transformer", "nha-ddp2", "nha-fsdp2"])
    args = p.parse_args()
    import torch

    plan = {"nha": ("nha-h", 1, []), "transformer": ("transformer", 1, []),
            "nha-ddp2": ("nha-h", 2, []), "nha-fsdp2": ("nha-h", 2, ["--fsdp"])}
    rows = []
    for name in args.runs:
        try:
            preset, gpus, extra = plan[name]
            rows.append(train(name, preset, args, gpus, extra))
        except subprocess.CalledProcessError as err:
            print(f"!! {name} failed: {err}", flush=True)
    card = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    lines = [f"{card}, torch {torch.__version__}; {args.steps} steps of 8 x {args.seq_len} bytes (global), "
             "bf16 autocast.", "",
             "| run | GPUs | steps | train loss | held-out loss | tokens/s | peak GPU memory (GiB) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['gpus']} | {r['steps']} | {r['loss']:.3f} | {r['eval_loss']:.3f} | "
                     f"{r['tokens_per_s']:,.0f} | {r['peak_gib']:.1f} |")
    table = "\n".join(lines)
    print(table)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / "gpu_train.md").write_text(table + "\n")
    (results / "gpu_train.json").write_text(json.dumps(rows, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        ax.plot(*zip(*r["curve"]), label=f"{r['name']} ({r['gpus']} GPU)")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (nats / byte)")
    ax.set_title(f"~100M NHA-H vs Transformer, {card}")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(results / "gpu_train.png", dpi=120)


if __name__ == "__main__":
    main()
