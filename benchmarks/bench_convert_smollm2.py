"""SmolLM2-135M-Instruct -> NHA hybrid on CPU: held-out Shakespeare perplexity of the source, of the hybrid right
after conversion and after short CPU fine-tunes; a passkey probe; decoding speed and cache memory at growing context.

Every phase appends its numbers to `results/convert_smollm2.json` as soon as it ends (a long run keeps what it
measured), and the markdown table `results/convert_smollm2.md` is rewritten from it.

    python benchmarks/bench_convert_smollm2.py                        # ~20 minutes on 2 shared cores
    python benchmarks/bench_convert_smollm2.py --phases ppl speed     # a subset
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from nha.convert import convert_model, load_source, save_model
from nha.convert.evaluate import decode_speed, heldout_loss, passkey_accuracy
from nha.convert.finetune import FinetuneConfig, finetune
from nha.data.sources import TextSource
from nha.models import NHAForCausalLM

RESULTS = Path(__file__).parent / "results"
LAYOUT = dict(window_size=64, num_slots=64, full_attention_layers=[7, 15, 23, 29])


def save(results: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "convert_smollm2.json").write_text(json.dumps(results, indent=2))
    (RESULTS / "convert_smollm2.md").write_text(markdown(results))


def markdown(r: dict) -> str:
    m = r["meta"]
    lines = ["# SmolLM2-135M-Instruct -> NHA (CPU)", "",
             f"Hybrid: window {LAYOUT['window_size']}, {LAYOUT['num_slots']} slots, full attention in layers "
             f"{LAYOUT['full_attention_layers']} (4 of 30). Machine: {m['machine']}, torch {m['torch']}, "
             f"{m['threads']} threads; the machine was shared with other jobs, so timings are indicative.", ""]
    if "ppl" in r:
        lines += ["## Held-out Shakespeare perplexity", "",
                  f"{r['ppl_setup']}", "", "| model | loss (nats/token) | perplexity | fine-tune time |",
                  "| --- | --- | --- | --- |"]
        for name, v in r["ppl"].items():
            lines.append(f"| {name} | {v['loss']:.4f} | {v['ppl']:.2f} | {v.get('seconds', '')} |")
        lines.append("")
    if "passkey" in r:
        lines += ["## Passkey retrieval (whole 5-digit key, greedy)", "", "| model | context | accuracy |",
                  "| --- | --- | --- |"]
        for row in r["passkey"]:
            lines.append(f"| {row['model']} | {row['context']} | {row['accuracy']:.2f} ({row['n']} prompts) |")
        lines.append("")
    if "speed" in r:
        lines += ["## Decoding speed and cache memory (batch 1, float32, 32 greedy tokens after the context)", "",
                  "| model | context | prefill s | decode tokens/s | cache MiB |", "| --- | --- | --- | --- | --- |"]
        for row in r["speed"]:
            lines.append(f"| {row['model']} | {row['context']} | {row['prefill_s']:.1f} | {row['decode_tok_s']:.1f} | "
                         f"{row['cache_mib']:.1f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--phases", nargs="+", default=["ppl", "passkey", "speed"], choices=["ppl", "passkey", "speed"])
    p.add_argument("--eval-batches", type=int, default=8, help="held-out rows of 512 tokens")
    p.add_argument("--ft-steps", type=int, default=40, help="next-token steps of the paper-recipe fine-tune")
    p.add_argument("--distill-steps", type=int, default=60, help="0 = skip the attention-transfer run")
    p.add_argument("--distill-ft-steps", type=int, default=20, help="next-token steps after attention transfer")
    p.add_argument("--contexts", nargs="+", type=int, default=[1024, 8192])
    p.add_argument("--passkey-lengths", nargs="+", type=int, default=[1024])
    p.add_argument("--passkey-n", type=int, default=10)
    args = p.parse_args()
    path = RESULTS / "convert_smollm2.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results["meta"] = {"machine": f"{platform.machine()} CPU, {os.cpu_count()} cores", "torch": torch.__version__,
                       "threads": torch.get_num_threads()}
    source, tok = load_source("smollm2")
    hybrid, report = convert_model(source, **LAYOUT)
    print(report.summary().splitlines()[0], flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench-convert-"))
    hybrid_dir = save_model(hybrid, tok, work / "hybrid")
    models = {"source (SmolLM2-135M-Instruct)": source, "NHA hybrid, converted": hybrid}

    if "speed" in args.phases:
        results["speed"] = []
        for context in args.contexts:
            for name in ("source (SmolLM2-135M-Instruct)", "NHA hybrid, converted"):
                row = {"model": name, **decode_speed(models[name], context=context)}
                results["speed"].append(row)
                print(row, flush=True)
                save(results)
    if "ppl" in args.phases:
        common = dict(seq_len=512, micro_batch_size=1, eval_batches=args.eval_batches, progress=False, log_every=5)
        data = TextSource(None, tokenizer=str(hybrid_dir), seq_len=512, micro_batch_size=1, seed=0)
        results["ppl_setup"] = (f"Shakespeare (shksprdata), SmolLM2 tokenizer, rows of 512 tokens; the last 5% of "
                                f"rows ({data.n_val}) are held out and {args.eval_batches} of them "
                                f"({args.eval_batches * 512} tokens) scored; fine-tunes read only the other "
                                f"{data.n_train} rows, batch 1 x 512 tokens per step.")
        results.setdefault("ppl", {})
        for name, model in models.items():
            if name in results["ppl"]:  # measured by an earlier (interrupted) run with the same settings
                continue
            t0 = time.perf_counter()
            results["ppl"][name] = heldout_loss(model, data, args.eval_batches)
            print(name, results["ppl"][name], f"{time.perf_counter() - t0:.0f} s", flush=True)
            save(results)
        runs = {
            f"NHA hybrid + paper recipe ({args.ft_steps} steps, lr 3e-5)": dict(recipe="next-token",
                                                                                steps=args.ft_steps),
            f"NHA hybrid + attention transfer ({args.distill_steps} steps, lr 1e-4) + {args.distill_ft_steps} "
            "next-token steps": dict(recipe="distill", distill_steps=args.distill_steps, steps=args.distill_ft_steps),
        }
        if args.distill_steps == 0:
            runs = dict(list(runs.items())[:1])
        for i, (name, kw) in enumerate(runs.items()):
            if name in results["ppl"]:
                continue
            t0 = time.perf_counter()
            summary = finetune(FinetuneConfig(model=str(hybrid_dir), out_dir=str(work / f"ft{i}"), **common, **kw))
            seconds = time.perf_counter() - t0
            results["ppl"][name] = {**summary["after"], "seconds": f"{seconds:.0f} s"}
            if "after_distill" in summary:
                results["ppl"][name + " (after transfer only)"] = summary["after_distill"]
            print(name, summary["after"], f"{seconds:.0f} s", flush=True)
            models[name] = NHAForCausalLM.from_pretrained(summary["out"]).eval()
            save(results)

    if "passkey" in args.phases:
        results["passkey"] = []
        for name, model in models.items():
            for length in args.passkey_lengths:
                acc = passkey_accuracy(model, tok, length=length, num_examples=args.passkey_n)
                results["passkey"].append({"model": name, "context": length, "accuracy": acc, "n": args.passkey_n})
                print("passkey", name, length, acc, flush=True)
                save(results)

    save(results)
    print(markdown(results))


if __name__ == "__main__":
    main()
