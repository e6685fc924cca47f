"""Banded causal softmax attention (the window path) with its row log-sum-exp, forward and backward in Triton.

N sequences, E time, HQ query heads, H key/value heads, G = HQ // H, K/V head dims, W window, BM/BN query/key blocks.

Query t attends keys j with `t - W < j <= t` that are `valid` (real tokens); key blocks outside the band are never
visited, so the cost is O(E * W), and W = E gives plain causal attention. Rows with no key get o = 0, lse = -1e30
(chunk.py's MASKED).
The backward takes the gradient of lse too: dS = P * (dP - (rowsum(dO * O) - dlse)).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from nha.ops.triton.common import block, kernel_precision, new_output


@triton.jit
def _dot(a, b, PREC: tl.constexpr):
    # a @ b accumulated in float32. "ieee" (float32 inputs, and every input under the interpreter, whose products of
    # half operands come out wrong: common.kernel_precision) multiplies float32 copies of the operands, which are
    # exact for half ones, so a bf16 or fp16 call is testable on CPU; else PREC's product of the operands as given
    if PREC == "ieee":
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b, input_precision=PREC)


@triton.jit
def _band_mask(rows, cols, valid, E, WINDOW):
    b_valid = tl.load(valid + cols, mask=cols < E, other=0)
    return (cols[None, :] <= rows[:, None]) & (cols[None, :] > rows[:, None] - WINDOW) & (b_valid[None, :] != 0)


@triton.jit
def window_fwd_kernel(
    q, k, v, valid, o, lse,
    E, HQ, H, K, V, WINDOW, scale,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DOT_PREC: tl.constexpr,
):
    i_m, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_hq = (i_nh // HQ).to(tl.int64), (i_nh % HQ).to(tl.int64)
    i_h = i_hq // (HQ // H)
    o_k, o_v = tl.arange(0, BK), tl.arange(0, BV)
    rows = i_m * BM + tl.arange(0, BM)
    m_rows = rows < E
    p_rows = i_n * E + rows.to(tl.int64)
    b_q = tl.load(q + (p_rows[:, None] * HQ + i_hq) * K + o_k[None, :], mask=m_rows[:, None] & (o_k[None, :] < K),
                  other=0.0)
    qk_scale = scale * 1.4426950408889634  # work in base 2: exp2 is the fast instruction
    b_m = tl.full([BM], -1e30, dtype=tl.float32)
    b_l = tl.zeros([BM], dtype=tl.float32)
    b_acc = tl.zeros([BM, BV], dtype=tl.float32)
    lo = tl.maximum(i_m * BM - WINDOW + 1, 0) // BN * BN
    hi = tl.minimum((i_m + 1) * BM, E)
    for start in range(lo, hi, BN):
        cols = start + tl.arange(0, BN)
        p_cols = i_n * E + cols.to(tl.int64)
        m_cols = cols < E
        b_k = tl.load(k + (p_cols[:, None] * H + i_h) * K + o_k[None, :], mask=m_cols[:, None] & (o_k[None, :] < K),
                      other=0.0)
        b_v = tl.load(v + (p_cols[:, None] * H + i_h) * V + o_v[None, :], mask=m_cols[:, None] & (o_v[None, :] < V),
                      other=0.0)
        b_s = _dot(b_q, tl.trans(b_k), DOT_PREC) * qk_scale
        b_s = tl.where(_band_mask(rows, cols, valid + i_n * E, E, WINDOW), b_s, float("-inf"))
        b_mnew = tl.maximum(b_m, tl.max(b_s, axis=1))
        b_p = tl.exp2(b_s - b_mnew[:, None])
        b_alpha = tl.exp2(b_m - b_mnew)
        b_l = b_l * b_alpha + tl.sum(b_p, axis=1)
        b_acc = b_acc * b_alpha[:, None] + _dot(b_p.to(b_v.dtype), b_v, DOT_PREC)
        b_m = b_mnew
    has = b_l > 0
    b_o = b_acc / tl.where(has, b_l, 1.0)[:, None]
    b_lse = tl.where(has, (b_m + tl.log2(tl.where(has, b_l, 1.0))) / 1.4426950408889634, -1e30)
    tl.store(o + (p_rows[:, None] * HQ + i_hq) * V + o_v[None, :], b_o.to(o.dtype.element_ty),
             mask=m_rows[:, None] & (o_v[None, :] < V))
    tl.store(lse + p_rows * HQ + i_hq, b_lse, mask=m_rows)


@triton.jit
def window_bwd_dkdv_kernel(
    q, k, v, valid, lse, delta, do, dk, dv,
    E, HQ, H, K, V, WINDOW, scale,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DOT_PREC: tl.constexpr,
):
    # one key block of one key/value head; the G query heads of its group and the queries in the band. Scores and
    # probabilities are kept transposed (`[keys, queries]`, as the key block's products want them), so no computed
    # tile is ever transposed: only loaded q and do are
    i_j, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = (i_nh // H).to(tl.int64), (i_nh % H).to(tl.int64)
    G = HQ // H
    o_k, o_v = tl.arange(0, BK), tl.arange(0, BV)
    cols = i_j * BN + tl.arange(0, BN)
    m_cols = cols < E
    p_cols = i_n * E + cols.to(tl.int64)
    m_kk = m_cols[:, None] & (o_k[None, :] < K)
    m_vv = m_cols[:, None] & (o_v[None, :] < V)
    b_k = tl.load(k + (p_cols[:, None] * H + i_h) * K + o_k[None, :], mask=m_kk, other=0.0)
    b_v = tl.load(v + (p_cols[:, None] * H + i_h) * V + o_v[None, :], mask=m_vv, other=0.0)
    b_key = m_cols & (tl.load(valid + p_cols, mask=m_cols, other=0) != 0)  # real keys
    b_dk = tl.zeros([BN, BK], dtype=tl.float32)
    b_dv = tl.zeros([BN, BV], dtype=tl.float32)
    lo = i_j * BN // BM * BM
    hi = tl.minimum(i_j * BN + BN - 1 + WINDOW, E)
    for i_g in range(0, G):
        i_hq = i_h * G + i_g
        for start in range(lo, hi, BM):
            rows = start + tl.arange(0, BM)
            m_rows = rows < E
            p_rows = i_n * E + rows.to(tl.int64)
            b_q = tl.load(q + (p_rows[:, None] * HQ + i_hq) * K + o_k[None, :],
                          mask=m_rows[:, None] & (o_k[None, :] < K), other=0.0)
            b_do = tl.load(do + (p_rows[:, None] * HQ + i_hq) * V + o_v[None, :],
                           mask=m_rows[:, None] & (o_v[None, :] < V), other=0.0)
            b_lse = tl.load(lse + p_rows * HQ + i_hq, mask=m_rows, other=0.0)
            b_delta = tl.load(delta + p_rows * HQ + i_hq, mask=m_rows, other=0.0)
            band = ((rows[None, :] >= cols[:, None]) & (rows[None, :] - WINDOW < cols[:, None]) & m_rows[None, :]
                    & b_key[:, None])
            b_st = _dot(b_k, tl.trans(b_q), DOT_PREC) * scale  # [BN, BM]
            b_pt = tl.exp(tl.where(band, b_st - b_lse[None, :], float("-inf")))
            b_dv += _dot(b_pt.to(b_do.dtype), b_do, DOT_PREC)
            b_dpt = _dot(b_v, tl.trans(b_do), DOT_PREC)
            b_dst = b_pt * (b_dpt - b_delta[None, :])
            b_dk += _dot(b_dst.to(b_q.dtype), b_q, DOT_PREC)
    tl.store(dk + (p_cols[:, None] * H + i_h) * K + o_k[None, :], b_dk * scale, mask=m_kk)
    tl.store(dv + (p_cols[:, None] * H + i_h) * V + o_v[None, :], b_dv, mask=m_vv)


@triton.jit
def window_bwd_dq_kernel(
    q, k, v, valid, lse, delta, do, dq,
    E, HQ, H, K, V, WINDOW, scale,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DOT_PREC: tl.constexpr,
):
    i_m, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_hq = (i_nh // HQ).to(tl.int64), (i_nh % HQ).to(tl.int64)
    i_h = i_hq // (HQ // H)
    o_k, o_v = tl.arange(0, BK), tl.arange(0, BV)
    rows = i_m * BM + tl.arange(0, BM)
    m_rows = rows < E
    p_rows = i_n * E + rows.to(tl.int64)
    m_qk = m_rows[:, None] & (o_k[None, :] < K)
    b_q = tl.load(q + (p_rows[:, None] * HQ + i_hq) * K + o_k[None, :], mask=m_qk, other=0.0)
    b_do = tl.load(do + (p_rows[:, None] * HQ + i_hq) * V + o_v[None, :], mask=m_rows[:, None] & (o_v[None, :] < V),
                   other=0.0)
    b_lse = tl.load(lse + p_rows * HQ + i_hq, mask=m_rows, other=0.0)
    b_delta = tl.load(delta + p_rows * HQ + i_hq, mask=m_rows, other=0.0)
    b_dq = tl.zeros([BM, BK], dtype=tl.float32)
    lo = tl.maximum(i_m * BM - WINDOW + 1, 0) // BN * BN
    hi = tl.minimum((i_m + 1) * BM, E)
    for start in range(lo, hi, BN):
        cols = start + tl.arange(0, BN)
        p_cols = i_n * E + cols.to(tl.int64)
        m_cols = cols < E
        b_k = tl.load(k + (p_cols[:, None] * H + i_h) * K + o_k[None, :], mask=m_cols[:, None] & (o_k[None, :] < K),
                      other=0.0)
        b_v = tl.load(v + (p_cols[:, None] * H + i_h) * V + o_v[None, :], mask=m_cols[:, None] & (o_v[None, :] < V),
                      other=0.0)
        b_s = _dot(b_q, tl.trans(b_k), DOT_PREC) * scale
        b_s = tl.where(_band_mask(rows, cols, valid + i_n * E, E, WINDOW), b_s, float("-inf"))
        b_p = tl.exp(b_s - b_lse[:, None])
        b_dp = _dot(b_do, tl.trans(b_v), DOT_PREC)
        b_ds = b_p * (b_dp - b_delta[:, None])
        b_dq += _dot(b_ds.to(b_k.dtype), b_k, DOT_PREC)
    tl.store(dq + (p_rows[:, None] * HQ + i_hq) * K + o_k[None, :], b_dq * scale, mask=m_qk)


def _config(K: int, V: int, dtype: torch.dtype, interpret: bool) -> dict:
    BK, BV = block(K), block(V)
    # shared memory holds q, k, v, do tiles: float32 tiles are twice as large, so their blocks are smaller
    width = max(BK, BV) * (2 if dtype == torch.float32 else 1)
    rows = 16 if interpret else 64 if width <= 128 else 32 if width <= 256 else 16
    return dict(BM=rows, BN=rows, BK=BK, BV=BV)


def _query_block_config(K: int, V: int, dtype: torch.dtype, interpret: bool) -> dict:
    # the kernels that hold a block of queries and walk its keys (the forward, the backward's dq): where the blocks
    # are 64 rows, they walk keys 32 at a time. On an H200 (64k tokens, 16 heads, D = 128, bf16;
    # gpu_session7_h200.log) the forward took 0.53 -> 0.47 ms at w = 64 and 1.38 -> 1.27 at w = 512, the dq kernel
    # 2.51 -> 2.17 ms at w = 64 and 5.22 -> 4.62 at w = 512
    cfg = _config(K, V, dtype, interpret)
    return {**cfg, "BN": 32} if cfg["BM"] == 64 else cfg


def _forward_config(K: int, V: int, dtype: torch.dtype, interpret: bool) -> dict:
    # the forward's blocks (`_query_block_config`), with 64-row ones capped at 168 registers per thread: three
    # programs of 4 warps per SM instead of two at its 173. H200, 64k tokens x 16 heads, D = 128, bf16 output
    # (benchmarks/results/tune_window_session17_call6_h200.log): 0.468 -> 0.399 ms at w = 64, 1.307 -> 1.171 at
    # w = 512 (a cap of 128 spills: 0.460 / 1.333)
    cfg = _query_block_config(K, V, dtype, interpret)
    return {**cfg, "maxnreg": 168} if cfg["BM"] == 64 else cfg


def _backward_configs(K: int, V: int, dtype: torch.dtype, window: int, interpret: bool) -> tuple[dict, dict]:
    # (dk/dv kernel, dq kernel). The dq kernel walks keys as the forward does (`_query_block_config`). Where the
    # blocks are 64 rows, the dk/dv kernel walks the band's queries 16 at a time for windows up to 64 and 32 at a time
    # beyond. On an H200 (64k tokens, 16 heads, D = 128, bf16; gpu_session9_h200.log, tune_window_kernels.py) the
    # backward took 2.996 -> 1.564 ms at w = 64, 6.312 -> 4.145 at w = 512 and 17.63 -> 12.73 at w = 2048 against
    # 64-row query blocks (16 rows: 1.564 / 4.238 / 13.54, 32 rows: 1.752 / 4.145 / 12.73)
    kv = _config(K, V, dtype, interpret)
    if kv["BM"] == 64:
        kv = {**kv, "BM": 16 if window <= 64 else 32}
    return kv, _query_block_config(K, V, dtype, interpret)


def _precision(dtype: torch.dtype) -> str:
    return kernel_precision("ieee" if dtype == torch.float32 else "tf32")


def window_forward(q, k, v, valid_i8, window: int, scale: float, tiles: Optional[dict] = None,
                   dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Banded attention of `q [N, E, HQ, K]` over `k [N, E, H, K]`, `v [N, E, H, V]` (contiguous; `valid_i8`
    `[N, E]` int8 marks real keys) -> `o [N, E, HQ, V]` in `dtype` (accumulated in float32), `lse [N, E, HQ]`
    float32; `tiles` overrides the launch (BM, BN, num_warps; for tuning)."""
    N, E, HQ, K = q.shape
    H, V = k.shape[2], v.shape[3]
    cfg = {**_forward_config(K, V, q.dtype, not q.is_cuda), **(tiles or {})}
    o = new_output(N, E, HQ, V, dtype=dtype, device=q.device)
    lse = new_output(N, E, HQ, device=q.device)
    grid = (triton.cdiv(E, cfg["BM"]), N * HQ)
    window_fwd_kernel[grid](q, k, v, valid_i8, o, lse, E, HQ, H, K, V, window, scale, DOT_PREC=_precision(q.dtype),
                            **cfg)
    return o, lse


