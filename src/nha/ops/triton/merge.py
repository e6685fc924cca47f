"""The merge of NHA's two paths (NHA_SPEC section 5) in one Triton pass, with its gradient in closed form.

N sequences, E time, Ep = E rounded up to the chunk, HQ query heads, M slots.

Per row, one softmax over the M slot logits `scale * z` (masked while the row's slots are empty) and the window's
log-sum-exp taken as one more logit: `p` are the slot probabilities, `a = exp(lse_win - lse)` the window's share.
A row that sees nothing (padding) gets p = 0, a = 0.
With pi = [p, a] = softmax(u), the gradient is the softmax one: du = pi * (dpi - c), c = <pi, dpi>; the backward
kernel takes it together with that of the output `o = a * o_win + o_slots`. A forward with gradients writes p and a
with `merge_forward` (its backward reads them); without gradients the merge runs inside the output's slot read-out
(`WindowMerge`, `_slot_probs`), with the same arithmetic (`_merge`), and p and a never reach memory.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from nha.ops import chunk
from nha.ops.triton.common import block, new_output

MASKED = tl.constexpr(chunk.MASKED)  # a constexpr: kernels may read no other global


class WindowMerge(NamedTuple):
    """What a slot read-out needs to make the merge's slot probabilities and window share from the raw slot logits
    itself (`slot_chunk.slot_read(z, ..., merge=...)`, `merge_forward`'s arithmetic): the window path's log-sum-exp
    lse_win `[N, S, HQ]` float32, the rows whose slots take part, live_i8 `[N, S]` int8, and the logit scale."""

    lse_win: torch.Tensor
    live_i8: torch.Tensor
    scale: float


@triton.jit
def _rows_of_program(R, E, Ep, HQ, BR: tl.constexpr):
    # this program's BR rows of the flattened [N, Ep, HQ] grid: index, in range, sequence, time, t < E, and the same
    # row in the [N, E, HQ] layout
    o_r = tl.program_id(0) * BR + tl.arange(0, BR)
    m_r = o_r < R
    t = (o_r // HQ) % Ep
    n = o_r // (HQ * Ep)
    row_e = ((n * E + t) * HQ + o_r % HQ).to(tl.int64)
    return o_r, m_r, n, t, m_r & (t < E), row_e


@triton.jit
def _merge(b_z, b_lw, b_live, inside, o_m, M, scale):
    # `(p [R, BM], a [R])` of R rows from their raw slot logits `[R, BM]`, window lse and live flags `[R]`; rows not
    # `inside` (past a sequence's rows) or that see nothing get p = 0, a = 0
    b_z = tl.where(b_live[:, None], b_z * scale, MASKED)
    b_z = tl.where(o_m[None, :] < M, b_z, float("-inf"))
    b_max = tl.maximum(tl.max(b_z, axis=1), b_lw)
    b_den = tl.sum(tl.exp(b_z - b_max[:, None]), axis=1) + tl.exp(b_lw - b_max)
    b_lse = b_max + tl.log(b_den)
    # a row that sees nothing (no live slot, empty window: only padding rows) gets p = 0, a = 0, so o = 0
    seen = inside & (b_max > MASKED / 2)
    return tl.where(seen[:, None], tl.exp(b_z - b_lse[:, None]), 0.0), tl.where(seen, tl.exp(b_lw - b_lse), 0.0)


@triton.jit
def _slot_probs(z, lse_win, live, p_z, n, t, i_h, S, H, M, o_m, scale):
    # `(p [R, BM], a [R])` of the rows at times t of sequence n and query head i_h (of H) from the raw slot logits at
    # offsets p_z `[R, BM]` of z and the window path's lse_win `[N, S, H]` and live `[N, S]` (`WindowMerge`)
    inside = t < S
    row = n * S + t.to(tl.int64)
    b_lw = tl.load(lse_win + row * H + i_h, mask=inside, other=MASKED)
    b_live = tl.load(live + row, mask=inside, other=0) != 0
    b_z = tl.load(z + p_z, mask=(o_m < M)[None, :], other=0.0)
    return _merge(b_z, b_lw, b_live, inside, o_m, M, scale)


@triton.jit
def merge_kernel(
    z, lse_win, live, p, a,
    R, E, Ep, HQ, M, scale,
    BR: tl.constexpr, BM: tl.constexpr,
):
    # BR rows of the flattened [N, Ep, HQ] grid; rows past a sequence's E get p = 0, a = 0
    o_r, m_r, n, t, inside, row_e = _rows_of_program(R, E, Ep, HQ, BR)
    o_m = tl.arange(0, BM)
    b_live = tl.load(live + n * E + t, mask=inside, other=0) != 0
    b_lw = tl.load(lse_win + row_e, mask=inside, other=MASKED)
    m_rm = m_r[:, None] & (o_m[None, :] < M)
    b_z = tl.load(z + o_r[:, None].to(tl.int64) * M + o_m[None, :], mask=m_rm, other=0.0)
    b_p, b_a = _merge(b_z, b_lw, b_live, inside, o_m, M, scale)
    tl.store(p + o_r[:, None].to(tl.int64) * M + o_m[None, :], b_p, mask=m_rm)
    tl.store(a + o_r, b_a, mask=m_r)


@triton.jit
def merge_bwd_kernel(
    p, dp, z, a, do, o_win, live, dz, delta, do_win, gate_term,
    R, E, Ep, HQ, M, V, scale,
    BR: tl.constexpr, BM: tl.constexpr, BV: tl.constexpr, HAS_WIN: tl.constexpr,
):
    # the output o = a * o_win + o_slots and the merge, backwards, for BR rows of the flattened [N, Ep, HQ] grid:
    # da = <do, o_win>, c = <p, dp> + a * da, dz = scale * p * (dp - c); the window path gets do_win = a * do and
    # delta = rowsum(do_win * o_win) - dlse_win = a * c (its lse gradient is a * (da - c)); the slot gates get
    # gate_term = dz * z + p * dp, what both slot passes pass back to the gates' chunk cumsums through z and p
    o_r, m_r, n, t, inside, row_e = _rows_of_program(R, E, Ep, HQ, BR)
    o_m = tl.arange(0, BM)
    m_rm = m_r[:, None] & (o_m[None, :] < M)
    p_rm = o_r[:, None].to(tl.int64) * M + o_m[None, :]
    b_p = tl.load(p + p_rm, mask=m_rm, other=0.0)
    b_dp = tl.load(dp + p_rm, mask=m_rm, other=0.0)
    b_c = tl.sum(b_p * b_dp, axis=1)
    if HAS_WIN:
        b_a = tl.load(a + o_r, mask=m_r, other=0.0)
        b_da = tl.zeros([BR], dtype=tl.float32)
        for v0 in range(0, V, BV):
            o_v = v0 + tl.arange(0, BV)
            m_rv = inside[:, None] & (o_v[None, :] < V)
            p_rv = row_e[:, None] * V + o_v[None, :]
            b_do = tl.load(do + p_rv, mask=m_rv, other=0.0).to(tl.float32)
            b_da += tl.sum(b_do * tl.load(o_win + p_rv, mask=m_rv, other=0.0).to(tl.float32), axis=1)
            tl.store(do_win + p_rv, (b_a[:, None] * b_do).to(do_win.dtype.element_ty), mask=m_rv)
        b_c += b_a * b_da
        tl.store(delta + row_e, b_a * b_c, mask=inside)
    b_live = tl.load(live + n * E + t, mask=inside, other=0) != 0
    b_dz = tl.where((inside & b_live)[:, None], scale * b_p * (b_dp - b_c[:, None]), 0.0)
    tl.store(dz + p_rm, b_dz, mask=m_rm)
    b_z = tl.load(z + p_rm, mask=m_rm, other=0.0)
    tl.store(gate_term + p_rm, b_dz * b_z + b_p * b_dp, mask=m_rm)


def merge_forward(z, lse_win, live_i8, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`(p [N, Ep, HQ, M], a [N, Ep, HQ])` from raw slot logits z `[N, Ep, HQ, M]`, lse_win `[N, E, HQ]` (float32,
    contiguous) and the rows whose slots hold something, live_i8 `[N, E]` int8."""
    N, Ep, HQ, M = z.shape
    E = lse_win.shape[1]
    p = new_output(N, Ep, HQ, M, device=z.device)
    a = new_output(N, Ep, HQ, device=z.device)
    R = N * Ep * HQ
    BM = block(M)
    BR = max(16, 4096 // BM)
    merge_kernel[(triton.cdiv(R, BR),)](z, lse_win, live_i8, p, a, R, E, Ep, HQ, M, scale, BR=BR, BM=BM)
    return p, a


def merge_backward(p, dp, z, a, do, o_win, live_i8, scale: float):
    """Backward of `merge_forward` followed by `o = a * o_win + o_slots`, given dp `[N, Ep, HQ, M]` (from the slot
    read-out), the raw logits z `[N, Ep, HQ, M]` and do `[N, E, HQ, V]`; o_win `[N, E, HQ, V]` (any float dtype), or
    None when there is no window (then a == 0).

    Returns:
        `(dz, delta, do_win, gate_term)`: dz `[N, Ep, HQ, M]` float32; with a window delta `[N, E, HQ]` float32 and
        do_win = a * do `[N, E, HQ, V]` in do's dtype, the window path's inputs to its backward (else None, None);
        gate_term = dz * z + p * dp `[N, Ep, HQ, M]` float32 (`gates.slot_gates_grad`'s pass terms), written over dp,
        which nothing reads after this.
    """
    N, Ep, HQ, M = p.shape
    E, V = live_i8.shape[1], do.shape[-1]
    dz = new_output(N, Ep, HQ, M, device=p.device)
    has_win = o_win is not None
    delta = new_output(N, E, HQ, device=p.device) if has_win else dz
    do_win = new_output(N, E, HQ, V, dtype=do.dtype, device=p.device) if has_win else dz
    R = N * Ep * HQ
    BR = 32
    merge_bwd_kernel[(triton.cdiv(R, BR),)](p, dp, z, a, do, o_win if has_win else dz, live_i8, dz, delta, do_win,
                                            dp, R, E, Ep, HQ, M, V, scale, BR=BR, BM=block(M),
                                            BV=min(128, block(V)), HAS_WIN=has_win)
    return dz, (delta if has_win else None), (do_win if has_win else None), dp
