"""Helpers shared by the Triton launchers: output allocation and the chunk layout.

N sequences, E time, H heads, D dim, BT chunk.
"""
from __future__ import annotations

import os

import torch

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256
MAX_SLOTS = 128

# Tests set this to fill every kernel output with NaN before the kernel writes it, so an unwritten element fails.
POISON_OUTPUTS = False


# Triton's CPU interpreter computes every product in float32 numpy and gets bfloat16 products wrong, so under it the
# kernels are asked for "ieee" products, which cast every operand to float32 first (the GPU grid tests the others).
INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"


def kernel_precision(prec: str) -> str:
    """The dot precision a kernel is launched with: `prec`, or "ieee" under the interpreter."""
    return "ieee" if INTERPRETER else prec


def block(n: int, least: int = 16) -> int:
    """The power of two >= n (and >= `least`): the tile size every launcher uses for a dimension of size n."""
    return max(least, 1 << (max(n, 1) - 1).bit_length())


def new_output(*shape: int, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    if POISON_OUTPUTS:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(*shape, dtype=dtype, device=device)


def chunk_cumsum(g: torch.Tensor, chunk: int) -> torch.Tensor:
    """`[N, E, H, M]` log gates -> their cumulative sums restarted at every chunk of `chunk` rows (float32)."""
    N, E, H, M = g.shape
    return g.float().view(N, E // chunk, chunk, H, M).cumsum(2).view(N, E, H, M)


def pad_time(x: torch.Tensor, length: int) -> torch.Tensor:
    """`[N, E, ...]` -> `[N, length, ...]` with zero rows at the end (identity steps for the slot scan)."""
    if x.shape[1] == length:
        return x
    return torch.cat([x, x.new_zeros(x.shape[0], length - x.shape[1], *x.shape[2:])], dim=1)
