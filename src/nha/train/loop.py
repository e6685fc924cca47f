"""The training loop: model and data from a `TrainConfig`, AdamW with warm-up + cosine, accumulation, clipping,
held-out evaluation, a JSONL log and atomic checkpoints that resume bit for bit (on CPU).

`run_steps` is the step loop itself, with the loss passed in as a function; `nha train` (`train`) and both stages of
`nha finetune` (`nha.convert.finetune`) run on it. The loss of a step is the sum of the loss function over the whole
global batch divided by the global count it reports (for `next_token_loss`, the mean token cross-entropy), so
1 process x 2 accumulation steps and 2 processes x 1 give the same gradient up to summation order.

bf16: one autocast context per forward pass, and autocast's cast cache dropped after every optimizer step. Autocast
keeps its half-precision copy of every trainable weight until the outermost autocast context exits, so under a
caller's context around the whole run every forward would otherwise read the weights of the first step.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from nha.data.sources import TaskSource, TextSource
from nha.data.synthetic import IGNORE, exact_match
from nha.models import PRESETS, NHAConfig, NHAForCausalLM, preset_config
from nha.train.checkpoint import load_checkpoint, resolve_checkpoint, save_checkpoint
from nha.train.config import TrainConfig
from nha.train.distributed import (distributed, no_grad_sync, parameters_without_gradient, unwrap,
                                   wrap_model)


@dataclass
class TrainResult:
    steps: int
    final_loss: float
    eval: dict = field(default_factory=dict)
    parameters: int = 0
    seconds: float = 0.0
    out_dir: str = ""
    rank: int = 0


def build_model_config(cfg: TrainConfig, data_vocab: int) -> NHAConfig:
    """The model's config: a preset (vocab follows the data unless overridden) or a JSON file / model folder."""
    if cfg.model in PRESETS:
        overrides = {"vocab_size": data_vocab, **cfg.overrides}
        config = preset_config(cfg.model, cfg.size, **overrides)
    else:
        path = Path(cfg.model)
        if not path.exists():
            raise FileNotFoundError(f"model {cfg.model!r} is neither a preset ({', '.join(PRESETS)}) nor an existing "
                                    "config JSON file or model folder")
        config = NHAConfig.from_json_file(str(path)) if path.is_file() else NHAConfig.from_pretrained(str(path))
        for key, value in cfg.overrides.items():
            setattr(config, key, value)
        config = NHAConfig(**config.to_dict())  # re-validate after the overrides
    if config.vocab_size < data_vocab:
        raise ValueError(f"the model's vocab_size {config.vocab_size} is smaller than the data's vocabulary "
                         f"({data_vocab} ids)")
    return config


def build_source(cfg: TrainConfig, micro_batches: int):
    if cfg.task is not None:
        args = {"seq_len": cfg.seq_len, **cfg.task_args}
        return TaskSource(cfg.task, micro_batch_size=cfg.micro_batch_size, micro_batches=micro_batches,
                          seed=cfg.seed, **args)
    return TextSource(cfg.data, tokenizer=cfg.tokenizer, seq_len=cfg.seq_len, micro_batch_size=cfg.micro_batch_size,
                      micro_batches=micro_batches, seed=cfg.seed, val_fraction=cfg.val_fraction,
                      text_field=cfg.text_field)


def lr_lambda(cfg: TrainConfig):
    """Linear warm-up to `lr`, then cosine decay to `min_lr_ratio * lr` at the last step."""
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        span = max(1, cfg.steps - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return f


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, skip: set[str]) -> torch.optim.AdamW:
    """AdamW; no weight decay on vectors (norms, biases). Parameters no forward reaches (`skip`) are left out, so
    they stay as initialised in every run layout instead of decaying where DDP hands them zero gradients."""
    decay, no_decay = [], []
    for name, p in unwrap(model).named_parameters():
        if p.requires_grad and name not in skip:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # foreach=False: the same per-parameter kernels whatever the layout, part of what keeps resume bitwise
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), foreach=False)


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    np_state = np.random.get_state()
    state["numpy"] = (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:])
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy(), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def bf16_autocast(device: torch.device, enabled: bool):
    """bf16 autocast for one forward pass when `enabled`; else nothing, so a caller's own autocast context applies."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def inputs(batch: dict, device: torch.device) -> dict:
    """A batch's model inputs (everything but `targets`) on `device`; `cu_seqlens` stays where it is (the model reads
    the document offsets on the host: a CPU tensor costs no GPU sync)."""
    return {k: v if k == "cu_seqlens" else v.to(device, non_blocking=True) for k, v in batch.items() if k != "targets"}


def next_token_loss(model, batch: dict, device: torch.device) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over the scored targets of one micro-batch, and their count."""
    count = int((batch["targets"] != IGNORE).sum())  # counted where the batch was made (a CPU batch: no GPU sync)
    targets = batch["targets"].to(device, non_blocking=True)
    logits = model(**inputs(batch, device), use_cache=False).logits
    loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction="sum")
    return loss, count


