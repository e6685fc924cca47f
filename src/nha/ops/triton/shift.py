"""Rows between the layer's time and the slot scan's: token r enters the slots at step r + w (NHA_SPEC section 5),
and the scan runs per query head while keys and values have one head per group of G.

N sequences, S layer rows, E scan steps (S rounded up to the chunk, or more), H key/value heads, HQ = H * G query
heads, D head dim, BR/BD row/column blocks.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from nha.ops.triton.common import block, new_output


def shifted(x: torch.Tensor, by: int, length: int, group: int) -> torch.Tensor:
    """`[N, S, H, D]` -> `[N, length, H * group, D]`: rows moved `by` later (zeros in front and at the end), heads
    repeated `group` times (GQA), in one contiguous copy."""
    N, S, H, D = x.shape
    out = x.new_zeros(N, length, H * group, D)
    n = max(0, min(S, length - by))
    if n > 0:
        rows = x[:, :n]
        out[:, by:by + n] = rows if group == 1 else rows.repeat_interleave(group, dim=2)
    return out


@triton.jit
def unshift_kernel(dy, other, out, S, E, H, HQ, D, SHIFT,
                   BR: tl.constexpr, BD: tl.constexpr, HAS_OTHER: tl.constexpr):
    # out[n, r, h] = sum_j dy[n, r + SHIFT, h * G + j] (0 past the scan's end) + other[n, r, h], in out's dtype
    i_r, i_nh, i_d = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_h = (i_nh // H).to(tl.int64), (i_nh % H).to(tl.int64)
    G = HQ // H
    o_r = i_r * BR + tl.arange(0, BR)
    o_d = i_d * BD + tl.arange(0, BD)
    m_d = o_d < D
    m_out = (o_r < S)[:, None] & m_d[None, :]
    m_in = (o_r < S)[:, None] & (o_r + SHIFT < E)[:, None] & m_d[None, :]
    b = tl.zeros([BR, BD], dtype=tl.float32)
    for i_g in range(0, G):
        p_in = ((i_n * E + (o_r + SHIFT).to(tl.int64))[:, None] * HQ + i_h * G + i_g) * D + o_d[None, :]
        b += tl.load(dy + p_in, mask=m_in, other=0.0).to(tl.float32)
    p_out = ((i_n * S + o_r.to(tl.int64))[:, None] * H + i_h) * D + o_d[None, :]
    if HAS_OTHER:
        b += tl.load(other + p_out, mask=m_out, other=0.0).to(tl.float32)
    tl.store(out + p_out, b.to(out.dtype.element_ty), mask=m_out)


def unshift(dy: torch.Tensor, by: int, rows: int, group: int, other: Optional[torch.Tensor] = None,
            dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The gradient of `shifted`: dy `[N, E, H * group, D]` -> `[N, rows, H, D]` in `dtype`, plus `other`
    `[N, rows, H, D]` when given (the same tensor's gradient from the window path), in one pass."""
    N, E, HQ, D = dy.shape
    H = HQ // group
    out = new_output(N, rows, H, D, dtype=dtype, device=dy.device)
    BR, BD = 32, min(128, block(D))
    grid = (triton.cdiv(rows, BR), N * H, triton.cdiv(D, BD))
    unshift_kernel[grid](dy.contiguous(), other if other is not None else out, out, rows, E, H, HQ, D, by,
                         BR=BR, BD=BD, HAS_OTHER=other is not None)
    return out
