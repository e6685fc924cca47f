"""`nha finetune`: fine-tune a converted NHA folder with the paper's recipe, or attention transfer first.

Examples:
    nha finetune runs/smollm2-nha --out runs/smollm2-ft --steps 200               # next-token, lr 3e-5, MLPs frozen
    nha finetune runs/smollm2-nha --out runs/smollm2-at --recipe distill --distill-steps 200 --steps 50
    torchrun --nproc_per_node=2 -m nha.cli finetune runs/smollm2-nha --out runs/ft   # DDP
"""
from __future__ import annotations

import argparse
import json

from nha.convert.finetune import RECIPES, FinetuneConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = FinetuneConfig(model="")
    p.add_argument("model", help="a converted NHA model folder (from `nha convert`)")
    p.add_argument("--out", default=d.out_dir, help=f"output folder; the model goes to OUT/model (default {d.out_dir})")
    p.add_argument("--recipe", choices=RECIPES, default=d.recipe, help="next-token: the paper's recipe; distill: "
                   "attention transfer from the source (the model at window_size=None), then next-token")
    p.add_argument("--steps", type=int, default=d.steps, help=f"next-token steps (default {d.steps})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"next-token learning rate (default {d.lr}, the paper's)")
    p.add_argument("--distill-steps", type=int, default=d.distill_steps, help="attention-transfer steps (distill)")
    p.add_argument("--distill-lr", type=float, default=d.distill_lr, help="attention-transfer learning rate")
    p.add_argument("--freeze-full-attention", action="store_true", help="next-token stage: train only the NHA "
                   "layers' attention, not the full-attention layers'")
    p.add_argument("--data", nargs="+", metavar="PATH", help=".txt / .jsonl files or folders (default: the embedded "
                   "Shakespeare)")
    p.add_argument("--text-field", default=d.text_field)
    p.add_argument("--tokenizer", help="default: the model folder's tokenizer")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction, help="rows held out for the eval loss")
    p.add_argument("--seq-len", type=int, default=d.seq_len)
    p.add_argument("--micro-batch-size", type=int, default=d.micro_batch_size)
    p.add_argument("--grad-accum", type=int, default=d.grad_accum)
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--grad-clip", type=float, default=d.grad_clip)
    p.add_argument("--eval-batches", type=int, default=d.eval_batches)
    p.add_argument("--log-every", type=int, default=d.log_every)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--bf16", action="store_true", help="forward passes under bf16 autocast (weights, gradients and "
                   "AdamW stay float32)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT/model if it exists")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from nha.convert.finetune import finetune  # noqa: PLC0415
    from nha.train.distributed import launch_rank  # noqa: PLC0415

    cfg = FinetuneConfig(
        model=args.model, out_dir=args.out, recipe=args.recipe, steps=args.steps, lr=args.lr,
        distill_steps=args.distill_steps, distill_lr=args.distill_lr,
        train_full_attention=not args.freeze_full_attention,
        data=args.data, text_field=args.text_field, tokenizer=args.tokenizer, val_fraction=args.val_fraction,
        seq_len=args.seq_len, micro_batch_size=args.micro_batch_size, grad_accum=args.grad_accum,
        warmup_steps=args.warmup_steps, weight_decay=args.weight_decay, grad_clip=args.grad_clip,
        eval_batches=args.eval_batches, log_every=args.log_every, seed=args.seed, device=args.device,
        bf16=args.bf16,
        overwrite=args.overwrite, progress=not args.no_progress)
    summary = finetune(cfg)
    if launch_rank() == 0:  # under torchrun, one summary
        print(json.dumps(summary, default=str))
    return 0