class _Log:
    """JSONL records on the main rank; on resume, records past the checkpoint's step are dropped."""

    def __init__(self, path: Path, enabled: bool, resume_step: int | None):
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            path.write_text("")
        elif path.exists():
            kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= resume_step]
            path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


def evaluate(model, source, cfg: TrainConfig, d, bf16: bool) -> dict:
    """Held-out loss over `eval_batches` micro-batches shared among ranks; exact match for synthetic tasks."""
    model.eval()
    total = count = 0.0
    per_rank = math.ceil(cfg.eval_batches / d.world_size)  # every rank runs as many forwards (FSDP needs it)
    with torch.no_grad(), bf16_autocast(d.device, bf16):
        for i in range(per_rank):
            loss, n = next_token_loss(model, source.eval_batch(d.rank + d.world_size * i), d.device)
            total, count = total + float(loss), count + n
        total, count = d.all_reduce_sum([total, count])
        out = {"eval_loss": total / max(count, 1)}
        if isinstance(source, TaskSource):
            score = exact_match(unwrap(model), source.eval_set, batch_size=cfg.micro_batch_size * 4)
            out.update(eval_token_accuracy=score.token_accuracy, eval_row_accuracy=score.row_accuracy)
    model.train()
    return out


def run_steps(model, optimizer, scheduler, source, loss_fn, cfg: TrainConfig, d, log, *, bf16: bool,
              start: int = 0, stop: int | None = None, desc: str = "train", evaluate=None, save=None
              ) -> tuple[float, dict]:
    """Optimizer steps `start` .. `stop` (default `cfg.steps`) of a run of `cfg.steps` steps; returns the last step's
    loss and the last `evaluate()` result.

    `model` is wrapped (`wrap_model`); every rank calls this. Each step reads this rank's `cfg.grad_accum`
    micro-batches `source.batch(step, j)`; `loss_fn(model, batch, device)` returns a micro-batch's summed loss and
    its count (`next_token_loss`: scored tokens; a per-micro-batch mean counts 1), and the step descends on the
    global sum over the global count. `log(record)` gets a record every `cfg.log_every` steps and at the last;
    `evaluate() -> dict` runs every `cfg.eval_every` steps and at the last, its result logged too; `save(step)` every
    `cfg.save_every` steps and at `stop`. `bf16`: forward passes under bf16 autocast (see the module docstring).
    """
    from tqdm.auto import tqdm  # noqa: PLC0415

    stop = cfg.steps if stop is None else stop
    show = cfg.progress and d.is_main
    bar = tqdm(total=cfg.steps, initial=start, disable=not show, desc=desc, dynamic_ncols=True)
    mine = list(range(d.rank, cfg.grad_accum * d.world_size, d.world_size))  # this rank's micro-batches of a step
    model.train()
    torch.clear_autocast_cache()  # casts made before the run (an eval under a caller's autocast) are not reused
    t_start, loss_value, eval_out = time.perf_counter(), float("nan"), {}
    for step in range(start, stop):
        t0 = time.perf_counter()
        batches = [source.batch(step, j) for j in mine]
        loss_sum, count = 0.0, 0
        for i, batch in enumerate(batches):
            with no_grad_sync(model, sync=i == len(batches) - 1):
                with bf16_autocast(d.device, bf16):
                    loss, n = loss_fn(model, batch, d.device)
                loss.backward()
            loss_sum, count = loss_sum + loss.detach().double(), count + n  # on the device: read once per step
        tokens = sum(b["input_ids"].numel() for b in batches)
        loss_sum, count, tokens = d.all_reduce_sum([float(loss_sum), count, tokens])
        # DDP/FSDP averaged the summed gradients over ranks: times world_size / global count gives the global mean's
        scale = d.world_size / max(count, 1)
        for p in model.parameters():
            if p.grad is not None:
                p.grad.mul_(scale)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)) if cfg.grad_clip > 0 \
            else float("nan")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.clear_autocast_cache()  # the next forward casts the weights this step wrote
        lr = scheduler.get_last_lr()[0]
        scheduler.step()
        loss_value = loss_sum / max(count, 1)
        done = step + 1
        dt = time.perf_counter() - t0
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.4f}", tok_s=f"{tokens / dt:,.0f}")
        if done % cfg.log_every == 0 or done == cfg.steps:
            record = {"step": done, "loss": loss_value, "lr": lr, "grad_norm": grad_norm, "tokens": int(tokens),
                      "tokens_per_s": tokens / dt, "elapsed_s": time.perf_counter() - t_start}
            if d.device.type == "cuda":  # this rank's peak since the start, for memory comparisons between models
                record["peak_mem_gib"] = torch.cuda.max_memory_allocated(d.device) / 2**30
            log(record)
        if evaluate is not None and ((cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.steps):
            eval_out = evaluate()
            log({"step": done, **eval_out})
            if show:
                bar.write(f"step {done}: " + ", ".join(f"{k} {v:.4f}" for k, v in eval_out.items()))
        if save is not None and ((cfg.save_every and done % cfg.save_every == 0) or done == stop):
            save(done)
    bar.close()
    return loss_value, eval_out


def train(cfg: TrainConfig) -> TrainResult:
    """Run (or resume) training as `cfg` says; under torchrun, every process calls this."""
    with distributed(cfg.device) as d:
        return _train(cfg, d)


def _train(cfg: TrainConfig, d) -> TrainResult:
    out = Path(cfg.out_dir)
    ckpt_root = out / "checkpoints"
    state = None
    if cfg.resume is not None:
        if cfg.resume == "auto":
            try:
                state = load_checkpoint(resolve_checkpoint(ckpt_root))
            except FileNotFoundError:
                state = None  # nothing saved yet: start fresh
        else:
            state = load_checkpoint(cfg.resume)
    elif (ckpt_root / "latest").exists():
        raise ValueError(f"{out} already holds checkpoints of a run: pass --resume auto to continue it, or choose "
                         "another --out")

    micro_batches = cfg.grad_accum * d.world_size
    source = build_source(cfg, micro_batches)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    if state is not None:
        config = NHAConfig(**state["model_config"])
    else:
        config = build_model_config(cfg, source.vocab_size)
    model = NHAForCausalLM(config).to(d.device)
    n_params = sum(p.numel() for p in model.parameters())
    skip = set(parameters_without_gradient(model))
    model = wrap_model(model, d, fsdp=cfg.fsdp)
    optimizer = make_optimizer(model, cfg, skip)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    start_step = 0
    if state is not None:
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                       options=StateDictOptions(full_state_dict=True))
        scheduler.load_state_dict(state["scheduler"])
        start_step = state["step"]
        _set_rng_state(state["rng"][d.rank] if d.rank < len(state["rng"]) else state["rng"][0])
    if start_step >= cfg.steps:
        raise ValueError(f"the checkpoint is at step {start_step}, and --steps is {cfg.steps}: nothing left to do")
    bf16 = d.device.type == "cuda"
    log = _Log(out / "log.jsonl", d.is_main, start_step if state is not None else None)
    if d.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2))

    def checkpoint(step: int) -> None:
        model_sd, optim_sd = get_state_dict(model, optimizer,
                                            options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        rng = [_rng_state()]
        if d.world_size > 1:
            # gathered as torch.save bytes: all_gather_object cannot unpickle tensors held in nested containers
            buf, blobs = io.BytesIO(), [None] * d.world_size
            torch.save(rng[0], buf)
            torch.distributed.all_gather_object(blobs, buf.getvalue())
            rng = [torch.load(io.BytesIO(b), weights_only=True) for b in blobs]
        if d.is_main:
            save_checkpoint(ckpt_root, step, {
                "model": model_sd, "optimizer": optim_sd, "scheduler": scheduler.state_dict(), "step": step,
                "rng": rng, "model_config": config.to_dict(), "train_config": cfg.to_dict(),
                "data": {"sequences_consumed": step * micro_batches * cfg.micro_batch_size},
            }, keep=cfg.keep_checkpoints)
        if d.world_size > 1:
            torch.distributed.barrier()

    t_start = time.perf_counter()
    last = min(start_step + cfg.stop_after if cfg.stop_after else cfg.steps, cfg.steps)
    loss_value, eval_out = run_steps(model, optimizer, scheduler, source, next_token_loss, cfg, d, log.write,
                                     bf16=bf16, start=start_step, stop=last,
                                     evaluate=lambda: evaluate(model, source, cfg, d, bf16), save=checkpoint)
    if cfg.save_model and last == cfg.steps:
        model_sd, _ = get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if d.is_main:
            final = NHAForCausalLM(config)
            final.load_state_dict(model_sd)
            final.save_pretrained(out / "model")
    return TrainResult(steps=last, final_loss=loss_value, eval=eval_out, parameters=n_params,
                       seconds=time.perf_counter() - t_start, out_dir=str(out), rank=d.rank)
