"""`nha train`: parse the command line into a `TrainConfig` and call `nha.train.loop.train`.

Examples:
    nha train                                            # tiny NHA-H on the embedded Shakespeare, bytes
    nha train --model nha --size tiny --set window_size=16 --data a.txt b.jsonl --tokenizer tokenizer.json
    nha train --task mqar --task-arg num_pairs=8 --seq-len 64
    torchrun --nproc_per_node=2 -m nha.cli train --fsdp   # DDP without --fsdp
"""
from __future__ import annotations

import argparse
import json

from nha.train.config import TrainConfig


def _key_values(items: list[str] | None, flag: str) -> dict:
    """`key=value` pairs; values are JSON where they parse (numbers, null, lists), else strings."""
    out = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} takes key=value, got {item!r}")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    m = p.add_argument_group("model")
    m.add_argument("--model", default=d.model, help="preset (transformer, swa, gsa, gsa-h, nha, nha-h) or the path "
                   f"of a config JSON / model folder (default {d.model})")
    m.add_argument("--size", default=d.size, help=f"preset size: tiny, 340m, 1.3b (default {d.size})")
    m.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field, e.g. "
                   "--set window_size=16 --set num_slots=32 (JSON values; null = None)")
    data = p.add_argument_group("data (default: the embedded Shakespeare, as bytes)")
    data.add_argument("--data", nargs="+", metavar="PATH", help=".txt / .jsonl files, folders of them, or a folder "
                      "saved by datasets.save_to_disk")
    data.add_argument("--text-field", default=d.text_field, help="JSONL / dataset field holding the text")
    data.add_argument("--tokenizer", default=d.tokenizer, help="'bytes', a tokenizer.json, or a pretrained folder")
    data.add_argument("--val-fraction", type=float, default=d.val_fraction, help="rows held out for eval loss")
    data.add_argument("--task", choices=["mqar", "haystack"], help="train on a synthetic recall task instead")
    data.add_argument("--task-arg", action="append", metavar="KEY=VALUE",
                      help="task parameter, e.g. vocab_size=64, num_pairs=8 (mqar), needle_len=4 (haystack)")
    data.add_argument("--seq-len", type=int, default=d.seq_len)
    o = p.add_argument_group("optimization")
    o.add_argument("--micro-batch-size", type=int, default=d.micro_batch_size, help="rows per micro-batch per rank")
    o.add_argument("--grad-accum", type=int, default=d.grad_accum, help="micro-batches per step per rank")
    o.add_argument("--steps", type=int, default=d.steps)
    o.add_argument("--lr", type=float, default=d.lr)
    o.add_argument("--min-lr-ratio", type=float, default=d.min_lr_ratio, help="cosine floor as a fraction of --lr")
    o.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    o.add_argument("--weight-decay", type=float, default=d.weight_decay)
    o.add_argument("--grad-clip", type=float, default=d.grad_clip, help="max gradient norm (0 = off)")
    o.add_argument("--seed", type=int, default=d.seed)
    r = p.add_argument_group("run")
    r.add_argument("--out", default=d.out_dir, help=f"output folder: log.jsonl, checkpoints/, model/ (default "
                   f"{d.out_dir})")
    r.add_argument("--resume", metavar="PATH|auto", help="continue from a checkpoint; 'auto' = the newest in --out "
                   "if there is one")
    r.add_argument("--stop-after", type=int, help="stop (with a checkpoint) after this many steps of this call")
    r.add_argument("--eval-every", type=int, default=d.eval_every)
    r.add_argument("--eval-batches", type=int, default=d.eval_batches)
    r.add_argument("--log-every", type=int, default=d.log_every)
    r.add_argument("--save-every", type=int, default=d.save_every)
    r.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints)
    r.add_argument("--fsdp", action="store_true", help="under torchrun: shard with FSDP2 (fully_shard) instead of DDP")
    r.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    r.add_argument("--no-progress", action="store_true",
                   help="no progress bar and no printed eval lines (log.jsonl has everything)")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        model=args.model, size=args.size, overrides=_key_values(args.set, "--set"), data=args.data,
        text_field=args.text_field, tokenizer=args.tokenizer, val_fraction=args.val_fraction, task=args.task,
        task_args=_key_values(args.task_arg, "--task-arg"), seq_len=args.seq_len,
        micro_batch_size=args.micro_batch_size, grad_accum=args.grad_accum, steps=args.steps, lr=args.lr,
        min_lr_ratio=args.min_lr_ratio, warmup_steps=args.warmup_steps, weight_decay=args.weight_decay,
        grad_clip=args.grad_clip, seed=args.seed, out_dir=args.out, resume=args.resume, stop_after=args.stop_after,
        eval_every=args.eval_every, eval_batches=args.eval_batches, log_every=args.log_every,
        save_every=args.save_every, keep_checkpoints=args.keep_checkpoints, fsdp=args.fsdp, device=args.device,
        progress=not args.no_progress,
    )


def run(args: argparse.Namespace) -> int:
    from nha.train.loop import train  # noqa: PLC0415  (keeps `nha --help` fast)

    cfg = config_from_args(args)
    result = train(cfg)
    summary = {"steps": result.steps, "final_loss": result.final_loss, **result.eval, "parameters": result.parameters,
               "seconds": round(result.seconds, 1), "out": result.out_dir}
    if result.rank == 0:
        print(json.dumps(summary))
    return 0
