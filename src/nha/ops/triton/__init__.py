"""Triton kernels of the NHA operator: training forward/backward (`triton_nha`) and decoding (`triton_nha_step`).

B batch, T time, HQ query heads, H key/value heads, K/V head dims, M slots.
"""
from __future__ import annotations

from functools import lru_cache

import torch

from nha.ops.triton.decode import triton_nha_step
from nha.ops.triton.nha import supports, triton_nha


@lru_cache(maxsize=None)
def available() -> bool:
    """True when triton imports and a CUDA device is present (the CPU interpreter is for tests only)."""
    try:
        import triton  # noqa: F401, PLC0415
    except ImportError:
        return False
    return torch.cuda.is_available()


__all__ = ["available", "supports", "triton_nha", "triton_nha_step"]
