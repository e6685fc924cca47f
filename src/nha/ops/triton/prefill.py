"""A forward without gradients (a prefill) in one kernel per chunk for its slot logits, the merge and the output
read-out (NHA_SPEC section 5; the scan, its read-outs and the shapes are slot_chunk.py's).

N sequences, E time (a multiple of BT), H query heads, M slots, K/V head dims, BT chunk.

A prefill's slot path is pass 1, z_t = S_t q_t over the states of (s, g, k); the merge of z with the window path's
log-sum-exp into the slot probabilities p and the window's share a; and pass 2, o_t = a_t o_win_t + S_t^T p_t over the
states of (s, g, v). In a gentle chunk (`slot_chunk.gentle_chunks`) every part of that is per chunk: the logits'
in-chunk part is one product, p comes from z in registers, and the read's in-chunk weights are
(p_t exp(G_t)) . (s_j exp(-G_j)), whose second factor is the logits' own. `prefill_chunk_kernel` does it all in
one program per chunk and head, so z, the write strengths s and the chunk cumsums G are read (or made) once, and z
never goes to memory. A steep chunk keeps the three-kernel path: the fused kernel writes its z's chunk-start part and
its products q . k, then `logits_intra_kernel` completes z, `read_weights_kernel` makes the read's weights from it
(the merge inside) and `slot_read_kernel` (`steep_only`) reads the steep chunks alone.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from nha.ops.triton.common import block, kernel_precision, new_output
from nha.ops.triton.merge import WindowMerge, _merge_rows
from nha.ops.triton.slot_chunk import (FUSED_SLOTS, _chunk_flag, _chunk_products, _chunk_state, _flags, _merge_args,
                                       _mm, _source, _state_args, _tiles, read_weights, slot_read, source_rows,
                                       steep_logits)


@triton.jit
def prefill_chunk_kernel(
    q, x, gc, gentle, k, hk, hks, hkd, v, hv, hvs, hvd, z, a_qk, lse_win, live, o_win, o,
    E, H, M, K, V, HK_ROW, HV_ROW, Q_ROWS, Q_HEADS, Q_SHIFT, Q_GROUP, K_ROWS, K_HEADS, K_SHIFT, K_GROUP,
    V_ROWS, V_HEADS, V_SHIFT, V_GROUP, P_ROWS, OUT_ROWS, scale,
    BT: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr, NK: tl.constexpr, BV: tl.constexpr, NV: tl.constexpr,
    DOT_PREC: tl.constexpr, WIN: tl.constexpr, H_GROUP: tl.constexpr = 1, SPAN: tl.constexpr = 0,
):
    # One chunk of BT rows of one head. Pass 1 as logits_chunk_kernel (WITH_Z, WITH_A): the chunk-start part
    # exp(G_t) * (S_c q_t) over K in NK blocks of BK, A = q . k and, in a gentle chunk, the in-chunk part; a steep
    # chunk's z (its chunk-start part) and A are stored for logits_intra_kernel. Then the merge in registers
    # (`merge._merge`: lse_win, live of P_ROWS rows, scale) and pass 2 as slot_read_kernel (MERGE) over V in NV
    # blocks of BV, stored at o's OUT_ROWS rows, a steep chunk's loads masked off and its output left to
    # slot_read_kernel (no branch around a product: slot_read_kernel says why). States as `_chunk_state`'s: hk/hv
    # one per H_GROUP heads, rows HK_ROW / HV_ROW apart, with SPAN in segments (hks, hkd / hvs, hvd)
    i_t, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = (i_nh // H).to(tl.int64), (i_nh % H).to(tl.int64)
    NT = E // BT
    i_sh = i_n * (H // H_GROUP) + i_h // H_GROUP
    flag = _chunk_flag(gentle, i_n, i_t, i_h, NT, H)
    steep = flag == 0
    o_m = tl.arange(0, BM)
    o_t = tl.arange(0, BT)
    m_m = o_m < M
    t = i_t * BT + o_t
    rows = i_n * E + t.to(tl.int64)
    causal = o_t[None, :] <= o_t[:, None]
    q_rows, q_ok = _source(t, i_n, i_h, Q_ROWS, Q_HEADS, Q_SHIFT, Q_GROUP)
    k_rows, k_ok = _source(t, i_n, i_h, K_ROWS, K_HEADS, K_SHIFT, K_GROUP)
    b_qh, b_a = _chunk_products(q, k, hk, hks, hkd, q_rows, q_ok, k_rows, k_ok, i_sh, i_t, NT, M, K, HK_ROW, o_m, m_m,
                                BT, BM, BK, NK, DOT_PREC, True, SPAN)
    p_m = (rows[:, None] * H + i_h) * M + o_m[None, :]
    b_gc = tl.load(gc + p_m, mask=m_m[None, :], other=0.0)
    # the in-chunk factor s_j exp(-G_j) of a gentle chunk (< exp(GENTLE_SPAN): nothing overflows), shared by both
    # passes; a steep chunk's s is a masked-off load (0)
    b_x = tl.load(x + p_m, mask=m_m[None, :] & (flag != 0), other=0.0)
    b_xe = b_x.to(tl.float32) * tl.exp(tl.where(flag != 0, -b_gc, 0.0))
    b_qh += _mm(tl.where(causal, b_a, 0.0), b_xe, DOT_PREC)
    b_eg = tl.exp(b_gc)
    b_z = b_qh * b_eg
    tl.store(z + p_m, b_z, mask=m_m[None, :] & steep)
    tl.store(a_qk + (rows[:, None] * H + i_h) * BT + o_t[None, :], b_a, mask=(o_t[:, None] >= 0) & steep)
    # the merge (a steep chunk's z is incomplete here: its p and a are never used)
    b_p, b_aw = _merge_rows(b_z, lse_win, live, i_n, t, i_h, P_ROWS, H, M, o_m, scale)
    b_pe = b_p * b_eg
    b_w = tl.where(causal, _mm(b_pe, tl.trans(b_xe), DOT_PREC), 0.0)
    v_rows, v_ok = _source(t, i_n, i_h, V_ROWS, V_HEADS, V_SHIFT, V_GROUP)
    m_out = (t < OUT_ROWS) & (flag != 0)
    p_out = (i_n * OUT_ROWS + t.to(tl.int64)) * H + i_h
    for i_e in tl.static_range(0, NV):
        o_e = i_e * BV + tl.arange(0, BV)
        m_e = o_e < V
        b_hv = _chunk_state(hv, hvs, hvd, i_sh, i_t, NT, M, HV_ROW, o_m, o_e, m_m, m_e, SPAN)
        b_o = _mm(b_pe, b_hv, DOT_PREC)
        b_v = tl.load(v + v_rows[:, None] * V + o_e[None, :], mask=(v_ok & (flag != 0))[:, None] & m_e[None, :],
                      other=0.0)
        b_o += _mm(b_w, b_v, DOT_PREC)
        mask = m_out[:, None] & m_e[None, :]
        if WIN:
            b_o += b_aw[:, None] * tl.load(o_win + p_out[:, None] * V + o_e[None, :], mask=mask,
                                           other=0.0).to(tl.float32)
        tl.store(o + p_out[:, None] * V + o_e[None, :], b_o.to(o.dtype.element_ty), mask=mask)


def can_fuse(M: int) -> bool:
    """Whether `prefill_output` serves M slots: with fewer than FUSED_SLOTS (a power of two) every chunk is steep."""
    return block(M) >= FUSED_SLOTS.value


def prefill_output(q, s, gc, k, v, h_k, h_v, chunk: int, prec: str, merge: WindowMerge, o_win,
                   gentle: Optional[torch.Tensor] = None, dtype: torch.dtype = torch.float32,
                   out_rows: Optional[int] = None, block_k: int = 0, block_v: int = 0, num_warps: int = 4,
                   maxnreg: Optional[int] = None) -> torch.Tensor:
    """NHA's output of a forward without gradients from the slot path's inputs: `o = a * o_win + S^T p` with
    p, a the merge of the logits `z = S q` (pass 1 over the states h_k of (s, g, k)) with `merge`'s window lse,
    and the read over the states h_v of (s, g, v) -> `[N, out_rows, H, V]` in `dtype`; the same result as
    `slot_scan.logits_forward` then `slot_scan.read_forward` without probabilities (float32 rounding apart).

    q `[N, E, H, K]`; s, gc `[N, E, H, M]` (s float32 or bf16); k, v tensors or `Shifted` as `slot_logits`' y;
    h_k, h_v: `ChunkStates` or tensors as the read-outs take them; o_win `[N, out_rows, H, V]` or None (no
    window: a = 0); gentle: the `gentle_chunks` flags (gc's by default). Needs `can_fuse(M)`.
    `block_k`, `block_v` (default: `slot_chunk._tiles`' D blocks), `num_warps`, `maxnreg`: the fused kernel's launch.
    Not yet timed on a GPU: `function.FUSED_PREFILL` keeps it off. Compiled for an H200 (sm_90a, M = 64,
    K = V = 128, bf16) it takes 254 registers per thread at 4 warps (16 bytes spilled), 233 at 8
    (benchmarks/results/kernel_registers_offline_session17.md)."""
    N, E, H, M = s.shape
    if not can_fuse(M):
        raise ValueError(f"the fused prefill needs more than {FUSED_SLOTS.value // 2} slots, got {M}")
    gentle = _flags(gentle, gc, chunk)
    out_rows = E if out_rows is None else out_rows
    (q_t, *q_map), (k_t, *k_map), (v_t, *v_map) = (source_rows(y, E, H) for y in (q, k, v))
    K, V = q_t.shape[-1], v_t.shape[-1]
    BM, BK = _tiles(M, K, block_k)
    BV = _tiles(M, V, block_v)[1]
    hk, hks, hkd, group, hk_row, span = _state_args(h_k, H, M, K)
    hv, hvs, hvd, group_v, hv_row, span_v = _state_args(h_v, H, M, V)
    if (group, span) != (group_v, span_v):
        raise ValueError("h_k and h_v must be the states of the same scan (one group, one span)")
    lse_win, live, p_rows, scale = _merge_args(merge, gc)
    z = new_output(N, E, H, M, device=s.device)  # written for steep chunks only
    a_qk = new_output(N, E, H, chunk, device=s.device)
    o = new_output(N, out_rows, H, V, dtype=dtype, device=s.device)
    win = o_win is not None
    if win and o_win.shape[1] != out_rows:
        raise ValueError(f"o_win must have the output's {out_rows} rows, got {o_win.shape[1]}")
    prefill_chunk_kernel[(E // chunk, N * H)](
        q_t, s, gc, gentle, k_t, hk, hks, hkd, v_t, hv, hvs, hvd, z, a_qk, lse_win, live, o_win if win else o, o,
        E, H, M, K, V, hk_row, hv_row, *q_map, *k_map, *v_map, p_rows, out_rows, scale,
        BT=chunk, BM=BM, BK=BK, NK=triton.cdiv(K, BK), BV=BV, NV=triton.cdiv(V, BV), DOT_PREC=kernel_precision(prec),
        WIN=win, H_GROUP=group, SPAN=span, num_warps=num_warps, **({} if maxnreg is None else {"maxnreg": maxnreg}))
    # steep chunks: the in-chunk part of z, then the read (its weights with the merge inside), of those chunks alone
    steep_logits(s, gc, gentle, a_qk, z, chunk, prec)
    w = read_weights(z, s, gc, chunk, prec, gentle=gentle, merge=merge)
    return slot_read(z, s, gc, v, h_v, chunk, prec, weights=w, gentle=gentle, merge=merge, o_win=o_win, dtype=dtype,
                     out_rows=out_rows, steep_only=True, into=o)
