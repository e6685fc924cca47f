"""Fine-tuning a converted NHA model: the paper's recipe and an attention-transfer option.

- `next-token` (the paper's recipe): MLPs, embeddings and norms frozen; the attention of every layer (q/k/v/o,
  q/k norms, slot gates) trained on next-token loss, lr 3e-5.
- `distill` (attention transfer, as LoLCATs does for linearized attention): first train each NHA layer's
  attention to reproduce the source model's attention output at that layer, layer by layer (normalised MSE, inputs
  taken from the source's own forward, so layers train independently and no logits are needed); then a short
  next-token stage as above. The source is the model itself with every layer at `window_size=None`, which is
  exactly the pretrained model (tests/convert), so no second checkpoint is needed.

Both stages run on the training loop of `nha train` (`nha.train.loop.run_steps`, the loss passed in as a function):
its AdamW groups, warm-up + cosine schedule, gradient accumulation with DDP sync, clipping, JSONL records and bf16
rule, under `nha.train.distributed`, so it runs under `torchrun` with DDP; `nha.data.TextSource` gives packed,
held-out text. What differs from `nha train`: the model comes from pretrained weights with MLPs frozen, not from a
config, and there are no mid-run checkpoints: a run is minutes to hours and writes its model once, atomically, at
the end.

Mixed precision: `bf16=True` runs every forward pass under bf16 autocast (weights, gradients and AdamW float32), one
context per forward, the cast cache dropped after every optimizer step (`nha.train.loop`); without the drop, a
caller's context around the whole run kept the first step's casts (a GPU report: perplexity 218 -> 1925).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from nha.convert.evaluate import heldout_loss
from nha.data.sources import TextSource
from nha.models import NHAConfig, NHAForCausalLM
from nha.train.config import TrainConfig
from nha.train.distributed import distributed, wrap_model
from nha.train.loop import bf16_autocast, inputs, lr_lambda, make_optimizer, next_token_loss, run_steps

RECIPES = ("next-token", "distill")


@dataclass(kw_only=True)
class FinetuneConfig:
    """A fine-tuning run of a converted model folder `model` into `out_dir/model`.

    `steps` next-token steps (lr `lr`), preceded for `recipe="distill"` by `distill_steps` attention-transfer steps
    (lr `distill_lr`). Data: `data` paths (None = the embedded Shakespeare), tokenized with the model folder's
    tokenizer unless `tokenizer` is given; the last `val_fraction` of the rows is held out for `eval_loss`.
    `bf16`: forward passes (training and the held-out evals) under bf16 autocast; weights and AdamW stay float32.
    """

    model: str
    out_dir: str = "runs/finetune"
    recipe: str = "next-token"
    steps: int = 100
    lr: float = 3e-5
    distill_steps: int = 100
    distill_lr: float = 1e-4
    train_full_attention: bool = True
    data: Optional[list] = None
    text_field: str = "text"
    tokenizer: Optional[str] = None
    val_fraction: float = 0.05
    seq_len: int = 512
    micro_batch_size: int = 1
    grad_accum: int = 1
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    eval_batches: int = 8
    log_every: int = 10
    seed: int = 0
    device: Optional[str] = None
    bf16: bool = False
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self):
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {', '.join(RECIPES)}, got {self.recipe!r}")
        if self.recipe == "distill" and (not isinstance(self.distill_steps, int) or self.distill_steps <= 0):
            raise ValueError(f"the distill recipe needs distill_steps > 0, got {self.distill_steps!r}")
        if not self.distill_lr > 0:
            raise ValueError(f"distill_lr must be > 0, got {self.distill_lr}")
        self.stage_config("next-token")  # TrainConfig validates the shared knobs once, here

    def stage_config(self, stage: str) -> TrainConfig:
        """The training loop's config for one stage (its schedule, optimizer groups and validation)."""
        steps, lr = (self.distill_steps, self.distill_lr) if stage == "distill" else (self.steps, self.lr)
        return TrainConfig(data=self.data, seq_len=self.seq_len, micro_batch_size=self.micro_batch_size,
                           grad_accum=self.grad_accum, steps=steps, lr=lr, warmup_steps=min(self.warmup_steps, steps),
                           min_lr_ratio=self.min_lr_ratio, weight_decay=self.weight_decay, grad_clip=self.grad_clip,
                           eval_batches=self.eval_batches, log_every=self.log_every, seed=self.seed,
                           val_fraction=self.val_fraction, out_dir=self.out_dir, device=self.device,
                           progress=self.progress)


