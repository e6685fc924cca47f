"""The slot scan's gates made from the layer's inside a kernel: a chunk's scan gates, write strengths and chunk
cumsums from the layer's log gates (shift by w, masks, GQA, clamp), the arithmetic of gates.py's `slot_gates`.

N sequences, S layer rows, E scan steps, H key/value heads, HQ = H * G query heads, M slots, BT rows of a chunk.

The forward's per-chunk kernels (the segment states and both read-outs) take the layer's gates `[N, S, H, M]` (two
bytes per element and slot in half precision) instead of the scan's float32 write strengths and chunk cumsums
(eight bytes, written by one kernel and read back by three): `LayerGates` names them, `gate_args` passes them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

from nha.ops import chunk

MIN_LOG_GATE = tl.constexpr(chunk.MIN_LOG_GATE)  # the clamp of every path: exp() of it is 0 in float32


@dataclass(frozen=True)
class LayerGates:
    """The slot scan's gates as the layer gives them: step t of query head hq absorbs row `t - shift` of key/value
    head `hq // group` of g, clamped at MIN_LOG_GATE, while that row is valid and t < `ends[n]`; 0 elsewhere.

    g: `[N, S, H, M]` log gates in any float dtype; valid_i8: `[N, S]` int8; ends: `[N]` int64."""

    g: torch.Tensor
    valid_i8: torch.Tensor
    ends: torch.Tensor
    shift: int
    group: int


def gate_args(gates: Optional[LayerGates], other: torch.Tensor) -> tuple:
    """`(g, valid, ends, S, H, shift, group)`, the kernels' arguments for `gates` (None: `other` in every pointer's
    place and zeros: the kernel is launched not to read them)."""
    if gates is None:
        return other, other, other, 0, 1, 0, 1
    return (gates.g, gates.valid_i8, gates.ends, gates.g.shape[1], gates.g.shape[2], gates.shift, gates.group)


@triton.jit
def _neg_expm1(g):
    # 1 - exp(g) without the cancellation near g = 0 (Kahan: expm1(g) = (u - 1) * g / log(u) with u = exp(g))
    u = tl.exp(g)
    um1 = u - 1.0
    safe = (u != 1.0) & (um1 != -1.0)
    return -tl.where(safe, um1 * g / tl.log(tl.where(safe, u, 2.0)), tl.where(u == 1.0, g, um1))


@triton.jit
def _source_rows(t, i_n, ends, valid, SHIFT, S):
    # the layer's row that step t of the scan absorbs (t - SHIFT) and whether it is a real token before the end (the
    # loads depend on t alone, so they are in flight together)
    src = t - SHIFT
    inside = (src >= 0) & (src < S)
    b_valid = tl.load(valid + i_n * S + src, mask=inside, other=0)
    return src, inside & (t < tl.load(ends + i_n)) & (b_valid != 0)


@triton.jit
def _scan_gates(g, valid, ends, t, i_n, i_h, o_m, m_m, S, H, M, SHIFT):
    # `[BT, BM]` float32: the scan's gates at steps t of key/value head i_h (clamped; 0 where no real row enters).
    # g is loaded wherever the row exists, beside the masks rather than after them: one round trip to memory
    src = t - SHIFT
    inside = (src >= 0) & (src < S)
    p_src = ((i_n * S + src.to(tl.int64))[:, None] * H + i_h) * M + o_m[None, :]
    b_g = tl.load(g + p_src, mask=inside[:, None] & m_m[None, :], other=0.0).to(tl.float32)
    _, ok = _source_rows(t, i_n, ends, valid, SHIFT, S)
    return tl.where(ok[:, None], tl.maximum(b_g, MIN_LOG_GATE), 0.0)


@triton.jit
def _chunk_gates(g, valid, ends, i_n, i_t, i_hq, o_m, m_m, S, H, M, SHIFT, GROUP, BT: tl.constexpr):
    # chunk i_t of query head i_hq: its scan gates, write strengths 1 - exp(g) and chunk cumsums, each `[BT, BM]`
    # float32 (`LayerGates`; H key/value heads, GROUP query heads each)
    b_g = _scan_gates(g, valid, ends, i_t * BT + tl.arange(0, BT), i_n, i_hq // GROUP, o_m, m_m, S, H, M, SHIFT)
    return b_g, _neg_expm1(b_g), tl.cumsum(b_g, axis=0)
