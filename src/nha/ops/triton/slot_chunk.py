"""Triton kernels of the gated slot scan, the recurrence behind both passes of NHA's slot path (NHA_SPEC section 5).

N sequences, E time (a multiple of BT), H heads, M slots, D column dim (K or V), BT chunk, BC sub-chunk, NT chunks.

The scan keeps a state `S_t [M, D] = diag(exp(g_t)) S_{t-1} + x_t (x) y_t` (rows gated) and reads it two ways:
  logits (pass 1):  z_t = S_t q_t        q_t `[D]` -> z_t `[M]`
  read   (pass 2):  o_t = S_t^T p_t      p_t `[M]` -> o_t `[D]`
Inside a chunk, decays are taken relative to a point between the two tokens (the start of the query's sub-chunk),
so every exp() factor is <= 1 and nothing overflows whatever the gates; inside a sub-chunk the pairs are exact.
Backward passes reuse the same kernels (slot_scan.py derives how).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from nha.ops.triton.common import block, kernel_precision, new_output


@triton.jit
def _time(t, E, REVERSE: tl.constexpr):
    # REVERSE reads the sequence back to front: the scan of a backward pass, without flipping tensors in memory
    if REVERSE:
        return E - 1 - t
    return t


@triton.jit
def chunk_sums_kernel(
    x, gc, y, h,
    E, H, M, D,
    BT: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr, REVERSE: tl.constexpr, DOT_PREC: tl.constexpr,
):
    # what one chunk adds to the state, decayed to the chunk end: sum_j exp(G_last - G_j) x_j (x) y_j `[M, D]`
    # (chunks are independent: every chunk of every (sequence, head) in parallel); written where its state will go
    i_d, i_t, i_nh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_h = (i_nh // H).to(tl.int64), (i_nh % H).to(tl.int64)
    NT = E // BT
    o_m = tl.arange(0, BM)
    o_d = i_d * BD + tl.arange(0, BD)
    o_t = tl.arange(0, BT)
    m_m, m_d = o_m < M, o_d < D
    rows = i_n * E + (i_t * BT + o_t).to(tl.int64)
    rows_in = i_n * E + _time(i_t * BT + o_t, E, REVERSE).to(tl.int64)
    b_x = tl.load(x + (rows_in[:, None] * H + i_h) * M + o_m[None, :], mask=m_m[None, :], other=0.0).to(tl.float32)
    b_gc = tl.load(gc + (rows[:, None] * H + i_h) * M + o_m[None, :], mask=m_m[None, :], other=0.0)
    last = (i_n * E + i_t * BT + BT - 1).to(tl.int64)
    b_glast = tl.load(gc + (last * H + i_h) * M + o_m, mask=m_m, other=0.0)
    b_y = tl.load(y + (rows_in[:, None] * H + i_h) * D + o_d[None, :], mask=m_d[None, :], other=0.0)
    b_xw = b_x * tl.exp(b_glast[None, :] - b_gc)  # every factor <= 1
    b_s = _mm(tl.trans(b_xw), b_y, DOT_PREC)
    p_h = h + ((i_n * H + i_h) * NT + i_t) * M * D + o_m[:, None] * D + o_d[None, :]
    tl.store(p_h, b_s, mask=m_m[:, None] & m_d[None, :])


@triton.jit
def _chunk_step(h, gc, base, i_n, i_h, i_t, o_e, o_m, m_e, E, H, M, D, NT, BT: tl.constexpr):
    # chunk i_t's sum `[BLOCK]` and its decay exp(G_last) per element (sum 0, decay 1 past the last chunk)
    m = m_e & (i_t < NT)
    b_sum = tl.load(h + base + i_t * M * D + o_e, mask=m, other=0.0)
    b_g = tl.load(gc + ((i_n * E + (i_t + 1) * BT - 1) * H + i_h) * M + o_m, mask=m, other=0.0)
    return b_sum, tl.exp(b_g)


@triton.jit
def state_scan_kernel(
    gc, h0, h, states, ht,
    E, H, M, D,
    BT: tl.constexpr, BLOCK: tl.constexpr, HAS_H0: tl.constexpr,
):
    # S_(c+1) = exp(G_last(c)) * S_c + sum_c, element by element (the gates are diagonal): a sequential walk over
    # chunks with no matrix product in it; h holds the chunk sums, `states` gets the chunk-start states in its dtype
    # (it may be h itself: then every sum is overwritten by its state; the walk stays float32 either way). The
    # walk is latency-bound, so it goes four chunks at a time with the next four's loads in flight (every thread
    # stores only elements it loaded itself, so overwriting a sum with a state needs no barrier).
    i_e, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = (i_nh // H).to(tl.int64), (i_nh % H).to(tl.int64)
    NT = E // BT
    o_e = i_e * BLOCK + tl.arange(0, BLOCK)
    m_e = o_e < M * D
    o_m = o_e // D
    base = (i_n * H + i_h) * NT * M * D
    b_h = tl.zeros([BLOCK], dtype=tl.float32)
    if HAS_H0:
        b_h = tl.load(h0 + (i_n * H + i_h) * M * D + o_e, mask=m_e, other=0.0).to(tl.float32)
    args = (h, gc, base, i_n, i_h)
    s0, a0 = _chunk_step(*args, 0, o_e, o_m, m_e, E, H, M, D, NT, BT)
    s1, a1 = _chunk_step(*args, 1, o_e, o_m, m_e, E, H, M, D, NT, BT)
    s2, a2 = _chunk_step(*args, 2, o_e, o_m, m_e, E, H, M, D, NT, BT)
    s3, a3 = _chunk_step(*args, 3, o_e, o_m, m_e, E, H, M, D, NT, BT)
    for i_t in range(0, NT, 4):
        n0, d0 = _chunk_step(*args, i_t + 4, o_e, o_m, m_e, E, H, M, D, NT, BT)
        n1, d1 = _chunk_step(*args, i_t + 5, o_e, o_m, m_e, E, H, M, D, NT, BT)
        n2, d2 = _chunk_step(*args, i_t + 6, o_e, o_m, m_e, E, H, M, D, NT, BT)
        n3, d3 = _chunk_step(*args, i_t + 7, o_e, o_m, m_e, E, H, M, D, NT, BT)
        p_s = states + base + i_t * M * D + o_e
        tl.store(p_s, b_h.to(states.dtype.element_ty), mask=m_e)
        b_h = b_h * a0 + s0
        tl.store(p_s + M * D, b_h.to(states.dtype.element_ty), mask=m_e & (i_t + 1 < NT))
        b_h = b_h * a1 + s1
        tl.store(p_s + 2 * M * D, b_h.to(states.dtype.element_ty), mask=m_e & (i_t + 2 < NT))
        b_h = b_h * a2 + s2
        tl.store(p_s + 3 * M * D, b_h.to(states.dtype.element_ty), mask=m_e & (i_t + 3 < NT))
        b_h = b_h * a3 + s3
        s0, a0, s1, a1, s2, a2, s3, a3 = n0, d0, n1, d1, n2, d2, n3, d3
    tl.store(ht + (i_n * H + i_h) * M * D + o_e, b_h, mask=m_e)


@triton.jit
def _mm(a, b, PREC: tl.constexpr):
    # a @ b accumulated in float32. Half x half runs natively (exact products). With PREC "tf32x3", a bfloat16
    # operand against a float32 one splits the float32 one into two bfloat16 parts (hi + lo: ~16 mantissa bits, two
    # half-rate products instead of three tf32 ones); anything else runs in PREC on float32 copies.
    if PREC == "ieee":
        c = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    elif (a.dtype == tl.bfloat16 or a.dtype == tl.float16) and a.dtype == b.dtype:
        c = tl.dot(a, b)
    elif PREC == "tf32x3" and a.dtype == tl.bfloat16 and b.dtype == tl.float32:
        b_hi = b.to(tl.bfloat16)
        c = tl.dot(a, b_hi) + tl.dot(a, (b - b_hi.to(tl.float32)).to(tl.bfloat16))
    elif PREC == "tf32x3" and a.dtype == tl.float32 and b.dtype == tl.bfloat16:
        a_hi = a.to(tl.bfloat16)
        c = tl.dot(a_hi, b) + tl.dot((a - a_hi.to(tl.float32)).to(tl.bfloat16), b)
    else:
        c = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision=PREC)
    return c


@triton.jit
def _earlier_rows(x, gc, b_gn, i_n, i_h, i_t, i_s, E, H, M,
                  BT: tl.constexpr, BC: tl.constexpr, BM: tl.constexpr, REVERSE: tl.constexpr):
    # `[BT, BM]`: x_j exp(G_n - G_j) for the chunk's rows j before this sub-chunk (G_n its first row), 0 elsewhere
    o_t = tl.arange(0, BT)
    o_m = tl.arange(0, BM)
    m_m = o_m < M
    rows = i_n * E + (i_t * BT + o_t).to(tl.int64)
    rows_in = i_n * E + _time(i_t * BT + o_t, E, REVERSE).to(tl.int64)
    b_x = tl.load(x + (rows_in[:, None] * H + i_h) * M + o_m[None, :], mask=m_m[None, :], other=0.0).to(tl.float32)
    b_g = tl.load(gc + (rows[:, None] * H + i_h) * M + o_m[None, :], mask=m_m[None, :], other=0.0)
    return b_x * tl.exp(tl.where((o_t < i_s * BC)[:, None], b_gn[None, :] - b_g, float("-inf")))


@triton.jit
def slot_read_kernel(
    p, x, gc, y, h, o, a, o_win,
    E, H, M, D, E_WIN,
    BT: tl.constexpr, BC: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr,
    REVERSE: tl.constexpr, DOT_PREC: tl.constexpr, WIN: tl.constexpr,
):
    # o_t = S_t^T p_t for one sub-chunk of BC rows and one D block; with WIN, plus a_t * o_win_t (NHA's output, the
    # window path's rows E_WIN.. being empty), stored in o's dtype
    i_d, i_c, i_nh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_h = (i_nh // H).to(tl.int64), (i_nh % H).to(tl.int64)
    NT = E // BT
    i_t, i_s = (i_c * BC) // BT, ((i_c * BC) % BT) // BC
    o_m = tl.arange(0, BM)
    o_d = i_d * BD + tl.arange(0, BD)
    o_i = tl.arange(0, BC)
    o_t = tl.arange(0, BT)
    m_m, m_d = o_m < M, o_d < D
    rows = i_n * E + (i_c * BC + o_i).to(tl.int64)
    rows_in = i_n * E + _time(i_c * BC + o_i, E, REVERSE).to(tl.int64)
    p_rm = (rows[:, None] * H + i_h) * M + o_m[None, :]
    b_p = tl.load(p + (rows_in[:, None] * H + i_h) * M + o_m[None, :], mask=m_m[None, :], other=0.0).to(tl.float32)
    b_gc = tl.load(gc + p_rm, mask=m_m[None, :], other=0.0)
    p_h = h + ((i_n * H + i_h) * NT + i_t) * M * D + o_m[:, None] * D + o_d[None, :]
    b_h = tl.load(p_h, mask=m_m[:, None] & m_d[None, :], other=0.0)
    # from the state at the chunk start
    b_o = _mm(b_p * tl.exp(b_gc), b_h, DOT_PREC)
    # earlier sub-chunks of this chunk in one product, decays split at this sub-chunk's first row
    first = i_n * E + (i_c * BC).to(tl.int64)
    b_gn = tl.load(gc + (first * H + i_h) * M + o_m, mask=m_m, other=0.0)
    b_xw = _earlier_rows(x, gc, b_gn, i_n, i_h, i_t, i_s, E, H, M, BT, BC, BM, REVERSE)
    b_a = _mm(b_p * tl.exp(b_gc - b_gn[None, :]), tl.trans(b_xw), DOT_PREC)  # [BC, BT]
    rows_c = i_n * E + _time(i_t * BT + o_t, E, REVERSE).to(tl.int64)
    b_yc = tl.load(y + (rows_c[:, None] * H + i_h) * D + o_d[None, :], mask=m_d[None, :], other=0.0)
    b_o += _mm(b_a, b_yc, DOT_PREC)
    # the diagonal sub-chunk, pair by pair (exact); unrolled so the row loads are issued together, not one by one
    b_a = tl.zeros([BC, BC], dtype=tl.float32)
    for jj in tl.static_range(0, BC):
        row = i_n * E + (i_c * BC + jj).to(tl.int64)
        row_in = i_n * E + _time(i_c * BC + jj, E, REVERSE).to(tl.int64)
        b_xr = tl.load(x + (row_in * H + i_h) * M + o_m, mask=m_m, other=0.0).to(tl.float32)
        b_gr = tl.load(gc + (row * H + i_h) * M + o_m, mask=m_m, other=0.0)
        b_dec = tl.exp(tl.where(o_i[:, None] >= jj, b_gc - b_gr[None, :], float("-inf")))
        b_col = tl.sum(b_p * b_xr[None, :] * b_dec, axis=1)
        b_a = tl.where(o_i[None, :] == jj, b_col[:, None], b_a)
    b_yi = tl.load(y + (rows_in[:, None] * H + i_h) * D + o_d[None, :], mask=m_d[None, :], other=0.0)
    b_o += _mm(b_a, b_yi, DOT_PREC)
    if WIN:
        t = i_c * BC + o_i
        m_w = (t < E_WIN)[:, None] & m_d[None, :]
        b_ow = tl.load(o_win + ((i_n * E_WIN + t.to(tl.int64))[:, None] * H + i_h) * D + o_d[None, :], mask=m_w,
                       other=0.0)
        b_o += tl.load(a + rows * H + i_h)[:, None] * b_ow
    tl.store(o + (rows_in[:, None] * H + i_h) * D + o_d[None, :], b_o.to(o.dtype.element_ty), mask=m_d[None, :])


@triton.jit
def slot_logits_kernel(
    q, x, gc, y, h, z,
    E, H, M, D,
    BT: tl.constexpr, BC: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr, ND: tl.constexpr,
    REVERSE: tl.constexpr, DOT_PREC: tl.constexpr,
):
    # z_t = S_t q_t for one sub-chunk of BC rows (all M slots; D walked in ND blocks of BD)
    i_c, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = (i_nh // H).to(tl.int64), (i_nh % H).to(tl.int64)
    NT = E // BT
    i_t, i_s = (i_c * BC) // BT, ((i_c * BC) % BT) // BC
    o_m = tl.arange(0, BM)
    o_i = tl.arange(0, BC)
    o_t = tl.arange(0, BT)
    m_m = o_m < M
    rows = i_n * E + (i_c * BC + o_i).to(tl.int64)
    rows_in = i_n * E + _time(i_c * BC + o_i, E, REVERSE).to(tl.int64)
    rows_c = i_n * E + _time(i_t * BT + o_t, E, REVERSE).to(tl.int64)
    b_gc = tl.load(gc + (rows[:, None] * H + i_h) * M + o_m[None, :], mask=m_m[None, :], other=0.0)
    first = i_n * E + (i_c * BC).to(tl.int64)
    b_gn = tl.load(gc + (first * H + i_h) * M + o_m, mask=m_m, other=0.0)
    # q against the chunk-start state, the whole chunk's columns and this sub-chunk's columns
    b_qh = tl.zeros([BC, BM], dtype=tl.float32)
    b_qyc = tl.zeros([BC, BT], dtype=tl.float32)
    b_qy = tl.zeros([BC, BC], dtype=tl.float32)
    for i_d in tl.static_range(0, ND):
        o_d = i_d * BD + tl.arange(0, BD)
        m_d = o_d < D
        b_q = tl.load(q + (rows_in[:, None] * H + i_h) * D + o_d[None, :], mask=m_d[None, :], other=0.0)
        p_h = h + ((i_n * H + i_h) * NT + i_t) * M * D + o_m[:, None] * D + o_d[None, :]
        b_h = tl.load(p_h, mask=m_m[:, None] & m_d[None, :], other=0.0)
        b_qh += _mm(b_q, tl.trans(b_h), DOT_PREC)
        b_yc = tl.load(y + (rows_c[:, None] * H + i_h) * D + o_d[None, :], mask=m_d[None, :], other=0.0)
        b_qyc += _mm(b_q, tl.trans(b_yc), DOT_PREC)
        b_yi = tl.load(y + (rows_in[:, None] * H + i_h) * D + o_d[None, :], mask=m_d[None, :], other=0.0)
        b_qy += _mm(b_q, tl.trans(b_yi), DOT_PREC)
    # state part, then the earlier sub-chunks in one product (decays split at this sub-chunk's first row)
    b_xw = _earlier_rows(x, gc, b_gn, i_n, i_h, i_t, i_s, E, H, M, BT, BC, BM, REVERSE)
    b_z = b_qh * tl.exp(b_gc) + _mm(b_qyc, b_xw, DOT_PREC) * tl.exp(b_gc - b_gn[None, :])
    # the diagonal sub-chunk, pair by pair (exact); unrolled so the row loads are issued together, not one by one
    for jj in tl.static_range(0, BC):
        row = i_n * E + (i_c * BC + jj).to(tl.int64)
        row_in = i_n * E + _time(i_c * BC + jj, E, REVERSE).to(tl.int64)
        b_xr = tl.load(x + (row_in * H + i_h) * M + o_m, mask=m_m, other=0.0).to(tl.float32)
        b_gr = tl.load(gc + (row * H + i_h) * M + o_m, mask=m_m, other=0.0)
        b_col = tl.sum(tl.where(o_i[None, :] == jj, b_qy, 0.0), axis=1)
        b_dec = tl.exp(tl.where(o_i[:, None] >= jj, b_gc - b_gr[None, :], float("-inf")))
        b_z += b_col[:, None] * b_xr[None, :] * b_dec
    tl.store(z + (rows_in[:, None] * H + i_h) * M + o_m[None, :], b_z, mask=m_m[None, :])


def _blocks(M: int, D: int, widest: int = 64) -> tuple[int, int]:
    return block(M), min(widest, block(D))


def dot_precision(dtype: torch.dtype) -> str:
    """float32 inputs get exact float32 products; half inputs get tf32x3 (near float32: see `_mm`, which runs
    half x half products natively and splits a float32 operand against a bfloat16 one into two bfloat16 parts):
    plain tf32 put the gate gradient (a reverse cumsum over the whole sequence) at ~6e-3 relative error in bf16."""
    return "ieee" if dtype == torch.float32 else "tf32x3"


def slot_states(x, gc, y, h0, chunk: int, prec: str, reverse: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """States at every chunk start `[N, H, NT, M, D]` and the final state `[N, H, M, D]` (float32).

    Two kernels: every chunk's own sum in parallel (the matrix products), then an element-wise walk over the chunks
    (up to 1024 state elements per program). A forward scan over bf16 y gets bf16 chunk-start states (rounded once
    each; the sums and the walk stay float32): half the state traffic of its read-outs, native products against bf16
    queries. The backward's reverse scans keep float32 states: the gate gradient is a difference of large terms
    computed from them (bf16 there put dg at ~1e-2 relative error in a CPU emulation).
    `gc` is always in scan order; with `reverse`, x and y are read back to front (time t is row E - 1 - t)."""
    N, E, H, M = x.shape
    D = y.shape[-1]
    BM, BD = _blocks(M, D)
    h = new_output(N, H, E // chunk, M, D, device=x.device)
    ht = new_output(N, H, M, D, device=x.device)
    chunk_sums_kernel[(triton.cdiv(D, BD), E // chunk, N * H)](x, gc, y, h, E, H, M, D, BT=chunk, BM=BM, BD=BD,
                                                              REVERSE=reverse, DOT_PREC=kernel_precision(prec))
    half = y.dtype == torch.bfloat16 and not reverse and prec != "ieee"
    states = new_output(N, H, E // chunk, M, D, dtype=torch.bfloat16, device=x.device) if half else h
    width = min(1024, block(M * D, least=1))
    state_scan_kernel[(triton.cdiv(M * D, width), N * H)](gc, h0 if h0 is not None else ht, h, states, ht, E, H, M, D,
                                                          BT=chunk, BLOCK=width, HAS_H0=h0 is not None)
    return states, ht


def slot_read(p, x, gc, y, h, chunk: int, prec: str, reverse: bool = False, sub: int = 16, block_d: int = 0,
              num_warps: int = 4, a=None, o_win=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """`o_t = S_t^T p_t`: p `[N, E, H, M]` -> `[N, E, H, D]` in `dtype` (p, x, y and o back to front if `reverse`).

    With `a` `[N, E, H]` and `o_win` `[N, E_win, H, D]` (float32, E_win <= E), adds `a_t * o_win_t` (NHA's output)."""
    N, E, H, M = x.shape
    D = y.shape[-1]
    # each D block recomputes the sub-chunk's weights, so blocks are as wide as registers allow
    BM, BD = _blocks(M, D, widest=128 if M <= 64 else 64)
    BD = block_d or BD
    o = new_output(N, E, H, D, dtype=dtype, device=x.device)
    win = o_win is not None
    grid = (triton.cdiv(D, BD), E // sub, N * H)
    slot_read_kernel[grid](p, x, gc, y, h, o, a if win else o, o_win if win else o, E, H, M, D,
                           o_win.shape[1] if win else 0, BT=chunk, BC=sub, BM=BM, BD=BD, REVERSE=reverse,
                           DOT_PREC=kernel_precision(prec), WIN=win, num_warps=num_warps)
    return o


def slot_logits(q, x, gc, y, h, chunk: int, prec: str, reverse: bool = False, sub: int = 16, block_d: int = 0,
                num_warps: int = 0) -> torch.Tensor:
    """`z_t = S_t q_t`: q `[N, E, H, D]` -> `[N, E, H, M]` float32 (q, x, y and z back to front if `reverse`)."""
    N, E, H, M = x.shape
    D = y.shape[-1]
    # measured on an H200 (benchmarks/tune_slot_kernels.py, M = 64, D = 128): D blocks of 128 and 2 warps, 2.46 ms
    # against 2.75 for blocks of 32; M = 128 keeps blocks of 32 (its state tile is twice as tall)
    BM, BD = _blocks(M, D, widest=128 if M <= 64 else 32)
    BD = block_d or BD
    num_warps = num_warps or (2 if BM <= 64 else 4)
    z = new_output(N, E, H, M, device=x.device)
    grid = (E // sub, N * H)
    slot_logits_kernel[grid](q, x, gc, y, h, z, E, H, M, D, BT=chunk, BC=sub, BM=BM, BD=BD,
                             ND=triton.cdiv(D, BD), REVERSE=reverse, DOT_PREC=kernel_precision(prec),
                             num_warps=num_warps)
    return z
