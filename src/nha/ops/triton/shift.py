"""Rows between the layer's time and the slot scan's: token r enters the slots at step r + w (NHA_SPEC section 5),
and the scan runs per query head while keys and values have one head per group of G.

N sequences, S layer rows, E scan steps (S rounded up to the chunk, or more), H key/value heads, HQ = H * G query
heads, D head dim, BR/BD row/column blocks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

from nha.ops.triton.common import block, new_output


@dataclass(frozen=True)
class Shifted:
    """A key or value input as the slot scan reads it, without a copy: scan step t of scan head h reads row
    `t - shift` of head `h // group` of x `[N, S, H, D]`, and zeros where that row is outside `[0, S)`.

    The slot kernels take it wherever they take a `[N, E, H * group, D]` tensor (`source_rows` in slot_chunk.py);
    `materialize` is the same tensor as a copy (the reference the kernels are tested against)."""

    x: torch.Tensor
    shift: int
    group: int
    length: int

    @property
    def dtype(self) -> torch.dtype:
        return self.x.dtype

    @property
    def shape(self) -> tuple[int, int, int, int]:
        N, _, H, D = self.x.shape
        return N, self.length, H * self.group, D

    def materialize(self) -> torch.Tensor:
        N, S, H, D = self.x.shape
        out = self.x.new_zeros(self.shape)
        n = max(0, min(S, self.length - self.shift))
        if n > 0:
            rows = self.x[:, :n]
            out[:, self.shift:self.shift + n] = rows if self.group == 1 else rows.repeat_interleave(self.group, dim=2)
        return out


def shifted(x: torch.Tensor, by: int, length: int, group: int) -> Shifted:
    """`[N, S, H, D]` -> `[N, length, H * group, D]` as the scan reads it: rows moved `by` later (zeros in front and
    at the end), heads repeated `group` times (GQA); nothing is copied unless x is not contiguous."""
    return Shifted(x.contiguous(), by, group, length)


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
