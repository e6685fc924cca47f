"""The slot scan's inputs as the operator builds them, for the slot-kernel benchmarks (ab_slot_kernels.py,
ab_prefill_kernels.py, tune_slot_kernels.py): N sequences, E time, H heads, M slots, D column dim, bf16 column
inputs, float32 gates; and `load_copy`, which imports another copy of a kernel file for an A/B."""
from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F

from nha.ops.triton.common import chunk_cumsum


def scan_inputs(N: int, E: int, H: int, M: int, D: int, chunk: int, device: str = "cuda") -> dict[str, torch.Tensor]:
    """`g` log gates (`logsigmoid(N(0,1)) / 8`), `s = 1 - exp(g)`, `gc` their chunk cumsums, `[N, E, H, M]` float32;
    `y`, `q` `[N, E, H, D]` bf16 (the state's columns and a logits query); `p` softmax rows and `r` a small row
    gradient (dz or p of a reverse scan), `[N, E, H, M]` float32."""
    g = F.logsigmoid(torch.randn(N, E, H, M, device=device)).div(8)
    y, q = (torch.randn(N, E, H, D, device=device, dtype=torch.bfloat16) for _ in range(2))
    return dict(g=g, s=-torch.expm1(g), gc=chunk_cumsum(g, chunk), y=y, q=q,
                p=torch.softmax(torch.randn(N, E, H, M, device=device), -1),
                r=torch.randn(N, E, H, M, device=device) * 0.01)


def load_copy(path: str, name: str):
    """The Python file at `path` (a copy of a kernel module, e.g. an older slot_chunk.py) imported as module `name`."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
