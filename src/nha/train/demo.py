"""`nha demo`: Transformer, SWA, GSA and NHA of one size and one decoding-state budget, trained on MQAR.

The point of the experiment (the paper's recall claim): the key-value pairs sit further back than a sliding
window reaches, so SWA must fail; GSA and NHA keep a fixed-size memory of the same number of bytes, and NHA adds the
exact window to its slots. The Transformer keeps every token (its cache grows with the sequence) and is the
ceiling. The budget is set by NHA's layout: SWA gets the largest window and GSA the most slots whose measured
decoding state (`NHACache.memory_bytes()` after reading one prompt) fits in NHA's.
Each (model, seed) run is one process with one thread; two run at a time, which suits a 2-core CPU best.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

SETUPS = {
    # measured on a 2-core CPU: about 5 minutes for 4 models x 3 seeds (see BENCHMARKS.md, "Demo (CPU)")
    # one token per (key, value) pair: a 2-layer Transformer learns this lookup in a few hundred steps, while
    # two-token MQAR pairs took it more than the 1500 steps that fit here (see README, "The demo: recall")
    "cpu": dict(task=dict(vocab_size=81, num_pairs=4, num_queries=16, seq_len=64, pair_tokens=True),
                model=dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=2,
                           num_key_value_heads=2),
                nha=dict(window_size=4, num_slots=8), steps=600, lr=2e-3, batch=32, seeds=3, workers=2),
    # meant for one GPU (not yet measured): more pairs, longer rows, a wider model
    "gpu": dict(task=dict(vocab_size=256, num_pairs=16, num_queries=64, seq_len=256),
                model=dict(num_hidden_layers=2, hidden_size=128, intermediate_size=256, num_attention_heads=4,
                           num_key_value_heads=4),
                nha=dict(window_size=16, num_slots=16), steps=4000, lr=1e-3, batch=128, seeds=3, workers=1),
}
MODELS = ("transformer", "swa", "gsa", "nha")


def state_bytes(name: str, model_args: dict, task: dict) -> int:
    """Decoding-state bytes of a model after reading one prompt of the task's length (fp32)."""
    from nha.models import NHACache, NHAForCausalLM, preset_config  # noqa: PLC0415

    cfg = preset_config(name, "tiny", vocab_size=task["vocab_size"], **model_args)
    torch.manual_seed(0)
    model = NHAForCausalLM(cfg).eval()
    cache = NHACache(cfg.layer_windows)
    with torch.no_grad():
        model(torch.zeros(1, task["seq_len"], dtype=torch.long), past_key_values=cache, use_cache=True)
    return cache.memory_bytes()


def matched_layouts(setup: dict) -> dict[str, dict]:
    """Per model, its window/slot overrides: NHA's from the setup, SWA's and GSA's sized to fit NHA's state bytes."""
    base, task = setup["model"], setup["task"]
    layouts = {"transformer": {}, "nha": dict(setup["nha"])}
    budget = state_bytes("nha", {**base, **layouts["nha"]}, task)
    for name, key, other in (("swa", "window_size", {}), ("gsa", "num_slots", {})):
        best = 1
        for n in range(1, task["seq_len"] + 1):
            if state_bytes(name, {**base, key: n, **other}, task) > budget:
                break
            best = n
        layouts[name] = {key: best}
    return layouts


