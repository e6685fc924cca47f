"""Triton kernels of the gated slot scan, the recurrence behind both passes of NHA's slot path (NHA_SPEC section 5).

N sequences, E time (a multiple of BT), H heads, M slots, D column dim (K or V), BT chunk, BC sub-chunk, NT chunks.

The scan keeps a state `S_t [M, D] = diag(exp(g_t)) S_{t-1} + x_t (x) y_t` (rows gated) and reads it two ways:
  logits (pass 1):  z_t = S_t q_t        q_t `[D]` -> z_t `[M]`
  read   (pass 2):  o_t = S_t^T p_t      p_t `[M]` -> o_t `[D]`
The read-outs take the state at every chunk start, made by scan_states.py: the forward scans' in segments of chunks
(`slot_states_pair`, `ChunkStates`: a segment's start state plus each chunk's own within it), the backward's
reverse scans' as chunk sums and a walk over every chunk (`slot_states`).
Each read-out has a kernel per chunk for what contracts over D (the chunk-start state's part, and for the logits
q . y over the chunk) and an in-chunk part, whose decays are per slot. Where a chunk's gates fall by less than
GENTLE_SPAN (`gentle_chunks`, almost every chunk of a trained model), the in-chunk decays factor as
exp(G_t) * exp(-G_j), both bounded, and the per-chunk kernel takes the whole in-chunk part in one more product
(the chunk-level form of fla's chunked GLA). A steep chunk (gates down to MIN_LOG_GATE) takes a second kernel per
sub-chunk, whose programs in gentle chunks return at once: a pair of tokens j < t is decayed relative to a row s
between them, exp(G_t - G_s) * exp(G_s - G_j), so every exp() factor is <= 1 and nothing overflows whatever the
gates: s is the query's sub-chunk start for earlier sub-chunks, and inside a sub-chunk the middle of the smallest
power-of-two block holding both (_split_decays: log2(BC) small products instead of BC pair-by-pair steps).
Backward passes reuse the same kernels (slot_scan.py derives how); the logits' in-chunk kernel can add a second
read-out over the same gates (`slot_logits(..., plus=...)`), computing the decays once for both. A reverse read-out
of a pair has the in-chunk tensors of the forward read-out of the pair swapped, transposed (read weights
`read_weights`, logits products `chunk_products`): the reverse kernels can take those of the steep chunks instead
of their own (`slot_read(..., swapped_weights=...)`, `slot_logits(..., swapped_products=...)`), with the forward's
`gentle_chunks` flags, which hold in both scan directions.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl

from nha.ops.triton.common import block, kernel_precision, new_output
from nha.ops.triton.merge import WindowMerge, _slot_probs
from nha.ops.triton.shift import Shifted


@triton.jit
def _time(t, E, REVERSE: tl.constexpr):
    # REVERSE reads the sequence back to front: the scan of a backward pass, without flipping tensors in memory
    if REVERSE:
        return E - 1 - t
    return t


@triton.jit
def _source(t, i_n, i_h, SRC_ROWS, SRC_HEADS, SHIFT, GROUP):
    # `(row * heads + head)` offsets and existence mask of scan times t (storage order) in a D-side input the scan
    # reads SHIFT rows late, one head per GROUP scan heads (shift.py's Shifted; a plain input: its E, H, 0 and 1)
    r = t - SHIFT
    return (i_n * SRC_ROWS + r.to(tl.int64)) * SRC_HEADS + i_h // GROUP, (r >= 0) & (r < SRC_ROWS)


@triton.jit
def _chunk_state(h, hs, hd, i_sh, i_t, NT, M, H_ROW, o_m, o_d, m_m, m_d, SPAN: tl.constexpr):
    # the chunk-start state `[BM, BD]` of chunk i_t of state head i_sh (its `sequence * heads + head`) in h's dtype:
    # h's own, or with SPAN (`ChunkStates`) h's part within its segment plus the segment's start state hs, decayed by
    # hd (both float32), rounded once to h's dtype. Rows H_ROW apart in h and hs.
    mask = m_m[:, None] & m_d[None, :]
    b_h = tl.load(h + ((i_sh * NT + i_t) * M + o_m[:, None]) * H_ROW + o_d[None, :], mask=mask, other=0.0)
    if SPAN > 0:
        NS = tl.cdiv(NT, SPAN)
        b_s = tl.load(hs + ((i_sh * NS + i_t // SPAN) * M + o_m[:, None]) * H_ROW + o_d[None, :], mask=mask,
                      other=0.0)
        b_dec = tl.load(hd + (i_sh * NT + i_t) * M + o_m, mask=m_m, other=0.0)
        b_h = (b_h.to(tl.float32) + b_dec[:, None] * b_s).to(h.dtype.element_ty)
    return b_h


@triton.jit
def _mm(a, b, PREC: tl.constexpr):
    # a @ b accumulated in float32. Half x half runs natively (exact products). A float32 operand against a bfloat16
    # one is split into two bfloat16 parts (hi + lo: ~16 mantissa bits) with PREC "tf32x3" or "tf32": two products
    # on bf16 tensor cores, more exact than one tf32 product and faster (it widens the bf16 operand: twice the
    # registers at half the rate; H200, a prefill at 64k tokens x 16 heads: slot_read 1.02 ms in tf32, 0.59 split).
    # With "tf32x3", float32 x float32 is three bf16 products (hi*hi + hi*lo + lo*hi) instead of three tf32 ones;
    # with "bf16" (a prefill of bf16 inputs: `dot_precision`) every operand is rounded to bf16 once, one product;
    # anything else runs in PREC on float32 copies (with "tf32", float32 x float32 is one tf32 product).
    if PREC == "ieee":
        c = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    elif PREC == "bf16":
        c = tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16))
    elif (a.dtype == tl.bfloat16 or a.dtype == tl.float16) and a.dtype == b.dtype:
        c = tl.dot(a, b)
    elif (PREC == "tf32x3" or PREC == "tf32") and a.dtype == tl.bfloat16 and b.dtype == tl.float32:
        b_hi = b.to(tl.bfloat16)
        c = tl.dot(a, b_hi) + tl.dot(a, (b - b_hi.to(tl.float32)).to(tl.bfloat16))
    elif (PREC == "tf32x3" or PREC == "tf32") and a.dtype == tl.float32 and b.dtype == tl.bfloat16:
        a_hi = a.to(tl.bfloat16)
        c = tl.dot(a_hi, b) + tl.dot((a - a_hi.to(tl.float32)).to(tl.bfloat16), b)
    elif PREC == "tf32x3" and a.dtype == tl.float32 and b.dtype == tl.float32:
        a_hi = a.to(tl.bfloat16)
        b_hi = b.to(tl.bfloat16)
        a_lo = (a - a_hi.to(tl.float32)).to(tl.bfloat16)
        b_lo = (b - b_hi.to(tl.float32)).to(tl.bfloat16)
        c = tl.dot(a_hi, b_hi) + tl.dot(a_hi, b_lo) + tl.dot(a_lo, b_hi)
    else:
        c = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision=PREC)
    return c


@triton.jit
def _earlier_block(x, x2, gc, b_gn, i_n, i_h, i_t, i_j, o_i, o_m, m_m, E, H, M,
                   BT: tl.constexpr, BC: tl.constexpr, REVERSE: tl.constexpr, DUAL: tl.constexpr):
    # `[BC, BM]`: x_j exp(G_n - G_j) for the rows j of the chunk's sub-chunk i_j (G_n: the first row of a later one),
    # and with DUAL the same of x2 (one decay for both; else the second is the first)
    rows = i_n * E + (i_t * BT + i_j * BC + o_i).to(tl.int64)
    rows_in = i_n * E + _time(i_t * BT + i_j * BC + o_i, E, REVERSE).to(tl.int64)
    p_x = (rows_in[:, None] * H + i_h) * M + o_m[None, :]
    b_x = tl.load(x + p_x, mask=m_m[None, :], other=0.0).to(tl.float32)
    b_g = tl.load(gc + (rows[:, None] * H + i_h) * M + o_m[None, :], mask=m_m[None, :], other=0.0)
    b_dec = tl.exp(b_gn[None, :] - b_g)
    b_xw = b_x * b_dec
    b_xw2 = b_xw
    if DUAL:
        b_xw2 = tl.load(x2 + p_x, mask=m_m[None, :], other=0.0).to(tl.float32) * b_dec
    return b_xw, b_xw2


@triton.jit
def _sub_chunk(x, gc, E, H, M, BT: tl.constexpr, BC: tl.constexpr, BM: tl.constexpr, REVERSE: tl.constexpr):
    # this program's sub-chunk of BC rows (grid: E // BC sub-chunks, N * H): sequence, head, place in its chunk, its
    # first time step, rows in scan and in storage order, chunk cumsums `[BC, BM]` and those of its first row `[BM]`
    i_c, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = (i_nh // H).to(tl.int64), (i_nh % H).to(tl.int64)
    i_t, i_s = (i_c * BC) // BT, ((i_c * BC) % BT) // BC
    o_i = tl.arange(0, BC)
    o_m = tl.arange(0, BM)
    m_m = o_m < M
    rows = i_n * E + (i_c * BC + o_i).to(tl.int64)
    rows_in = i_n * E + _time(i_c * BC + o_i, E, REVERSE).to(tl.int64)
    b_gc = tl.load(gc + (rows[:, None] * H + i_h) * M + o_m[None, :], mask=m_m[None, :], other=0.0)
    row0 = i_n * E + (i_c * BC).to(tl.int64)
    b_gn = tl.load(gc + (row0 * H + i_h) * M + o_m, mask=m_m, other=0.0)
    return i_n, i_h, i_t, i_s, i_c * BC, rows, rows_in, b_gc, b_gn


# How far the gates may fall inside one chunk for its in-chunk pairs to take their decays as exp(G_t) * exp(-G_j),
# one product over the chunk (`gentle_chunks`): the second factor grows up to exp(GENTLE_SPAN) ~ 5e21, far inside
# float32's range for any operand below ~1e15. Steeper chunks (gates down to MIN_LOG_GATE) take the sub-chunk
# kernels, whose factors are all <= 1 (_split_decays).
GENTLE_SPAN = tl.constexpr(50.0)
# The fewest slot columns (BM, a power of two) for which the per-chunk kernels take gentle chunks' in-chunk part in
# one product: with 16, Triton 3.6 compiles logits_chunk_kernel's [64, 64] x [64, 16] product of float32 parts into
# shared-memory reads out of bounds on an H200 (compute-sanitizer, session 13), so with M <= 16 every chunk is steep.
FUSED_SLOTS = tl.constexpr(32)


@triton.jit
def _chunk_flag(gentle, i_n, i_t, i_h, NT, H):
    # this chunk's `gentle_chunks` flag (`[N, NT, H]` int8, scan order): 1 if its gates fall by less than GENTLE_SPAN
    return tl.load(gentle + (i_n * NT + i_t) * H + i_h)


@triton.jit
def _sub_chunk_is_gentle(gentle, E, H, BT: tl.constexpr, BC: tl.constexpr):
    # whether this program's sub-chunk (`_sub_chunk`'s grid) lies in a gentle chunk
    i_c, i_nh = tl.program_id(0), tl.program_id(1)
    return _chunk_flag(gentle, (i_nh // H).to(tl.int64), (i_c * BC) // BT, (i_nh % H).to(tl.int64), E // BT, H) != 0


@triton.jit
def _split_decays(x, x2, gc, first, i_n, i_h, o_i, o_m, m_m, b_gc, E, H, M,
                  LEVEL: tl.constexpr, BC: tl.constexpr, REVERSE: tl.constexpr, DUAL: tl.constexpr):
    # One level of the pairs j < t inside a sub-chunk of BC rows starting at scan row `first`: with
    # b = BC >> (LEVEL + 1), the pairs whose highest differing bit is b's, i.e. t in the upper and j in the lower half
    # of the same block of 2b rows, split at the upper half's first row s. Returns the pairs' mask `[BC, BC]`,
    # exp(G_t - G_s) `[BC, M]` (upper-half rows, else 0) and x_j exp(G_s - G_j) `[BC, M]` (lower-half rows, else 0):
    # every factor <= 1 whatever the gates, and the levels 0..log2(BC)-1 cover every pair j < t exactly once. With
    # DUAL, also x2_j exp(G_s - G_j) (the same decays; else the fourth result is the third).
    b: tl.constexpr = BC >> (LEVEL + 1)
    upper = (o_i // b) % 2 == 1
    s_row = i_n * E + (first + (o_i // b) * b).to(tl.int64)  # an upper row's split: its half's first row
    s_col = i_n * E + (first + (o_i // b + 1) * b).to(tl.int64)  # a lower row's split: the next half's first row
    m_up, m_low = upper[:, None] & m_m[None, :], ~upper[:, None] & m_m[None, :]
    g_row = tl.load(gc + (s_row[:, None] * H + i_h) * M + o_m[None, :], mask=m_up, other=0.0)
    g_col = tl.load(gc + (s_col[:, None] * H + i_h) * M + o_m[None, :], mask=m_low, other=0.0)
    rows_in = i_n * E + _time(first + o_i, E, REVERSE).to(tl.int64)
    p_x = (rows_in[:, None] * H + i_h) * M + o_m[None, :]
    b_x = tl.load(x + p_x, mask=m_low, other=0.0).to(tl.float32)
    # masked before exp(): with its split masked to 0, an upper row's exponent in xdec_j would be -G_j, up to +inf
    dec_t = tl.exp(tl.where(upper[:, None], b_gc - g_row, float("-inf")))
    dec_j = tl.exp(tl.where(upper[:, None], float("-inf"), g_col - b_gc))
    xdec_j = b_x * dec_j
    xdec2_j = xdec_j
    if DUAL:
        xdec2_j = tl.load(x2 + p_x, mask=m_low, other=0.0).to(tl.float32) * dec_j
    pairs = ((o_i[:, None] // (2 * b)) == (o_i[None, :] // (2 * b))) & upper[:, None] & ~upper[None, :]
    return pairs, dec_t, xdec_j, xdec2_j


@triton.jit
def read_weights_kernel(
    p, x, gc, gentle, w, lse_win, live,
    E, H, M, P_ROWS, scale,
    BT: tl.constexpr, BC: tl.constexpr, BM: tl.constexpr, LEVELS: tl.constexpr, REVERSE: tl.constexpr,
    DOT_PREC: tl.constexpr, MERGE: tl.constexpr = False,
):
    # the in-chunk part of o_t = S_t^T p_t as weights on the chunk's y rows, for one sub-chunk of BC query rows:
    # W[t, j] = sum_m p_tm x_jm exp(G_tm - G_jm) for the chunk's rows j <= t `[BC, BT]` float32 (the blocks after
    # the diagonal one are left unwritten: slot_read_kernel masks j > t), in steep chunks only: slot_read_kernel
    # makes a gentle chunk's weights itself. MERGE (forward): p holds the raw slot logits and the weights take the
    # merge's slot probabilities from them (`WindowMerge`: lse_win, live of P_ROWS rows, scale)
    if _sub_chunk_is_gentle(gentle, E, H, BT, BC):  # before any load: most chunks are gentle
        return
    i_n, i_h, i_t, i_s, first, rows, rows_in, b_gc, b_gn = _sub_chunk(x, gc, E, H, M, BT, BC, BM, REVERSE)
    o_m = tl.arange(0, BM)
    o_i = tl.arange(0, BC)
    m_m = o_m < M
    p_p = (rows_in[:, None] * H + i_h) * M + o_m[None, :]
    if MERGE:
        b_p, _ = _slot_probs(p, lse_win, live, p_p, i_n, first + o_i, i_h, P_ROWS, H, M, o_m, scale)
    else:
        b_p = tl.load(p + p_p, mask=m_m[None, :], other=0.0).to(tl.float32)
    p_w = w + (rows * H + i_h) * BT
    # the diagonal sub-chunk first, so p and its decays are not live beside the decayed copy the loop below reads:
    # its diagonal (decay 1) as a rowsum, its pairs j < t in log2(BC) split-decay products
    b_x = tl.load(x + (rows_in[:, None] * H + i_h) * M + o_m[None, :], mask=m_m[None, :], other=0.0).to(tl.float32)
    b_d = tl.where(o_i[:, None] == o_i[None, :], tl.sum(b_p * b_x, axis=1)[:, None], 0.0)
    for level in tl.static_range(0, LEVELS):
        pairs, dec_t, xdec_j, _ = _split_decays(x, x, gc, first, i_n, i_h, o_i, o_m, m_m, b_gc, E, H, M, level, BC,
                                                REVERSE, False)
        b_d += tl.where(pairs, _mm(b_p * dec_t, tl.trans(xdec_j), DOT_PREC), 0.0)
    tl.store(p_w[:, None] + i_s * BC + o_i[None, :], b_d)
    # then the earlier sub-chunks one block of columns at a time, decays split at this sub-chunk's first row
    b_pn = b_p * tl.exp(b_gc - b_gn[None, :])
    for i_j in range(0, i_s):
        b_xw, _ = _earlier_block(x, x, gc, b_gn, i_n, i_h, i_t, i_j, o_i, o_m, m_m, E, H, M, BT, BC, REVERSE, False)
        tl.store(p_w[:, None] + i_j * BC + o_i[None, :], _mm(b_pn, tl.trans(b_xw), DOT_PREC))


@triton.jit
def slot_read_kernel(
    p, x, gc, gentle, y, h, hs, hd, w, o, a, o_win, lse_win, live,
    E, H, M, D, H_ROW, OUT_ROWS, OUT_SHIFT, Y_ROWS, Y_HEADS, Y_SHIFT, Y_GROUP, P_ROWS, scale,
    BT: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr,
    REVERSE: tl.constexpr, DOT_PREC: tl.constexpr, WIN: tl.constexpr, SCALED: tl.constexpr, W_SWAPPED: tl.constexpr,
    H_GROUP: tl.constexpr = 1, SPAN: tl.constexpr = 0, MERGE: tl.constexpr = False,
):
    # o_t = S_t^T p_t for one chunk of BT rows and one D block: the chunk-start state's part plus the in-chunk part
    # W y. A gentle chunk (`gentle_chunks`) makes its W here, (p_t exp(G_t)) . (x_j exp(-G_j)) in one product; a steep
    # one takes read_weights_kernel's (its j <= t part). o_t is stored in o's dtype at row t - OUT_SHIFT of o's
    # OUT_ROWS (t in storage order; rows outside them are dropped); with WIN, plus o_win at that row, scaled by a_t if
    # SCALED (NHA's output). MERGE (NHA's output, forward only): p holds the raw slot logits, of which the merge's
    # slot probabilities and the window's share a_t are taken here (`WindowMerge`: lse_win, live of P_ROWS rows,
    # scale).
    # W_SWAPPED (REVERSE only): w holds the forward read's weights of the swapped pair (row input x, state writes p),
    # whose entry [t_c, place of t_r in its chunk] is this read's W[r, c] (slot_read says why). h holds one state
    # per H_GROUP heads (GQA: `slot_states(..., group)`), its rows H_ROW apart (`slot_states_pair`: one of two states
    # side by side); with SPAN, in segments (hs, hd: `_chunk_state`)
    i_d, i_t, i_nh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_h = (i_nh // H).to(tl.int64), (i_nh % H).to(tl.int64)
    NT = E // BT
    o_m = tl.arange(0, BM)
    o_d = i_d * BD + tl.arange(0, BD)
    o_t = tl.arange(0, BT)
    m_m, m_d = o_m < M, o_d < D
    rows = i_n * E + (i_t * BT + o_t).to(tl.int64)
    t = _time(i_t * BT + o_t, E, REVERSE)
    rows_in = i_n * E + t.to(tl.int64)
    p_p = (rows_in[:, None] * H + i_h) * M + o_m[None, :]
    if MERGE:
        b_p, b_a = _slot_probs(p, lse_win, live, p_p, i_n, t, i_h, P_ROWS, H, M, o_m, scale)
    else:
        b_p = tl.load(p + p_p, mask=m_m[None, :], other=0.0).to(tl.float32)
    b_gc = tl.load(gc + (rows[:, None] * H + i_h) * M + o_m[None, :], mask=m_m[None, :], other=0.0)
    b_h = _chunk_state(h, hs, hd, i_n * (H // H_GROUP) + i_h // H_GROUP, i_t, NT, M, H_ROW, o_m, o_d, m_m, m_d, SPAN)
    b_pe = b_p * tl.exp(b_gc)
    b_o = _mm(b_pe, b_h, DOT_PREC)
    # no branch on the flag around a product (Triton 3.6 miscompiles some: shared-memory reads out of bounds); a
    # steep chunk's x and a gentle chunk's stored weights are masked-off loads, which read nothing
    flag = _chunk_flag(gentle, i_n, i_t, i_h, NT, H)
    b_w = tl.zeros([BT, BT], dtype=tl.float32)
    if BM >= FUSED_SLOTS:  # (else every chunk is steep: `gentle_chunks`)
        b_x = tl.load(x + (rows_in[:, None] * H + i_h) * M + o_m[None, :], mask=m_m[None, :] & (flag != 0),
                      other=0.0)
        # exp(-G_j) < exp(GENTLE_SPAN) in a gentle chunk: nothing overflows
        b_w = _mm(b_pe, tl.trans(b_x.to(tl.float32) * tl.exp(tl.where(flag != 0, -b_gc, 0.0))), DOT_PREC)
    m_steep = (o_t[:, None] >= 0) & (o_t[None, :] >= 0) & (flag == 0)
    if W_SWAPPED:
        # scan row r is time t_r = E - 1 - (i_t * BT + r), at place BT - 1 - r of its forward chunk (E: chunks)
        b_w += tl.load(w + (rows_in[None, :] * H + i_h) * BT + (BT - 1 - o_t)[:, None], mask=m_steep, other=0.0)
    else:
        b_w += tl.load(w + (rows[:, None] * H + i_h) * BT + o_t[None, :], mask=m_steep, other=0.0)
    b_w = tl.where(o_t[None, :] <= o_t[:, None], b_w, 0.0)
    y_rows, y_ok = _source(t, i_n, i_h, Y_ROWS, Y_HEADS, Y_SHIFT, Y_GROUP)
    b_y = tl.load(y + y_rows[:, None] * D + o_d[None, :], mask=y_ok[:, None] & m_d[None, :], other=0.0)
    b_o += _mm(b_w, b_y, DOT_PREC)
    r = t - OUT_SHIFT
    m_out = ((r >= 0) & (r < OUT_ROWS))[:, None] & m_d[None, :]
    p_out = ((i_n * OUT_ROWS + r.to(tl.int64))[:, None] * H + i_h) * D + o_d[None, :]
    if WIN:
        b_ow = tl.load(o_win + p_out, mask=m_out, other=0.0).to(tl.float32)
        if MERGE:
            b_ow *= b_a[:, None]
        elif SCALED:
            b_ow *= tl.load(a + rows * H + i_h)[:, None]
        b_o += b_ow
    tl.store(o + p_out, b_o.to(o.dtype.element_ty), mask=m_out)


@triton.jit
def logits_chunk_kernel(
    q, x, gc, gentle, y, h, hs, hd, z, a_qy,
    E, H, M, D, H_ROW, Q_ROWS, Q_HEADS, Q_SHIFT, Q_GROUP, Y_ROWS, Y_HEADS, Y_SHIFT, Y_GROUP,
    BT: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr, ND: tl.constexpr,
    REVERSE: tl.constexpr, DOT_PREC: tl.constexpr, WITH_Z: tl.constexpr, WITH_A: tl.constexpr,
    ACCUMULATE: tl.constexpr = False, H_GROUP: tl.constexpr = 1, SPAN: tl.constexpr = 0,
):
    # the D-contracted products of z_t = S_t q_t for one chunk of BT rows (D walked in ND blocks of BD): the
    # chunk-start state's part exp(G_t) * (S_c q_t) `[BT, M]` and A[t, j] = q_t . y_j `[BT, BT]`. With WITH_Z, z gets
    # the chunk-start part (added to z's values if ACCUMULATE), and in a gentle chunk (`gentle_chunks`) its in-chunk
    # part too, exp(G_t) * (A (x_j exp(-G_j))) in one product (the whole z_t: logits_intra_kernel skips the chunk);
    # WITH_A stores A, of steep chunks only with WITH_Z (what logits_intra_kernel reads), of every chunk without (the
    # products alone, `chunk_products`). h holds one state per H_GROUP heads, its rows H_ROW apart, with SPAN in
    # segments (`_chunk_state`)
    i_t, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = (i_nh // H).to(tl.int64), (i_nh % H).to(tl.int64)
    NT = E // BT
    flag = 0  # this chunk's `gentle_chunks` flag (every chunk counts as steep for the products alone)
    if WITH_Z:
        flag = _chunk_flag(gentle, i_n, i_t, i_h, NT, H)
    o_m = tl.arange(0, BM)
    o_t = tl.arange(0, BT)
    m_m = o_m < M
    rows = i_n * E + (i_t * BT + o_t).to(tl.int64)
    t = _time(i_t * BT + o_t, E, REVERSE)
    rows_in = i_n * E + t.to(tl.int64)
    q_rows, q_ok = _source(t, i_n, i_h, Q_ROWS, Q_HEADS, Q_SHIFT, Q_GROUP)
    y_rows, y_ok = _source(t, i_n, i_h, Y_ROWS, Y_HEADS, Y_SHIFT, Y_GROUP)
    b_qh = tl.zeros([BT, BM], dtype=tl.float32)
    b_a = tl.zeros([BT, BT], dtype=tl.float32)
    for i_d in tl.static_range(0, ND):
        o_d = i_d * BD + tl.arange(0, BD)
        m_d = o_d < D
        b_q = tl.load(q + q_rows[:, None] * D + o_d[None, :], mask=q_ok[:, None] & m_d[None, :], other=0.0)
        if WITH_Z:
            b_h = _chunk_state(h, hs, hd, i_n * (H // H_GROUP) + i_h // H_GROUP, i_t, NT, M, H_ROW, o_m, o_d, m_m,
                               m_d, SPAN)
            b_qh += _mm(b_q, tl.trans(b_h), DOT_PREC)
        if WITH_A:
            b_y = tl.load(y + y_rows[:, None] * D + o_d[None, :], mask=y_ok[:, None] & m_d[None, :], other=0.0)
            b_a += _mm(b_q, tl.trans(b_y), DOT_PREC)
        else:  # a gentle chunk's in-chunk part still needs A (a steep one's load is masked off: it reads nothing)
            b_y = tl.load(y + y_rows[:, None] * D + o_d[None, :], mask=y_ok[:, None] & m_d[None, :] & (flag != 0),
                          other=0.0)
            b_a += _mm(b_q, tl.trans(b_y), DOT_PREC)
    if WITH_Z:
        b_gc = tl.load(gc + (rows[:, None] * H + i_h) * M + o_m[None, :], mask=m_m[None, :], other=0.0)
        p_z = z + (rows_in[:, None] * H + i_h) * M + o_m[None, :]
        if BM >= FUSED_SLOTS:  # (else every chunk is steep: `gentle_chunks`)
            # a gentle chunk's in-chunk part (exp(-G_j) < exp(GENTLE_SPAN): nothing overflows); a steep chunk's x is
            # a masked-off load, so the product adds 0 (no branch around it: slot_read_kernel says why)
            b_x = tl.load(x + (rows_in[:, None] * H + i_h) * M + o_m[None, :], mask=m_m[None, :] & (flag != 0),
                          other=0.0)
            b_xe = b_x.to(tl.float32) * tl.exp(tl.where(flag != 0, -b_gc, 0.0))
            b_qh += _mm(tl.where(o_t[None, :] <= o_t[:, None], b_a, 0.0), b_xe, DOT_PREC)
        b_z = b_qh * tl.exp(b_gc)
        if ACCUMULATE:
            b_z += tl.load(p_z, mask=m_m[None, :], other=0.0)
        tl.store(p_z, b_z, mask=m_m[None, :])
    if WITH_A:
        tl.store(a_qy + (rows[:, None] * H + i_h) * BT + o_t[None, :], b_a,
                 mask=(o_t[:, None] >= 0) & (o_t[None, :] >= 0) & (flag == 0))


@triton.jit
def _a_block(a_qy, rows, i_n, i_h, i_t, i_s, i_j, o_i, E, H, BT: tl.constexpr, BC: tl.constexpr,
             REVERSE: tl.constexpr, SWAPPED: tl.constexpr):
    # `[BC, BC]` block of A for this sub-chunk's rows (i_s) and sub-chunk i_j's columns. SWAPPED: a_qy holds the
    # forward products of the pair swapped, A_fwd[t, j] = y_t . q_j, so this reverse read's A[r, c] = q_(t_r) . y_(t_c)
    # is A_fwd's entry at column c's row and at row r's place in its forward chunk, BT - 1 - (scan place of r)
    if SWAPPED:
        cols_in = i_n * E + _time(i_t * BT + i_j * BC + o_i, E, REVERSE).to(tl.int64)
        return tl.load(a_qy + (cols_in[None, :] * H + i_h) * BT + (BT - 1 - i_s * BC - o_i)[:, None])
    return tl.load(a_qy + (rows[:, None] * H + i_h) * BT + i_j * BC + o_i[None, :])


@triton.jit
def logits_intra_kernel(
    x, gc, gentle, a_qy, z, x2, a_qy2,
    E, H, M,
    BT: tl.constexpr, BC: tl.constexpr, BM: tl.constexpr, LEVELS: tl.constexpr, REVERSE: tl.constexpr,
    DOT_PREC: tl.constexpr, DUAL: tl.constexpr, A_SWAPPED: tl.constexpr,
):
    # adds the in-chunk part of z_t = S_t q_t for one sub-chunk of BC rows of a steep chunk (logits_chunk_kernel did
    # the whole z_t of gentle ones), from logits_chunk_kernel's A = q . y:
    # z_tm += sum_(j <= t in the chunk) A[t, j] x_jm exp(G_tm - G_jm). With DUAL, z (holding both chunk-start parts)
    # also gets a second read-out's in-chunk part, from (x2, a_qy2) with the same gates and decays.
    # A_SWAPPED (REVERSE only): a_qy (and a_qy2) hold the forward-direction products of the pair swapped (`_a_block`)
    if _sub_chunk_is_gentle(gentle, E, H, BT, BC):  # before any load: most chunks are gentle
        return
    i_n, i_h, i_t, i_s, first, rows, rows_in, b_gc, b_gn = _sub_chunk(x, gc, E, H, M, BT, BC, BM, REVERSE)
    o_m = tl.arange(0, BM)
    o_i = tl.arange(0, BC)
    m_m = o_m < M
    b_z = tl.load(z + (rows_in[:, None] * H + i_h) * M + o_m[None, :], mask=m_m[None, :], other=0.0)
    # the earlier sub-chunks one block at a time, decays split at this sub-chunk's first row
    b_e = tl.zeros([BC, BM], dtype=tl.float32)
    for i_j in range(0, i_s):
        b_xw, b_xw2 = _earlier_block(x, x2, gc, b_gn, i_n, i_h, i_t, i_j, o_i, o_m, m_m, E, H, M, BT, BC, REVERSE,
                                     DUAL)
        b_e += _mm(_a_block(a_qy, rows, i_n, i_h, i_t, i_s, i_j, o_i, E, H, BT, BC, REVERSE, A_SWAPPED), b_xw,
                   DOT_PREC)
        if DUAL:
            b_e += _mm(_a_block(a_qy2, rows, i_n, i_h, i_t, i_s, i_j, o_i, E, H, BT, BC, REVERSE, A_SWAPPED), b_xw2,
                       DOT_PREC)
    b_z += b_e * tl.exp(b_gc - b_gn[None, :])
    # the diagonal sub-chunk: its diagonal (decay 1) element-wise, its pairs j < t in log2(BC) split-decay products
    b_ad = _a_block(a_qy, rows, i_n, i_h, i_t, i_s, i_s, o_i, E, H, BT, BC, REVERSE, A_SWAPPED)
    b_x = tl.load(x + (rows_in[:, None] * H + i_h) * M + o_m[None, :], mask=m_m[None, :], other=0.0).to(tl.float32)
    b_z += tl.sum(tl.where(o_i[:, None] == o_i[None, :], b_ad, 0.0), axis=1)[:, None] * b_x
    b_ad2 = b_ad
    if DUAL:
        b_ad2 = _a_block(a_qy2, rows, i_n, i_h, i_t, i_s, i_s, o_i, E, H, BT, BC, REVERSE, A_SWAPPED)
        b_x2 = tl.load(x2 + (rows_in[:, None] * H + i_h) * M + o_m[None, :], mask=m_m[None, :],
                       other=0.0).to(tl.float32)
        b_z += tl.sum(tl.where(o_i[:, None] == o_i[None, :], b_ad2, 0.0), axis=1)[:, None] * b_x2
    for level in tl.static_range(0, LEVELS):
        pairs, dec_t, xdec_j, xdec2_j = _split_decays(x, x2, gc, first, i_n, i_h, o_i, o_m, m_m, b_gc, E, H, M,
                                                      level, BC, REVERSE, DUAL)
        b_z += dec_t * _mm(tl.where(pairs, b_ad, 0.0), xdec_j, DOT_PREC)
        if DUAL:
            b_z += dec_t * _mm(tl.where(pairs, b_ad2, 0.0), xdec2_j, DOT_PREC)
    tl.store(z + (rows_in[:, None] * H + i_h) * M + o_m[None, :], b_z, mask=m_m[None, :])


def _tiles(M: int, D: int, block_d: int = 0) -> tuple[int, int]:
    # `(BM, BD)` of the chunk sums and of both read-outs: the state's M rows whole, D blocks of 128 while that is at
    # most 64 rows, else 64 (H200, M = 64, D = 128: the chunk sums 0.65 ms against 0.72 with blocks of 64, the
    # read-outs as slot_read says); `block_d` overrides
    return block(M), block_d or min(128 if M <= 64 else 64, block(D))


class ChunkStates(NamedTuple):
    """A forward scan's chunk-start states in segments of `span` chunks (`slot_states_pair`), as the read-outs take
    them: the state at chunk c, which lies in segment c // span, is `local[c] + decay[c] * start[c // span]` (decay
    per slot row), made inside the read-out and rounded once to local's dtype (`materialize` makes them all).

    local `[N, H, NT, M, D]`: the state from the chunks of c's segment before c alone (bf16 or float32, rows may be
    longer than D: one of two states side by side); start `[N, H, NS, M, D]` float32: every segment's start state,
    rows as local's; decay `[N, H, NT, M]` float32: exp(the gates' sum from c's segment start to c)."""

    local: torch.Tensor
    start: torch.Tensor
    decay: torch.Tensor
    span: int

    def materialize(self) -> torch.Tensor:
        """The chunk-start states `[N, H, NT, M, D]` in local's dtype, as a read-out makes them."""
        NT = self.local.shape[2]
        start = self.start.repeat_interleave(self.span, dim=2)[:, :, :NT]
        return (self.local.float() + self.decay[..., None] * start).to(self.local.dtype)


