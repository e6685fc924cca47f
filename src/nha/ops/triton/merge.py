"""The merge of NHA's two paths (NHA_SPEC section 5) in one Triton pass, with its gradient in closed form.

N sequences, E time, Ep = E rounded up to the chunk, HQ query heads, M slots.

Per row, one softmax over the M slot logits `scale * z` (masked while the row's slots are empty) and the window's
log-sum-exp taken as one more logit: `p` are the slot probabilities, `a = exp(lse_win - lse)` the window's share.
A row that sees nothing (padding) gets p = 0, a = 0.
With pi = [p, a] = softmax(u), the gradient is the softmax one: du = pi * (dpi - c), c = <pi, dpi>.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from nha.ops.triton.common import new_output

MASKED = tl.constexpr(-1e30)  # a constexpr: kernels may read no other global


@triton.jit
def merge_kernel(
    z, lse_win, live, p, a,
    R, E, Ep, HQ, M, scale,
    BR: tl.constexpr, BM: tl.constexpr,
):
    # BR rows of the flattened [N, Ep, HQ] grid; rows past a sequence's E get p = 0, a = 0
    o_r = tl.program_id(0) * BR + tl.arange(0, BR)
    o_m = tl.arange(0, BM)
    m_r = o_r < R
    t = (o_r // HQ) % Ep
    n = o_r // (HQ * Ep)
    hq = o_r % HQ
    inside = m_r & (t < E)
    row_e = (n * E + t) * HQ + hq  # the same row in the [N, E, HQ] layout
    b_live = tl.load(live + n * E + t, mask=inside, other=0) != 0
    b_lw = tl.load(lse_win + row_e, mask=inside, other=MASKED)
    m_rm = m_r[:, None] & (o_m[None, :] < M)
    b_z = tl.load(z + o_r[:, None].to(tl.int64) * M + o_m[None, :], mask=m_rm, other=0.0) * scale
    b_z = tl.where(b_live[:, None], b_z, MASKED)
    b_z = tl.where(o_m[None, :] < M, b_z, float("-inf"))
    b_max = tl.maximum(tl.max(b_z, axis=1), b_lw)
    b_den = tl.sum(tl.exp(b_z - b_max[:, None]), axis=1) + tl.exp(b_lw - b_max)
    b_lse = b_max + tl.log(b_den)
    # a row that sees nothing (no live slot, empty window: only padding rows) gets p = 0, a = 0, so o = 0
    seen = inside & (b_max > MASKED / 2)
    b_p = tl.where(seen[:, None], tl.exp(b_z - b_lse[:, None]), 0.0)
    tl.store(p + o_r[:, None].to(tl.int64) * M + o_m[None, :], b_p, mask=m_rm)
    tl.store(a + o_r, tl.where(seen, tl.exp(b_lw - b_lse), 0.0), mask=m_r)


class MergeFunction(torch.autograd.Function):
    """`(p [N, Ep, HQ, M], a [N, Ep, HQ])` from raw slot logits z `[N, Ep, HQ, M]`, lse_win `[N, E, HQ]` and the
    rows whose slots hold something, live `[N, E]` (all float32 but live)."""

    @staticmethod
    def forward(ctx, z, lse_win, live, scale: float):
        N, Ep, HQ, M = z.shape
        E = lse_win.shape[1]
        p = new_output(N, Ep, HQ, M, device=z.device)
        a = new_output(N, Ep, HQ, device=z.device)
        R = N * Ep * HQ
        BM = max(16, triton.next_power_of_2(M))
        BR = max(16, 4096 // BM)
        merge_kernel[(triton.cdiv(R, BR),)](z, lse_win.contiguous(), live.to(torch.int8).contiguous(), p, a,
                                            R, E, Ep, HQ, M, scale, BR=BR, BM=BM)
        ctx.save_for_backward(p, a, live)
        ctx.scale, ctx.E = scale, E
        return p, a

    @staticmethod
    def backward(ctx, dp, da):
        p, a, live = ctx.saved_tensors
        E = ctx.E
        dp = torch.zeros_like(p) if dp is None else dp.float()
        da = torch.zeros_like(a) if da is None else da.float()
        c = (p * dp).sum(-1) + a * da
        dz = (p * (dp - c[..., None])).mul_(ctx.scale)
        dz[:, :E].masked_fill_(~live[:, :, None, None], 0.0)
        dz[:, E:] = 0.0
        dlse_win = (a * (da - c))[:, :E]
        return dz, dlse_win, None, None
