"""Triton kernels for the gate bookkeeping of the slot scan: the scan's gates from the layer's (shift, masks, GQA)
with their gradient, chunk cumsums in both scan directions and the gate gradient, each one pass over
`[N, E, H, M]` instead of PyTorch's chains of copies, flips, concatenations and cumsums.

N sequences, E time (a multiple of BT), H heads, M slots, BT chunk, NT = E // BT chunks; for `slot_gates`, S source
rows, H key/value heads and HQ = H * G query heads.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from nha.ops import chunk
from nha.ops.triton.common import block, new_output
from nha.ops.triton.slot_chunk import FUSED_SLOTS, GENTLE_SPAN

MIN_LOG_GATE = tl.constexpr(chunk.MIN_LOG_GATE)  # the clamp of every path: exp() of it is 0 in float32


@triton.jit
def _neg_expm1(g):
    # 1 - exp(g) without the cancellation near g = 0 (Kahan: expm1(g) = (u - 1) * g / log(u) with u = exp(g))
    u = tl.exp(g)
    um1 = u - 1.0
    safe = (u != 1.0) & (um1 != -1.0)
    return -tl.where(safe, um1 * g / tl.log(tl.where(safe, u, 2.0)), tl.where(u == 1.0, g, um1))


@triton.jit
def _source_rows(t, i_n, ends, valid, SHIFT, S):
    # the layer's row that step t of the scan absorbs (t - SHIFT) and whether it is a real token before the end
    src = t - SHIFT
    ok = (src >= 0) & (src < S) & (t < tl.load(ends + i_n))
    ok = ok & (tl.load(valid + i_n * S + src, mask=ok, other=0) != 0)
    return src, ok


@triton.jit
def _scan_gates(g, valid, ends, t, i_n, i_h, o_m, m_m, S, H, M, SHIFT):
    # `[BT, BM]` float32: the scan's gates at steps t (clamped; 0 where no real row enters)
    src, ok = _source_rows(t, i_n, ends, valid, SHIFT, S)
    p_src = ((i_n * S + src.to(tl.int64))[:, None] * H + i_h) * M + o_m[None, :]
    b_g = tl.load(g + p_src, mask=ok[:, None] & m_m[None, :], other=0.0).to(tl.float32)
    return tl.maximum(b_g, MIN_LOG_GATE)


@triton.jit
def slot_gates_kernel(g, valid, ends, s_in, gc, gentle, S, E, H, HQ, M, SHIFT, BT: tl.constexpr, BM: tl.constexpr):
    # step t of query head hq absorbs the gates of row t - SHIFT of key/value head hq // G, clamped; 0 elsewhere
    # (`_scan_gates`: the gates themselves are never stored), and the chunk's flag: whether its gates fall by less
    # than GENTLE_SPAN in every slot, in this scan and in the flipped one (slot_chunk.gentle_chunks: the same
    # arithmetic)
    i_t, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_hq = (i_nh // HQ).to(tl.int64), (i_nh % HQ).to(tl.int64)
    i_h = i_hq // (HQ // H)
    o_t = i_t * BT + tl.arange(0, BT)
    o_m = tl.arange(0, BM)
    m_m = o_m < M
    b_g = _scan_gates(g, valid, ends, o_t, i_n, i_h, o_m, m_m, S, H, M, SHIFT)
    p = ((i_n * E + o_t.to(tl.int64))[:, None] * HQ + i_hq) * M + o_m[None, :]
    tl.store(s_in + p, _neg_expm1(b_g).to(s_in.dtype.element_ty), mask=m_m[None, :])
    b_gc = tl.cumsum(b_g, axis=0)
    tl.store(gc + p, b_gc, mask=m_m[None, :])
    # the chunk's first gate and the next chunk's (0 after the last chunk: the flipped scan's g'_0), each loaded as a
    # block of one row: picking a row out of a [BT, BM] block is a reduction across warps (H200, 64k x 16 heads,
    # bf16 s: 0.396 -> 0.294 ms, benchmarks/results/ab_prefill_kernels_session18_call1_h200.log)
    o_1 = i_t * BT + BT + tl.arange(0, 1)
    after = tl.sum(_scan_gates(g, valid, ends, o_1, i_n, i_h, o_m, m_m & (i_t * BT + BT < E), S, H, M, SHIFT), axis=0)
    first = tl.sum(_scan_gates(g, valid, ends, o_1 - BT, i_n, i_h, o_m, m_m, S, H, M, SHIFT), axis=0)
    # the chunk's total as the sum of its gates, not the cumsum's last row: with s stored in bf16 the compiler would
    # run the cumsum a second time in the bf16 store's layout for that row (H200, 64k x 16 heads: 0.45 -> 0.40 ms;
    # benchmarks/results/ab_prefill_kernels_session17_call5_h200.log)
    last = tl.sum(b_g, axis=0)
    fall = tl.maximum(-last, first - last - after)
    flag = (tl.max(tl.where(m_m, fall, 0.0), axis=0) < GENTLE_SPAN) & (BM >= FUSED_SLOTS)
    tl.store(gentle + (i_n * (E // BT) + i_t) * HQ + i_hq, flag.to(tl.int8))


@triton.jit
def reverse_slot_gates_kernel(g, valid, ends, gcr, S, E, H, HQ, M, SHIFT, BT: tl.constexpr, BM: tl.constexpr):
    # the gates of the time-flipped scan, g'_u = g_in_(E-u) with g'_0 = 0 (g_in: slot_gates_kernel's gates of the
    # scan, made again from the layer's), summed from each chunk's start (flipped order)
    i_t, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_hq = (i_nh // HQ).to(tl.int64), (i_nh % HQ).to(tl.int64)
    o_u = i_t * BT + tl.arange(0, BT)
    o_m = tl.arange(0, BM)
    m_m = o_m < M
    b_g = _scan_gates(g, valid, ends, E - o_u, i_n, i_hq // (HQ // H), o_m, m_m, S, H, M, SHIFT)
    b_g = tl.where((o_u >= 1)[:, None], b_g, 0.0)
    rows = i_n * E + o_u.to(tl.int64)
    tl.store(gcr + (rows[:, None] * HQ + i_hq) * M + o_m[None, :], tl.cumsum(b_g, axis=0), mask=m_m[None, :])


@triton.jit
def _gate_terms(pass_term, s, ds, i_n, i_hq, t, E, HQ, M, BT: tl.constexpr, BM: tl.constexpr):
    # `[BT, BM]` for the scan steps t of query head i_hq: dG = (dz * z + p * dp) - s * ds (what both passes pass back
    # to the chunk cumsums G; ds = ds1 + ds2 what they pass back to s), ds and s
    o_m = tl.arange(0, BM)
    m_m = o_m < M
    off = ((i_n * E + t.to(tl.int64))[:, None] * HQ + i_hq) * M + o_m[None, :]
    b_ds = tl.load(ds + off, mask=m_m[None, :], other=0.0)
    b_dg = tl.load(pass_term + off, mask=m_m[None, :], other=0.0)
    b_s = tl.load(s + off, mask=m_m[None, :], other=0.0)
    return b_dg - b_s * b_ds, b_ds, b_s


@triton.jit
def gate_chunk_totals_kernel(pass_term, s, ds, tot, E, HQ, M, BT: tl.constexpr, BM: tl.constexpr):
    # tot `[N, HQ, M, NT]`: every chunk's sum of dG (chunks innermost, for later_totals_kernel's walk along rows)
    i_t, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_hq = (i_nh // HQ).to(tl.int64), (i_nh % HQ).to(tl.int64)
    b_dg, _, _ = _gate_terms(pass_term, s, ds, i_n, i_hq, i_t * BT + tl.arange(0, BT), E, HQ, M, BT, BM)
    NT = E // BT
    o_m = tl.arange(0, BM)
    tl.store(tot + ((i_n * HQ + i_hq) * M + o_m) * NT + i_t, tl.sum(b_dg, axis=0), mask=o_m < M)


@triton.jit
def _later_block(tot, later, o_r, m_r, i_b, NT, carry, BC: tl.constexpr):
    # block i_b of BC chunks of later_totals_kernel's rows: the sum after each chunk is its block's reverse cumsum,
    # less itself, plus `carry` (the blocks after it); returns the carry of the block before it
    c = i_b * BC + tl.arange(0, BC)
    m = m_r[:, None] & (c < NT)[None, :]
    p = o_r[:, None].to(tl.int64) * NT + c[None, :]
    b_tot = tl.load(tot + p, mask=m, other=0.0)
    tl.store(later + p, tl.cumsum(b_tot, axis=1, reverse=True) - b_tot + carry[:, None], mask=m)
    return carry + tl.sum(b_tot, axis=1)


@triton.jit
def later_totals_kernel(tot, final, later, R, NT, BR: tl.constexpr, BC: tl.constexpr, HAS_FINAL: tl.constexpr):
    # later `[R, NT]`: for each of R rows (sequence, query head, slot), the sum of the chunk totals after each chunk,
    # plus the final states' term of the row: one walk from the last block of BC chunks back to the first. (The
    # first block comes after the loop: a loop whose carried sum nothing reads afterwards trips an assertion in
    # Triton 3.6's TritonGPUOptimizeThreadLocality pass.)
    o_r = tl.program_id(0) * BR + tl.arange(0, BR)
    m_r = o_r < R
    carry = tl.zeros([BR], dtype=tl.float32)
    if HAS_FINAL:
        carry = tl.load(final + o_r, mask=m_r, other=0.0)
    blocks = tl.cdiv(NT, BC)
    for k in range(1, blocks):
        carry = _later_block(tot, later, o_r, m_r, blocks - k, NT, carry, BC)
    _later_block(tot, later, o_r, m_r, 0, NT, carry, BC)


@triton.jit
def slot_gates_grad_kernel(g, valid, ends, pass_term, s, ds, later, dg, S, E, H, HQ, M, SHIFT,
                           BT: tl.constexpr, BM: tl.constexpr):
    # for one chunk of scan steps t and one key/value head: the gradient of the scan's gates summed over the group's
    # query heads, dg_in_t = sum_(t' >= t) dG_t' (this chunk's reverse cumsum plus `later`: the chunks after it and
    # the final states' term) + (ds1 + ds2)_t (s_t - 1) (d s / d g = s - 1), stored at the layer's row t - SHIFT
    i_t, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = (i_nh // H).to(tl.int64), (i_nh % H).to(tl.int64)
    G = HQ // H
    NT = E // BT
    t = i_t * BT + tl.arange(0, BT)
    o_m = tl.arange(0, BM)
    m_m = o_m < M
    acc = tl.zeros([BT, BM], dtype=tl.float32)
    for i_g in range(0, G):
        i_hq = i_h * G + i_g
        b_dg, b_ds, b_s = _gate_terms(pass_term, s, ds, i_n, i_hq, t, E, HQ, M, BT, BM)
        b_later = tl.load(later + ((i_n * HQ + i_hq) * M + o_m) * NT + i_t, mask=m_m, other=0.0)
        acc += tl.cumsum(b_dg, axis=0, reverse=True) + b_later[None, :] + b_ds * (b_s - 1.0)
    src, ok = _source_rows(t, i_n, ends, valid, SHIFT, S)
    inside = (src >= 0) & (src < S)
    p_g = ((i_n * S + src.to(tl.int64))[:, None] * H + i_h) * M + o_m[None, :]
    m_g = inside[:, None] & m_m[None, :]
    b_graw = tl.load(g + p_g, mask=m_g, other=0.0).to(tl.float32)
    # a row that never entered the slots (padding, past its sequence's end) or whose gate was clamped passes nothing
    acc = tl.where(ok[:, None] & (b_graw >= MIN_LOG_GATE), acc, 0.0)
    tl.store(dg + p_g, acc.to(dg.dtype.element_ty), mask=m_g)


def _grid(x: torch.Tensor, chunk: int) -> tuple[int, int]:
    return x.shape[1] // chunk, x.shape[0] * x.shape[2]


def reverse_slot_gates(g, valid_i8, ends, shift: int, group: int, length: int, chunk: int) -> torch.Tensor:
    """The chunk cumsums of the time-flipped slot scan's gates `g'_u = g_in_(E-u)`, `g'_0 = 0` (E = `length`), where
    g_in are the scan's gates that `slot_gates` (same arguments) makes from the layer's: `[N, E, H * G, M]` float32,
    flipped order (row u is time E - 1 - u). The backward makes them from the layer's gates g rather than keep g_in:
    a training forward writes 4 bytes per element and slot less, and this kernel reads g in its own dtype."""
    N, S, H, M = g.shape
    HQ = H * group
    gcr = new_output(N, length, HQ, M, device=g.device)
    reverse_slot_gates_kernel[(length // chunk, N * HQ)](g, valid_i8, ends, gcr, S, length, H, HQ, M, shift, BT=chunk,
                                                         BM=block(M))
    return gcr


def reverse_chunk_cumsum(g: torch.Tensor, chunk: int) -> torch.Tensor:
    """`[N, E, H, M]` gates already in scan order (every row valid, no shift; clamped at MIN_LOG_GATE as all gates
    are) -> the chunk cumsums of the time-flipped scan's gates `g'_u = g_(E-u)`, `g'_0 = 0` (`reverse_slot_gates`)."""
    N, E = g.shape[:2]
    valid = torch.ones(N, E, dtype=torch.int8, device=g.device)
    return reverse_slot_gates(g, valid, torch.full((N,), E, device=g.device), 0, 1, E, chunk)