def _state_args(h, H: int, M: int, D: int) -> tuple:
    """`(local, start, decay, group, row, span)` of a read-out's chunk-start states: a tensor `[N, H / group, NT, M,
    D]` (start and decay: the same tensor again, unread; span 0) or `ChunkStates`; group: how many of the read-out's H
    heads share each state; row: how far apart a state's rows lie (D, or more where h is one of
    `slot_states_pair`'s two)."""
    if isinstance(h, ChunkStates):
        group, row = _state_args(h.local, H, M, D)[3:5]
        N, HS, NT = h.local.shape[:3]
        start_row = _state_args(h.start, H, M, D)[4]
        if h.span < 1 or h.start.shape[:3] != (N, HS, -(-NT // h.span)) or start_row != row or (
                h.decay.shape != (N, HS, NT, M) or not h.decay.is_contiguous()):
            raise ValueError(f"segment states of span {h.span} do not match their local states {tuple(h.local.shape)}")
        return h.local, h.start, h.decay, group, row, h.span
    if h.dim() != 5 or H % h.shape[1] or h.shape[-2:] != (M, D):
        raise ValueError(f"chunk-start states must be [N, heads dividing {H}, chunks, {M}, {D}], got {tuple(h.shape)}")
    row = h.stride(3)
    if h.stride(4) != 1 or row < D or h.stride(2) != M * row or h.stride(1) != h.shape[2] * M * row or (
            h.shape[0] > 1 and h.stride(0) != h.shape[1] * h.stride(1)):
        raise ValueError(f"chunk-start states must be contiguous but for a row longer than D, got strides {h.stride()}")
    return h, h, h, H // h.shape[1], row, 0


def _levels(sub: int) -> int:
    # the pair levels of _split_decays inside a sub-chunk: log2(sub) (a power of two, at least 16: a GPU product's rows)
    if sub < 16 or sub & (sub - 1):
        raise ValueError(f"the slot scan's sub-chunk must be a power of two >= 16, got {sub}")
    return sub.bit_length() - 1


def dot_precision(dtype: torch.dtype, grads: bool = True) -> str:
    """The slot kernels' product precision (`_mm`) for inputs of `dtype`. float32 inputs get exact float32 products.
    With gradients, half inputs get tf32x3 (near float32: half x half products run natively, a float32 operand
    against a bfloat16 one is split into two bfloat16 parts): plain tf32 put the gate gradient (a reverse cumsum over
    the whole sequence) at ~6e-3 relative error in bf16. Without gradients (a prefill), whose outputs only need to
    stay well inside half precision, bf16 inputs get "bf16" (every float32 operand rounded to bf16 once: one product
    each) and fp16 inputs "tf32" (a float32 x float32 product is one tf32 product). A bf16 prefill also stores the
    write strengths in bf16 (`gates.slot_gates`' s_dtype): H200, 64k tokens x 16 heads, M = 64, D = 128, the forward
    scans' states, the logits and the output read with the merge take 0.70 + 0.45 + 0.69 ms against 0.79 + 0.60 +
    0.88 with "tf32" and float32 write strengths; "bf16" on float32 ones made the read slower (1.03 ms;
    benchmarks/results/ab_prefill_kernels_session17_call3_h200.log)."""
    if dtype == torch.float32:
        return "ieee"
    if grads:
        return "tf32x3"
    return "bf16" if dtype == torch.bfloat16 else "tf32"


def source_rows(y, E: int, H: int) -> tuple:
    """`(tensor, rows, heads, shift, group)` of a D-side input for the kernels' `_source`: a `Shifted` (shift.py)
    as it says, a plain `[N, E, H, D]` tensor as itself (rows E, heads H, shift 0, group 1)."""
    if isinstance(y, Shifted):
        return y.x, y.x.shape[1], y.x.shape[2], y.shift, y.group
    return y, E, H, 0, 1


def gentle_chunks(gc: torch.Tensor, chunk: int) -> torch.Tensor:
    """`[N, NT, H]` int8: 1 where a chunk's gates fall by less than GENTLE_SPAN in every slot, both in this scan and
    in its time-flipped one, from the chunk cumsums gc `[N, E, H, M]` (scan order).

    A gentle chunk's in-chunk read-outs factor every decay as exp(G_t) * exp(-G_j) (both bounded) and take one
    product over the whole chunk inside the per-chunk kernels; a steep one (gates down to MIN_LOG_GATE) takes the
    sub-chunk kernels, whose factors are all <= 1 (with M <= 16 every chunk: FUSED_SLOTS). The backward's reverse
    scans take the forward's flags flipped (`flags.flip(1)`), so that a reverse read-out can take the in-chunk
    tensors a forward one left for the same steep chunks: hence both directions here. A chunk of the flipped scan
    (gates g'_u = g_(E-u), g'_0 = 0: `reverse_chunk_cumsum`) holds the chunk's gates but its first, and the next
    chunk's first (none after the last). `slot_gates` writes the same flags by the same test."""
    N, E, H, M = gc.shape
    if block(M) < FUSED_SLOTS.value:
        return torch.zeros(N, E // chunk, H, dtype=torch.int8, device=gc.device)
    first, last = gc[:, ::chunk], gc[:, chunk - 1::chunk]  # a chunk's first gate and its total `[N, NT, H, M]`
    after = torch.cat([first[:, 1:], torch.zeros_like(first[:, :1])], dim=1)
    fall = torch.maximum(-last, first - last - after)  # how far the gates fall in the chunk: forward, flipped
    return (fall.amax(-1) < GENTLE_SPAN.value).to(torch.int8)


def _flags(gentle: Optional[torch.Tensor], gc: torch.Tensor, chunk: int, shared: Optional[str] = None) -> torch.Tensor:
    # the `gentle_chunks` flags a launcher uses: as given (checked), or gc's own unless `shared` names in-chunk
    # tensors of another scan that the launch takes (they were written for that scan's flags, which must be passed)
    N, E, H, _ = gc.shape
    if gentle is None:
        if shared:
            raise ValueError(f"{shared} were made for the flags of their own scan: pass them as `gentle`")
        return gentle_chunks(gc, chunk)
    if gentle.shape != (N, E // chunk, H) or gentle.dtype != torch.int8:
        raise ValueError(f"gentle flags must be int8 {(N, E // chunk, H)}, got {gentle.dtype} {tuple(gentle.shape)}")
    return gentle.contiguous()


def read_weights(p, x, gc, chunk: int, prec: str, reverse: bool = False, sub: int = 16,
                 num_warps: int = 2, gentle: Optional[torch.Tensor] = None,
                 merge: Optional[WindowMerge] = None) -> torch.Tensor:
    """The in-chunk weights of `slot_read` for its steep chunks: `W[t, j] = sum_m p_tm x_jm exp(G_tm - G_jm)` for
    the rows j <= t of t's chunk, `[N, E, H, chunk]` float32 (column j - chunk start; columns j > t and the rows of
    gentle chunks, which `slot_read` makes itself, left unspecified), one program per sub-chunk of `sub` rows (no D
    in them); `gentle`: the `gentle_chunks` flags (default: gc's). With `merge` (not reverse), p holds the raw slot
    logits and W takes the merge's slot probabilities from them, as `slot_read(..., merge=...)`."""
    N, E, H, M = x.shape
    if merge is not None and reverse:
        raise ValueError("merge serves a forward read-out (reverse=False)")
    gentle = _flags(gentle, gc, chunk)
    w = new_output(N, E, H, chunk, device=x.device)
    lse_win, live, rows, scale = _merge_args(merge, gc)
    read_weights_kernel[(E // sub, N * H)](p, x, gc, gentle, w, lse_win, live, E, H, M, rows, scale, BT=chunk,
                                           BC=sub, BM=block(M), LEVELS=_levels(sub), REVERSE=reverse,
                                           DOT_PREC=kernel_precision(prec), MERGE=merge is not None,
                                           num_warps=num_warps)
    return w


def _merge_args(merge: Optional[WindowMerge], other: torch.Tensor) -> tuple:
    # `(lse_win, live, rows, scale)` of a kernel's MERGE arguments (None: `other` in the pointers' place)
    if merge is None:
        return other, other, 0, 1.0
    return merge.lse_win, merge.live_i8, merge.lse_win.shape[1], float(merge.scale)


def slot_read(p, x, gc, y, h, chunk: int, prec: str, reverse: bool = False, sub: int = 16, block_d: int = 0,
              num_warps: int = 4, intra_warps: int = 2, a=None, o_win=None,
              dtype: torch.dtype = torch.float32, out_rows: Optional[int] = None, out_shift: int = 0,
              swapped_weights: Optional[torch.Tensor] = None, weights: Optional[torch.Tensor] = None,
              gentle: Optional[torch.Tensor] = None, merge: Optional[WindowMerge] = None) -> torch.Tensor:
    """`o_t = S_t^T p_t`: p `[N, E, H, M]` -> `[N, out_rows, H, D]` in `dtype` (p, x, y and o back to front if
    `reverse`): o_t lands at row `t - out_shift` (t in storage order) where that row is in `[0, out_rows)`, default E
    rows and no shift; the scan's k/v gradient moved back to the layer's rows is `out_shift = w`.

    With `o_win` `[N, out_rows, H, D]` (any float dtype), adds `o_win` at the same row, or `a_t * o_win` with `a`
    `[N, E, H]` (not reverse; NHA's output; the backward's dq plus the window path's). With `merge` instead of `a`
    (not reverse; NHA's output without gradients), p holds the raw slot logits z: the kernel takes the merge's slot
    probabilities and the window's share a_t from them (`merge.merge_forward`'s arithmetic) and adds `a_t * o_win`
    (o_win None: no window, a = 0).
    One kernel per chunk and D block of `block_d`: the products with the chunk-start state and, for the in-chunk
    part, with the chunk's y under weights W, which a gentle chunk (`gentle_chunks`; `gentle` the flags, default
    gc's) makes in the same kernel and a steep one takes from `read_weights` (per sub-chunk of `sub` rows, whose
    programs in gentle chunks return at once; not launched when weights are given).

    `weights`: W from `read_weights(p, x, gc, ...)` with the same direction and flags (computed here when None).
    `swapped_weights` (reverse only): the forward-direction `read_weights(x, p, gc_forward, ...)`, the pair swapped,
    with `gentle` the forward's flags flipped (required). A reverse read's W[t, j] (j >= t in time)
    = sum_m p_tm x_jm exp(G_jm - G_tm) is that W's entry [j, t]: the backward's dk and dv reads take the steep
    chunks' in-chunk weights from dq's read and the forward's output read instead of computing them again."""
    # measured on an H200 (64k tokens, 16 heads, M = 64, D = 128; gpu_session7_h200.log): 2 warps for the in-chunk
    # kernel, both kernels 1.86 ms against 2.29 with 4 warps (reverse-type calls: 2.10 against 2.39)
    N, E, H, M = x.shape
    D = y.shape[-1]
    BM, BD = _tiles(M, D, block_d)
    if swapped_weights is not None and (not reverse or weights is not None):
        raise ValueError("swapped_weights serve a reverse read that is given no other weights")
    if merge is not None and (reverse or a is not None):
        raise ValueError("merge serves a forward read-out (reverse=False) that is given no window share a")
    gentle = _flags(gentle, gc, chunk, None if swapped_weights is None else "swapped_weights")
    w = swapped_weights if swapped_weights is not None else weights
    if w is None:
        w = read_weights(p, x, gc, chunk, prec, reverse, sub, intra_warps, gentle=gentle, merge=merge)
    elif w.shape != (N, E, H, chunk):
        raise ValueError(f"in-chunk weights must be {(N, E, H, chunk)}, got {tuple(w.shape)}")
    out_rows = E if out_rows is None else out_rows
    o = new_output(N, out_rows, H, D, dtype=dtype, device=x.device)
    win = o_win is not None
    if win and o_win.shape[1] != out_rows:
        raise ValueError(f"o_win must have the output's {out_rows} rows, got {o_win.shape[1]}")
    grid = (triton.cdiv(D, BD), E // chunk, N * H)
    y, *y_map = source_rows(y, E, H)
    h, hs, hd, h_group, h_row, span = _state_args(h, H, M, D)
    lse_win, live, p_rows, scale = _merge_args(merge, gc)
    slot_read_kernel[grid](p, x, gc, gentle, y, h, hs, hd, w, o, a if a is not None else o, o_win if win else o,
                           lse_win, live, E, H, M, D, h_row, out_rows, out_shift, *y_map, p_rows, scale, BT=chunk,
                           BM=BM, BD=BD, REVERSE=reverse, DOT_PREC=kernel_precision(prec), WIN=win,
                           SCALED=a is not None, W_SWAPPED=swapped_weights is not None, H_GROUP=h_group, SPAN=span,
                           MERGE=merge is not None, num_warps=num_warps, **_read_registers(prec, BM))
    return o


def _read_registers(prec: str, BM: int) -> dict:
    # slot_read_kernel's register cap: with "bf16" products (a prefill) and at most 64 slots it needs ~197 registers
    # per thread, and a cap of 168 fits three programs of 4 warps per SM instead of two. H200, 64k tokens x 16 heads,
    # M = 64, D = 128, the output read with the merge (benchmarks/results/ab_prefill_kernels_session17_call6_h200.log):
    # 0.687 -> 0.606 ms (a cap of 128 spills: 0.849). Near-float32 products need ~250 (no cap: it would spill)
    return {"maxnreg": 168} if prec == "bf16" and BM <= 64 else {}


def _logits_chunk(q, x, gc, gentle, y, h, chunk: int, prec: str, reverse: bool, block_d: int, num_warps: int,
                  z: Optional[torch.Tensor] = None, with_z: bool = True, with_a: bool = True):
    # slot_logits' per-chunk kernel for a scan with row inputs x `[N, E, H, M]`: z (the whole z of gentle chunks,
    # the chunk-start part of steep ones; added to `z` when given) and A = q . y `[N, E, H, chunk]` of steep chunks
    # (of every chunk without z); each None where not asked for
    N, E, H, M = x.shape
    D = y.shape[-1]
    BM, BD = _tiles(M, D, block_d)
    accumulate = z is not None
    if with_z and z is None:
        z = new_output(N, E, H, M, device=gc.device)
    a_qy = new_output(N, E, H, chunk, device=gc.device) if with_a else None
    (q, *q_map), (y, *y_map) = source_rows(q, E, H), source_rows(y, E, H)
    # an output or input the kernel's WITH_Z / WITH_A leave untouched gets gc in its place (any pointer will do)
    h, hs, hd, h_group, h_row, span = _state_args(h, H, M, D) if with_z else (gc, gc, gc, 1, D, 0)
    logits_chunk_kernel[(E // chunk, N * H)](q, x, gc, gentle if with_z else gc, y, h, hs, hd,
                                             z if with_z else gc, a_qy if with_a else gc, E, H, M, D, h_row, *q_map,
                                             *y_map,
                                             BT=chunk, BM=BM, BD=BD, ND=triton.cdiv(D, BD), REVERSE=reverse,
                                             DOT_PREC=kernel_precision(prec), WITH_Z=with_z, WITH_A=with_a,
                                             ACCUMULATE=accumulate, H_GROUP=h_group, SPAN=span,
                                             num_warps=num_warps)
    return z, a_qy


def chunk_products(q, y, gc, chunk: int, prec: str, block_d: int = 0, num_warps: int = 4) -> torch.Tensor:
    """`A[t, j] = q_t . y_j` for the rows j of t's chunk, `[N, E, H, chunk]` float32 (column j - chunk start), as
    `slot_logits(q, x, gc, y, ...)` computes them for its in-chunk part (`keep_products`), bit for bit, for every
    chunk (slot_logits keeps a steep chunk's only); q a `[N, E, H, D]` tensor, y as `slot_logits`' (a tensor or a
    `Shifted`), gc the scan's `[N, E, H, M]` chunk cumsums (for its shape: M sets the D blocks, hence the order of
    the sums)."""
    return _logits_chunk(q, gc, gc, None, y, None, chunk, prec, False, block_d, num_warps, with_z=False)[1]


def slot_logits(q, x, gc, y, h, chunk: int, prec: str, reverse: bool = False, sub: int = 16, block_d: int = 0,
                num_warps: int = 4, intra_warps: int = 4, plus: Optional[tuple] = None,
                swapped_products: Optional[tuple] = None, keep_products: bool = False,
                gentle: Optional[torch.Tensor] = None):
    """`z_t = S_t q_t`: q `[N, E, H, D]` -> `[N, E, H, M]` float32 (q, x, y and z back to front if `reverse`).

    As fla's gated slot attention, per chunk the D-contracted products (q against the chunk-start state and against
    the chunk's y, D walked in blocks of `block_d`), then the in-chunk part, whose decays are per slot (no D in
    it): in a gentle chunk (`gentle_chunks`; `gentle` the flags, default gc's) one product in the same kernel, in a
    steep one a second kernel per sub-chunk of `sub` rows (whose programs in gentle chunks return at once). `plus`:
    `(q2, x2, y2, h2)` of a second read-out with the same gates whose z is added (the backward's reverse scans:
    ds1 + ds2); its in-chunk part shares the first's decays.

    `keep_products` (not reverse): returns `(z, A)` with the in-chunk products `A[t, j] = q_t . y_j`
    `[N, E, H, chunk]` of the steep chunks (the rest unspecified). `swapped_products` (reverse only, with `gentle`
    the forward's flags flipped): one such A per read-out (two with `plus`), each of the forward read-out of the pair
    swapped (q-role y, y-role q): a reverse read-out's `A[t, j] = q_t . y_j` (j after t) is that A's entry `[j, t]`,
    so the per-chunk kernel skips a steep chunk's q . y products and y's loads (the backward's reverse logits take
    the forward's and dp's)."""
    # measured as slot_read: 4 warps for the in-chunk kernel, both kernels 1.25 ms against 1.38 with 2 warps
    # (reverse-type calls: 1.32 against 1.50); paired (`plus`), 2.59 ms at 4 warps against 2.86 at 2, 3.03 at 8 and
    # 2.79 for two calls (gpu_session9_h200.log call 4)
    N, E, H, M = x.shape
    swapped = swapped_products is not None
    if swapped and (not reverse or keep_products or len(swapped_products) != 1 + (plus is not None)):
        raise ValueError("swapped_products serve a reverse read-out, one per read-out (two with plus)")
    if keep_products and reverse:
        raise ValueError("keep_products keeps a forward read-out's products")
    gentle = _flags(gentle, gc, chunk, "swapped_products" if swapped else None)
    args = (gc, gentle)
    z, a_qy = _logits_chunk(q, x, *args, y, h, chunk, prec, reverse, block_d, num_warps, with_a=not swapped)
    a_qy2, x2 = a_qy, x
    if plus is not None:
        q2, x2, y2, h2 = plus
        _, a_qy2 = _logits_chunk(q2, x2, *args, y2, h2, chunk, prec, reverse, block_d, num_warps, z=z,
                                 with_a=not swapped)
    if swapped:
        a_qy, a_qy2 = swapped_products[0], swapped_products[-1]
        for a in swapped_products:
            if a.shape != (N, E, H, chunk):
                raise ValueError(f"in-chunk products must be {(N, E, H, chunk)}, got {tuple(a.shape)}")
    logits_intra_kernel[(E // sub, N * H)](x, gc, gentle, a_qy, z, x2, a_qy2, E, H, M, BT=chunk, BC=sub,
                                           BM=block(M), LEVELS=_levels(sub), REVERSE=reverse,
                                           DOT_PREC=kernel_precision(prec), DUAL=plus is not None, A_SWAPPED=swapped,
                                           num_warps=intra_warps)
    return (z, a_qy) if keep_products else z