def _run_one(job: dict) -> dict:
    """One (model, seed) training run in this process, on one thread."""
    torch.set_num_threads(1)
    from nha.train.config import TrainConfig  # noqa: PLC0415
    from nha.train.loop import train  # noqa: PLC0415

    cfg = TrainConfig(model=job["model"], size="tiny", overrides=job["overrides"], task="mqar",
                      task_args=dict(job["task"]), seq_len=job["task"]["seq_len"], micro_batch_size=job["batch"],
                      steps=job["steps"], lr=job["lr"], warmup_steps=max(1, job["steps"] // 10), weight_decay=0.0,
                      eval_every=0, eval_batches=4, log_every=max(1, job["steps"] // 20), save_every=0,
                      keep_checkpoints=1, out_dir=job["out"], seed=job["seed"], progress=False, save_model=False,
                      device=job["device"])
    t0 = time.perf_counter()
    result = train(cfg)
    return {"model": job["model"], "seed": job["seed"], "accuracy": result.eval["eval_token_accuracy"],
            "row_accuracy": result.eval["eval_row_accuracy"], "parameters": result.parameters,
            "seconds": time.perf_counter() - t0}


def _mean_spread(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summarize(runs: list[dict], layouts: dict, bytes_: dict, setup: dict) -> str:
    task = setup["task"]
    gap = task["seq_len"] - (1 if task.get("pair_tokens") else 2) * task["num_pairs"] - task["num_queries"]
    kind = "one token per pair" if task.get("pair_tokens") else "two tokens per pair"
    lines = [f"MQAR ({kind}): {task['num_pairs']} pairs, {task['num_queries']} queries, vocab {task['vocab_size']}, "
             f"{task['seq_len']} tokens per row ({gap} filler tokens between the pairs and the first query); "
             f"{setup['steps']} steps x {setup['batch']} rows; accuracy = exact match per query on 512 held-out rows",
             "",
             "| model | layout per layer | parameters | decoding state (bytes) | accuracy (mean ± std) | per seed | "
             "train time (s, mean) |",
             "| --- | --- | ---: | ---: | ---: | --- | ---: |"]
    for name in MODELS:
        rs = [r for r in runs if r["model"] == name]
        if not rs:
            continue
        acc, spread = _mean_spread([r["accuracy"] for r in rs])
        lay = layouts[name]
        layout = {"transformer": "full attention", "swa": f"window {lay.get('window_size')}",
                  "gsa": f"{lay.get('num_slots')} slots",
                  "nha": f"window {lay.get('window_size')} + {lay.get('num_slots')} slots"}[name]
        grows = " (grows with length)" if name == "transformer" else ""
        seeds = ", ".join(f"{r['accuracy']:.3f}" for r in rs)
        lines.append(f"| {name} | {layout} | {rs[0]['parameters']:,} | {bytes_[name]:,}{grows} | {acc:.3f} ± "
                     f"{spread:.3f} | {seeds} | "
                     f"{statistics.fmean(r['seconds'] for r in rs):.0f} |")
    return "\n".join(lines)


def plot(runs: list[dict], bytes_: dict, path: Path, title: str) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    names = [n for n in MODELS if any(r["model"] == n for r in runs)]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for i, name in enumerate(names):
        accs = [r["accuracy"] for r in runs if r["model"] == name]
        mean, spread = _mean_spread(accs)
        ax1.bar(i, mean, yerr=spread, capsize=4, color=f"C{i}", alpha=0.7)
        ax1.scatter([i] * len(accs), accs, color="k", s=12, zorder=3)
        ax2.errorbar(bytes_[name], mean, yerr=spread, fmt="o", color=f"C{i}", capsize=4, label=name)
    ax1.set_xticks(range(len(names)), names)
    ax1.set_ylabel("MQAR accuracy (exact match per query)")
    ax1.set_ylim(0, 1.05)
    ax1.set_title("accuracy, mean ± std over seeds (dots: seeds)")
    ax2.set_xscale("log")
    ax2.set_xlabel("decoding state after one prompt (bytes, log)")
    ax2.set_ylim(0, 1.05)
    ax2.set_title("accuracy vs decoding state")
    ax2.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gpu", action="store_true", help="the larger version meant for a GPU (longer rows, more pairs)")
    p.add_argument("--seeds", type=int, help="seeds per model (default 3)")
    p.add_argument("--steps", type=int, help="training steps per run (default: the setup's)")
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS), help="which models to train")
    p.add_argument("--workers", type=int, help="runs at a time (default 2 on CPU: one per core)")
    p.add_argument("--out", default="nha-demo", help="folder for the table (.md), the runs (.json) and the plot (.png)")


def run(args: argparse.Namespace) -> int:
    name = "gpu" if args.gpu else "cpu"
    setup = dict(SETUPS[name])
    for key in ("seeds", "steps", "workers"):
        value = getattr(args, key)
        if value is not None:
            if value <= 0:
                raise ValueError(f"--{key} must be a positive int, got {value}")
            setup[key] = value
    device = "cuda" if args.gpu else "cpu"
    if args.gpu and not torch.cuda.is_available():
        raise ValueError("--gpu needs a CUDA device; without one run `nha demo` (the CPU version)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    layouts = matched_layouts(setup)
    bytes_ = {m: state_bytes(m, {**setup["model"], **layouts[m]}, setup["task"]) for m in MODELS}
    print(f"decoding-state budget {bytes_['nha']:,} bytes (NHA {layouts['nha']}); SWA {layouts['swa']}, "
          f"GSA {layouts['gsa']}; Transformer {bytes_['transformer']:,} bytes at {setup['task']['seq_len']} tokens")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nha-demo-") as tmp:
        jobs = [dict(model=m, overrides={**setup["model"], **layouts[m]}, task=setup["task"], steps=setup["steps"],
                     lr=setup["lr"], batch=setup["batch"], seed=s, device=device, out=os.path.join(tmp, f"{m}-{s}"))
                for s in range(setup["seeds"]) for m in args.models]
        # slowest first (NHA and GSA run the slot recurrence), so the last runs left for a core are short ones
        jobs.sort(key=lambda j: ("nha", "gsa", "swa", "transformer").index(j["model"]))
        from tqdm.auto import tqdm  # noqa: PLC0415

        runs = []
        workers = min(setup["workers"], len(jobs))
        # spawn: fresh interpreters, so no torch thread pool is forked; one thread each (see module docstring)
        with mp.get_context("spawn").Pool(workers) as pool, tqdm(total=len(jobs), desc="demo runs") as bar:
            for r in pool.imap_unordered(_run_one, jobs):
                runs.append(r)
                bar.update(1)
                bar.write(f"{r['model']:<12} seed {r['seed']}: accuracy {r['accuracy']:.3f} ({r['seconds']:.0f} s)")
    runs.sort(key=lambda r: (MODELS.index(r["model"]), r["seed"]))
    wall = time.perf_counter() - t0
    table = summarize(runs, layouts, bytes_, setup)
    threads = f"{workers} runs at a time, 1 thread each" if device == "cpu" else "one GPU"
    footer = f"\nTotal wall time {wall:.0f} s ({threads}, {os.cpu_count()} CPUs visible)."
    print("\n" + table + footer)
    (out / f"demo_{name}.md").write_text(table + footer + "\n")
    (out / f"demo_{name}.json").write_text(json.dumps({"setup": setup, "layouts": layouts, "state_bytes": bytes_,
                                                       "runs": runs, "wall_seconds": wall}, indent=2))
    png = out / f"demo_{name}.png"
    plot(runs, bytes_, png, f"MQAR, {setup['task']['num_pairs']} pairs, {setup['task']['seq_len']} tokens, "
                            f"{setup['seeds']} seeds ({name})")
    print(f"wrote {out / f'demo_{name}.md'}, {png}")
    return 0
