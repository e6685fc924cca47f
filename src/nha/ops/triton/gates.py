"""Triton kernels for the gate bookkeeping of the slot scan: chunk cumsums in both scan directions and the gate
gradient, each one pass over `[N, E, H, M]` instead of PyTorch's chains of flips, concatenations and cumsums.

N sequences, E time (a multiple of BT), H heads, M slots, BT chunk, NT = E // BT chunks.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from nha.ops.triton.common import new_output


@triton.jit
def reverse_chunk_cumsum_kernel(g, gcr, E, H, M, BT: tl.constexpr, BM: tl.constexpr):
    # the gates of the time-flipped scan, g'_u = g_(E-u) with g'_0 = 0, summed from each chunk's start (flipped order)
    i_t, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = (i_nh // H).to(tl.int64), (i_nh % H).to(tl.int64)
    o_u = i_t * BT + tl.arange(0, BT)
    o_m = tl.arange(0, BM)
    m_m = o_m < M
    src = i_n * E + (E - o_u).to(tl.int64)
    b_g = tl.load(g + (src[:, None] * H + i_h) * M + o_m[None, :], mask=(o_u >= 1)[:, None] & m_m[None, :], other=0.0)
    rows = i_n * E + o_u.to(tl.int64)
    tl.store(gcr + (rows[:, None] * H + i_h) * M + o_m[None, :], tl.cumsum(b_g.to(tl.float32), axis=0),
             mask=m_m[None, :])


@triton.jit
def _gate_terms(a, b, s, ds, i_n, i_h, i_t, E, H, M, BT: tl.constexpr, BM: tl.constexpr):
    # `[BT, BM]` dG = a * b - s * ds for one chunk
    o_t = i_t * BT + tl.arange(0, BT)
    o_m = tl.arange(0, BM)
    m_m = o_m < M
    p = ((i_n * E + o_t.to(tl.int64))[:, None] * H + i_h) * M + o_m[None, :]
    b_a = tl.load(a + p, mask=m_m[None, :], other=0.0)
    b_b = tl.load(b + p, mask=m_m[None, :], other=0.0)
    b_s = tl.load(s + p, mask=m_m[None, :], other=0.0)
    b_ds = tl.load(ds + p, mask=m_m[None, :], other=0.0)
    return b_a * b_b - b_s * b_ds, p, m_m


@triton.jit
def gate_chunk_totals_kernel(a, b, s, ds, tot, E, H, M, BT: tl.constexpr, BM: tl.constexpr):
    # tot `[N, NT, H, M]`: every chunk's sum of dG
    i_t, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = (i_nh // H).to(tl.int64), (i_nh % H).to(tl.int64)
    b_dg, _, m_m = _gate_terms(a, b, s, ds, i_n, i_h, i_t, E, H, M, BT, BM)
    NT = E // BT
    o_m = tl.arange(0, BM)
    tl.store(tot + ((i_n * NT + i_t) * H + i_h) * M + o_m, tl.sum(b_dg, axis=0), mask=m_m)


@triton.jit
def gate_grad_kernel(a, b, s, ds, later, dg, E, H, M, BT: tl.constexpr, BM: tl.constexpr):
    # dg_t = sum_(t' >= t) dG_t': the sum from t to the chunk's end plus `later` (the chunks after it, and the final
    # state's term)
    i_t, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = (i_nh // H).to(tl.int64), (i_nh % H).to(tl.int64)
    b_dg, p, m_m = _gate_terms(a, b, s, ds, i_n, i_h, i_t, E, H, M, BT, BM)
    NT = E // BT
    o_m = tl.arange(0, BM)
    b_later = tl.load(later + ((i_n * NT + i_t) * H + i_h) * M + o_m, mask=m_m, other=0.0)
    tl.store(dg + p, tl.cumsum(b_dg, axis=0, reverse=True) + b_later[None, :], mask=m_m[None, :])


def _grid(x: torch.Tensor, chunk: int) -> tuple[int, int]:
    return x.shape[1] // chunk, x.shape[0] * x.shape[2]


def _block(M: int) -> int:
    return max(16, triton.next_power_of_2(M))


def reverse_chunk_cumsum(g: torch.Tensor, chunk: int) -> torch.Tensor:
    """`[N, E, H, M]` log gates -> the chunk cumsums of the time-flipped scan's gates `g'_u = g_(E-u)`, `g'_0 = 0`
    (float32, flipped order: row u is time E - 1 - u)."""
    N, E, H, M = g.shape
    gcr = new_output(N, E, H, M, device=g.device)
    reverse_chunk_cumsum_kernel[_grid(g, chunk)](g, gcr, E, H, M, BT=chunk, BM=_block(M))
    return gcr


def gate_grad(a: torch.Tensor, b: torch.Tensor, s: torch.Tensor, ds: torch.Tensor, chunk: int,
              final_term: Optional[torch.Tensor] = None) -> torch.Tensor:
    """`dg_t = sum_(t' >= t) (a * b - s * ds)_t'` (+ `final_term` `[N, H, M]` for every t: the final state's share).

    All inputs `[N, E, H, M]` (made float32 and contiguous where they are not); two passes: every chunk's total,
    then each chunk's own reverse cumsum plus the totals of the chunks after it."""
    N, E, H, M = a.shape
    NT = E // chunk
    a, b, s, ds = (t.float().contiguous() for t in (a, b, s, ds))
    grid, BM = _grid(a, chunk), _block(M)
    tot = new_output(N, NT, H, M, device=a.device)
    gate_chunk_totals_kernel[grid](a, b, s, ds, tot, E, H, M, BT=chunk, BM=BM)
    later = torch.flip(torch.cumsum(torch.flip(tot, dims=[1]), dim=1), dims=[1]) - tot
    if final_term is not None:
        later = later + final_term[:, None]
    dg = new_output(N, E, H, M, device=a.device)
    gate_grad_kernel[grid](a, b, s, ds, later.contiguous(), dg, E, H, M, BT=chunk, BM=BM)
    return dg