def slot_gates(g, valid_i8, ends, shift: int, group: int, length: int, chunk: int,
               s_dtype: torch.dtype = torch.float32):
    """The slot scan's gates from the layer's: step t of query head hq absorbs row `t - shift` of key/value head
    `hq // group`, clamped at MIN_LOG_GATE, while it is a valid row and t < `ends[n]`; 0 (an identity step) elsewhere.

    Args:
        g: `[N, S, H, M]` log gates in any float dtype; valid_i8: `[N, S]` int8; ends: `[N]` int64.
        shift: the window w (rows enter the slots w steps late); group: G; length: E, a multiple of `chunk`.
        s_dtype: s_in's dtype: float32 (the backward's gate gradient needs it), or bfloat16 for a prefill of bf16
            inputs (half the bytes of the slot kernels' row input; `slot_chunk.dot_precision`'s "bf16" rounds it to
            bf16 in every product anyway).

    Returns:
        `(s_in, gc, gentle)`: `[N, E, H * G, M]` the write strengths `1 - exp(g_in)` (in `s_dtype`) of the scan's
        gates g_in (never stored: `reverse_slot_gates` makes them again for the backward) and g_in's chunk cumsums
        (float32); `[N, E / chunk, H * G]` int8 the chunks' `slot_chunk.gentle_chunks(gc, chunk)` flags (the same
        test, each chunk's total summed in another order).
    """
    N, S, H, M = g.shape
    HQ = H * group
    s_in = new_output(N, length, HQ, M, dtype=s_dtype, device=g.device)
    gc = new_output(N, length, HQ, M, device=g.device)
    gentle = new_output(N, length // chunk, HQ, dtype=torch.int8, device=g.device)
    slot_gates_kernel[(length // chunk, N * HQ)](g, valid_i8, ends, s_in, gc, gentle, S, length, H, HQ, M, shift,
                                                 BT=chunk, BM=block(M))
    return s_in, gc, gentle


def slot_gates_grad(g, valid_i8, ends, shift: int, chunk: int, s_in, pass_term, ds,
                    final_term: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The gradient of g `[N, S, H, M]` (in g's dtype) through `slot_gates`, from what both slot passes pass back.

    The scan's gates reach the output through the chunk cumsums G and through the write strengths s = 1 - exp(g_in):
    `dg_in_t = sum_(t' >= t) dG_t' + final_term + (ds1 + ds2)_t (s_t - 1)` with
    `dG = dz * z + p * dp - s * (ds1 + ds2)`; then each layer row gets what its step (`shift` later) of every query
    head of its group got.

    Args:
        s_in: `[N, E, HQ, M]` float32 write strengths (`slot_gates`' second output); E a multiple of `chunk`.
        pass_term: `dz * z + p * dp` (pass 1's logit gradient times its logits plus pass 2's weights times their
            gradient; `merge.merge_backward` writes it); ds: ds1 + ds2, both passes' gradient of s
            (`slot_scan.reverse_scans`); both `[N, E, HQ, M]` float32, contiguous.
        final_term: `[N, HQ, M]` the final states' share, rowsum(dS_E * S_E) of both passes (None: no final grads).
    """
    N, S, H, M = g.shape
    E, HQ = s_in.shape[1], s_in.shape[2]
    NT = E // chunk
    terms = (pass_term, s_in, ds)
    BM = block(M)
    tot = new_output(N, HQ, M, NT, device=g.device)
    gate_chunk_totals_kernel[_grid(s_in, chunk)](*terms, tot, E, HQ, M, BT=chunk, BM=BM)
    # the chunks after each chunk, in one kernel (PyTorch's flip / cumsum / flip / sub / add took 0.19 ms of 32
    # sequences of 2k tokens x 16 heads on an H200, gpu_session10_h200.log call 1)
    later = new_output(N, HQ, M, NT, device=g.device)
    R, BR = N * HQ * M, 32
    final = tot if final_term is None else final_term.float().contiguous()
    later_totals_kernel[(triton.cdiv(R, BR),)](tot, final, later, R, NT,
                                               BR=BR, BC=min(128, block(NT)), HAS_FINAL=final_term is not None)
    dg = new_output(N, S, H, M, dtype=g.dtype, device=g.device)
    slot_gates_grad_kernel[(NT, N * H)](g, valid_i8, ends, *terms, later, dg, S, E, H, HQ, M, shift,
                                        BT=chunk, BM=BM)
    if E - shift < S:  # the last rows never reach the slots (an unbounded window: none does)
        dg[:, max(0, E - shift):] = 0
    return dg