def full_attention_twin(model: NHAForCausalLM) -> NHAForCausalLM:
    """The same weights with every layer at `window_size=None`: the pretrained source, frozen (the teacher)."""
    config = NHAConfig(**{**model.config.to_dict(), "window_size": None, "num_slots": 0})
    teacher = NHAForCausalLM(config).to(next(model.parameters()).device, next(model.parameters()).dtype)
    state = {k: v for k, v in model.state_dict().items() if ".f_proj." not in k}
    teacher.load_state_dict(state, strict=True)
    return teacher.eval().requires_grad_(False)


class AttentionTransfer(nn.Module):
    """Loss module of the distillation stage: mean over NHA layers of `||attn_i(x_i) - y_i||^2 / ||y_i||^2`, where
    `x_i` / `y_i` are the teacher's attention input / output at layer i (the student's attention, teacher's inputs).
    One module, so DDP sees every trainable parameter inside one forward."""

    def __init__(self, student: NHAForCausalLM, teacher: NHAForCausalLM):
        super().__init__()
        self.student, self.teacher = student, teacher
        self.layers = [i for i, w in enumerate(student.config.layer_windows) if w is not None]
        if not self.layers:
            raise ValueError("the model has no NHA layer (every layer is full attention): nothing to distill")

    def forward(self, input_ids, position_ids, cu_seqlens) -> torch.Tensor:
        captured = {}

        def hook(i):
            def fn(module, args, kwargs, output):
                captured[i] = (args[0] if args else kwargs["hidden_states"], kwargs.get("position_embeddings"),
                               output[0])
            return fn

        handles = [self.teacher.model.layers[i].self_attn.register_forward_hook(hook(i), with_kwargs=True)
                   for i in self.layers]
        try:
            with torch.no_grad():
                self.teacher.model(input_ids, position_ids=position_ids, cu_seqlens=cu_seqlens, use_cache=False)
        finally:
            for h in handles:
                h.remove()
        losses = []
        for i in self.layers:
            x, pos_emb, y = captured[i]
            out = self.student.model.layers[i].self_attn(x, position_embeddings=pos_emb, cu_seqlens=cu_seqlens)[0]
            losses.append(F.mse_loss(out.float(), y.float()) / y.float().pow(2).mean().clamp_min(1e-12))
        return torch.stack(losses).mean()


def set_trainable(model: NHAForCausalLM, stage: str, train_full_attention: bool = True) -> list[str]:
    """Freeze everything but attention: every layer's for `next-token` (full layers optional), NHA layers' only for
    `distill` (full layers already equal the teacher). Returns the trainable parameter names."""
    model.requires_grad_(False)
    for layer in model.model.layers:
        attn = layer.self_attn
        if attn.window_size is not None or (stage == "next-token" and train_full_attention):
            attn.requires_grad_(True)
            # a full-attention layer's gate is never read: no gradient would reach it
            if attn.window_size is None and attn.f_proj is not None:
                attn.f_proj.requires_grad_(False)
    return [n for n, p in model.named_parameters() if p.requires_grad]


def _transfer_loss(module: AttentionTransfer, batch: dict, device: torch.device) -> tuple[torch.Tensor, int]:
    """The distillation loss of one micro-batch for `run_steps`: a mean already, so it counts once."""
    return module(**inputs(batch, device)), 1