def window_backward(q, k, v, valid_i8, lse, delta, do, window: int, scale: float,
                    dkdv_tiles: Optional[dict] = None, dq_tiles: Optional[dict] = None):
    """`(dq, dk, dv)` float32 of `window_forward`, given `do [N, E, HQ, V]` (in q's dtype) and
    `delta = rowsum(do * o) - dlse` `[N, E, HQ]` float32 (the caller folds the lse gradient in).

    `dkdv_tiles` / `dq_tiles` override either kernel's launch (BM, BN, num_warps; for tuning)."""
    N, E, HQ, K = q.shape
    H, V = k.shape[2], v.shape[3]
    kv_cfg, q_cfg = _backward_configs(K, V, q.dtype, window, not q.is_cuda)
    kv_cfg, q_cfg, prec = {**kv_cfg, **(dkdv_tiles or {})}, {**q_cfg, **(dq_tiles or {})}, _precision(q.dtype)
    dq = new_output(N, E, HQ, K, device=q.device)
    dk = new_output(N, E, H, K, device=q.device)
    dv = new_output(N, E, H, V, device=q.device)
    args = (E, HQ, H, K, V, window, scale)
    window_bwd_dkdv_kernel[(triton.cdiv(E, kv_cfg["BN"]), N * H)](q, k, v, valid_i8, lse, delta, do, dk, dv, *args,
                                                                 DOT_PREC=prec, **kv_cfg)
    window_bwd_dq_kernel[(triton.cdiv(E, q_cfg["BM"]), N * HQ)](q, k, v, valid_i8, lse, delta, do, dq, *args,
                                                               DOT_PREC=prec, **q_cfg)
    return dq, dk, dv
