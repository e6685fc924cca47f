"""`TrainConfig`: every knob of a training run, validated once, so the loop never meets a bad value."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional


@dataclass(kw_only=True)
class TrainConfig:
    """A training run. The global batch is `micro_batch_size * grad_accum * world_size` rows of `seq_len` tokens.

    Model: `model` is a preset name (`nha.models.PRESETS`) built at `size` with `overrides`, or the path of a
    config JSON file / saved model folder. A preset's `vocab_size` follows the data unless overridden.
    Data: `task` ("mqar" or "haystack", with `task_args`) or text: `data` paths (None = the embedded
    Shakespeare), tokenized with `tokenizer` ("bytes", a tokenizer.json, or a pretrained folder).
    """

    model: str = "nha-h"
    size: str = "tiny"
    overrides: dict = field(default_factory=dict)
    data: Optional[list] = None
    text_field: str = "text"
    tokenizer: str = "bytes"
    val_fraction: float = 0.05
    task: Optional[str] = None
    task_args: dict = field(default_factory=dict)
    seq_len: int = 256
    micro_batch_size: int = 8
    grad_accum: int = 1
    steps: int = 500
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    eval_every: int = 100
    eval_batches: int = 8
    log_every: int = 10
    save_every: int = 100
    keep_checkpoints: int = 2
    out_dir: str = "runs/nha"
    resume: Optional[str] = None
    stop_after: Optional[int] = None
    seed: int = 0
    fsdp: bool = False
    device: Optional[str] = None
    progress: bool = True
    save_model: bool = True

    def __post_init__(self):
        for name in ("seq_len", "micro_batch_size", "grad_accum", "steps", "eval_batches", "log_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("warmup_steps", "eval_every", "save_every", "keep_checkpoints", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0 (0 turns it off where that applies), got {value!r}")
        if self.stop_after is not None and (not isinstance(self.stop_after, int) or self.stop_after <= 0):
            raise ValueError(f"stop_after must be a positive int or None, got {self.stop_after!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError(f"weight_decay and grad_clip must be >= 0 (0 = off), got {self.weight_decay}, "
                             f"{self.grad_clip}")
        if not (0.0 <= self.beta1 < 1.0 and 0.0 <= self.beta2 < 1.0):
            raise ValueError(f"Adam betas must be in [0, 1), got ({self.beta1}, {self.beta2})")
        if self.task is not None and self.data:
            raise ValueError("give either --task (synthetic data) or --data (text), not both")
        if self.task is None and self.task_args:
            raise ValueError(f"task arguments {sorted(self.task_args)} need --task")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