def _run_stage(stage: str, model: NHAForCausalLM, source: TextSource, cfg: FinetuneConfig, d, log, teacher=None):
    tcfg = cfg.stage_config(stage)
    trainable = set_trainable(model, stage, cfg.train_full_attention)
    module = AttentionTransfer(model, teacher) if stage == "distill" else model
    wrapped = wrap_model(module, d, fsdp=False)
    optimizer = make_optimizer(wrapped, tcfg, skip=set())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(tcfg))
    t_start = time.perf_counter()
    run_steps(wrapped, optimizer, scheduler, source, _transfer_loss if stage == "distill" else next_token_loss, tcfg,
              d, lambda record: log({"stage": stage, **record}), bf16=cfg.bf16, desc=stage)
    model.requires_grad_(False)
    return {"trainable_parameters": sum(p.numel() for n, p in model.named_parameters() if n in trainable),
            "seconds": time.perf_counter() - t_start}


def finetune(cfg: FinetuneConfig) -> dict:
    """Run the recipe; returns a summary with held-out loss / perplexity before and after (and between stages)."""
    with distributed(cfg.device) as d:
        return _finetune(cfg, d)


def _finetune(cfg: FinetuneConfig, d) -> dict:
    from transformers import AutoTokenizer  # noqa: PLC0415

    from nha.convert.convert import save_model  # noqa: PLC0415

    folder = Path(cfg.model)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not a saved model folder (no config.json): convert one first with "
                                "`nha convert`")
    out = Path(cfg.out_dir)
    if (out / "model").exists() and not cfg.overwrite:
        raise ValueError(f"{out / 'model'} already exists: choose another --out or pass --overwrite")
    model = NHAForCausalLM.from_pretrained(str(folder), dtype=torch.float32).to(d.device)
    if model.config.model_type != "nha":
        raise ValueError(f"{folder} holds a {model.config.model_type!r} model, not an NHA one: convert it first")
    tokenizer_spec = cfg.tokenizer or str(folder)
    tokenizer = None
    if cfg.tokenizer in (None, str(folder)):
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder))
        except (OSError, ValueError, TypeError):
            raise ValueError(f"{folder} has no tokenizer: pass --tokenizer (a tokenizer.json, a folder, or "
                             "'bytes')") from None
    source = TextSource(cfg.data, tokenizer=tokenizer_spec, seq_len=cfg.seq_len, micro_batch_size=cfg.micro_batch_size,
                        micro_batches=cfg.grad_accum * d.world_size, seed=cfg.seed, val_fraction=cfg.val_fraction,
                        text_field=cfg.text_field)
    if source.vocab_size > model.config.vocab_size:
        raise ValueError(f"the tokenizer has {source.vocab_size} ids but the model's vocabulary is "
                         f"{model.config.vocab_size}")
    records = []

    def log(record: dict) -> None:
        records.append(record)
        if cfg.progress and d.is_main and "eval" in record.get("stage", ""):
            print(json.dumps(record))

    def evaluate() -> dict:
        with bf16_autocast(d.device, cfg.bf16):
            return heldout_loss(model, source, cfg.eval_batches)

    torch.manual_seed(cfg.seed)
    summary = {"model": str(folder), "recipe": cfg.recipe, "data": source.description,
               "train_rows": source.n_train, "heldout_rows": source.n_val}
    before = evaluate()
    log({"stage": "eval-before", **before})
    summary["before"] = before
    if cfg.recipe == "distill":
        teacher = full_attention_twin(model)
        summary["distill"] = _run_stage("distill", model, source, cfg, d, log, teacher=teacher)
        del teacher
        summary["after_distill"] = evaluate()
        log({"stage": "eval-after-distill", **summary["after_distill"]})
    summary["next_token"] = _run_stage("next-token", model, source, cfg, d, log)
    summary["after"] = evaluate()
    log({"stage": "eval-after", **summary["after"]})
    if d.is_main:
        log_text = "".join(json.dumps(r) + "\n" for r in records)
        save_model(model.cpu(), tokenizer, out / "model", overwrite=cfg.overwrite,
                   extra_files={"finetune_log.jsonl": log_text, "finetune_summary.json": json.dumps(summary, indent=2)})
        summary["out"] = str(out / "model")
    if d.world_size > 1:
        torch.distributed.barrier()
    return summary


__all__ = ["RECIPES", "AttentionTransfer", "FinetuneConfig", "finetune", "full_attention_twin", "set_trainable"]
