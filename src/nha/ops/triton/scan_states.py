"""Triton kernels that make the gated slot scan's chunk-start states, which slot_chunk.py's read-outs take
(NHA_SPEC section 5; the scan, its read-outs and the shapes are slot_chunk.py's).

N sequences, E time (a multiple of BT), H heads, M slots, D column dim (K or V), BT chunk, NT chunks, NS segments.

Two ways, one per kind of scan:
  the forward scans (`slot_states_pair`: NHA's k and v passes at once): in segments of chunks, one program per
    segment walking its chunks with the states in registers, a walk over the segments, and the read-outs adding a
    segment's start state to each chunk's own (`ChunkStates`, slot_chunk.py);
  any scan, the backward's reverse ones (`slot_states`): every chunk's sum in parallel, then an element-wise walk
    over every chunk.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from nha.ops.triton.common import block, kernel_precision, new_output
from nha.ops.triton.shift import Shifted
from nha.ops.triton.slot_chunk import ChunkStates, _mm, _source, _tiles, _time, source_rows

@triton.jit
def _decayed_sum(b_xw, y, t, i_n, i_h, o_d, D, Y_ROWS, Y_HEADS, Y_SHIFT, Y_GROUP, DOT_PREC: tl.constexpr):
    # (x_j exp(G_last - G_j))^T y_j `[BM, BD]` over one chunk's times t, for the D block o_d of y's D columns
    y_rows, y_ok = _source(t, i_n, i_h, Y_ROWS, Y_HEADS, Y_SHIFT, Y_GROUP)
    b_y = tl.load(y + y_rows[:, None] * D + o_d[None, :], mask=y_ok[:, None] & (o_d < D)[None, :], other=0.0)
    return _mm(tl.trans(b_xw), b_y, DOT_PREC)


@triton.jit
def _decayed_rows(x, gc, i_n, i_t, x_h, XH, E, M, o_m, m_m, live, BT: tl.constexpr, REVERSE: tl.constexpr):
    # chunk i_t of head x_h (of x's and gc's XH heads): its times t (storage order), x_j exp(G_last - G_j) `[BT, BM]`
    # (every factor <= 1) and G_last `[BM]`, zeros where not `live`
    o_t = tl.arange(0, BT)
    rows = i_n * E + (i_t * BT + o_t).to(tl.int64)
    t = _time(i_t * BT + o_t, E, REVERSE)
    rows_in = i_n * E + t.to(tl.int64)
    m = m_m[None, :] & live
    b_x = tl.load(x + (rows_in[:, None] * XH + x_h) * M + o_m[None, :], mask=m, other=0.0).to(tl.float32)
    b_gc = tl.load(gc + (rows[:, None] * XH + x_h) * M + o_m[None, :], mask=m, other=0.0)
    last = (i_n * E + i_t * BT + BT - 1).to(tl.int64)
    b_glast = tl.load(gc + (last * XH + x_h) * M + o_m, mask=m_m & live, other=0.0)
    return t, b_x * tl.exp(b_glast[None, :] - b_gc), b_glast


@triton.jit
def _state_program(E, H, M, BT: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr, X_GROUP: tl.constexpr):
    # a state kernel's program (grid: D blocks, chunks or segments, N * H): its D block, chunk or segment, sequence,
    # state head, x's heads and this head's among them (X_GROUP as chunk_sums_kernel's), NT chunks, slot and column
    # offsets, slot mask
    i_d, i_c, i_nh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_h = (i_nh // H).to(tl.int64), (i_nh % H).to(tl.int64)
    o_m = tl.arange(0, BM)
    return (i_d, i_c, i_n, i_h, H * X_GROUP, i_h * X_GROUP, E // BT, o_m, i_d * BD + tl.arange(0, BD), o_m < M)


@triton.jit
def chunk_sums_kernel(
    x, gc, y, h,
    E, H, M, D, Y_ROWS, Y_HEADS, Y_SHIFT, Y_GROUP,
    BT: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr, REVERSE: tl.constexpr, DOT_PREC: tl.constexpr,
    X_GROUP: tl.constexpr = 1,
):
    # what one chunk adds to the state, decayed to the chunk end: sum_j exp(G_last - G_j) x_j (x) y_j `[M, D]`
    # (chunks are independent: every chunk of every (sequence, head) in parallel); written where its state will go.
    # H state heads; x and gc have H * X_GROUP heads, of which state head i reads head i * X_GROUP (GQA: a group's
    # query heads hold the same gates, so one state serves them all)
    i_d, i_t, i_n, i_h, XH, x_h, NT, o_m, o_d, m_m = _state_program(E, H, M, BT, BM, BD, X_GROUP)
    t, b_xw, _ = _decayed_rows(x, gc, i_n, i_t, x_h, XH, E, M, o_m, m_m, i_t < NT, BT, REVERSE)
    p_row = ((i_n * H + i_h) * NT + i_t) * M * D + o_m * D
    b_s = _decayed_sum(b_xw, y, t, i_n, i_h, o_d, D, Y_ROWS, Y_HEADS, Y_SHIFT, Y_GROUP, DOT_PREC)
    tl.store(h + p_row[:, None] + o_d[None, :], b_s, mask=m_m[:, None] & (o_d < D)[None, :])


@triton.jit
def _chunk_step(h, gc, base, i_n, i_h, i_t, o_e, o_m, m_e, E, H, M, D, NT, BT: tl.constexpr):
    # chunk i_t's sum `[BLOCK]` and its decay exp(G_last) per element (sum 0, decay 1 past the last chunk); i_h, H:
    # gc's head and head count
    m = m_e & (i_t < NT)
    b_sum = tl.load(h + base + i_t * M * D + o_e, mask=m, other=0.0)
    b_g = tl.load(gc + ((i_n * E + (i_t + 1) * BT - 1) * H + i_h) * M + o_m, mask=m, other=0.0)
    return b_sum, tl.exp(b_g)


@triton.jit
def state_scan_kernel(
    gc, h0, h, states, ht,
    E, H, M, D,
    BT: tl.constexpr, BLOCK: tl.constexpr, HAS_H0: tl.constexpr, X_GROUP: tl.constexpr = 1,
):
    # S_(c+1) = exp(G_last(c)) * S_c + sum_c, element by element (the gates are diagonal): a sequential walk over
    # chunks with no matrix product in it; h holds the chunk sums, `states` gets the chunk-start states in its dtype
    # (it may be h itself: then every sum is overwritten by its state; the walk stays float32 either way). The
    # walk is latency-bound, so it goes four chunks at a time with the next four's loads in flight (every thread
    # stores only elements it loaded itself, so overwriting a sum with a state needs no barrier). gc has
    # H * X_GROUP heads, as chunk_sums_kernel's.
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
    args = (h, gc, base, i_n, i_h * X_GROUP)
    XH = H * X_GROUP
    s0, a0 = _chunk_step(*args, 0, o_e, o_m, m_e, E, XH, M, D, NT, BT)
    s1, a1 = _chunk_step(*args, 1, o_e, o_m, m_e, E, XH, M, D, NT, BT)
    s2, a2 = _chunk_step(*args, 2, o_e, o_m, m_e, E, XH, M, D, NT, BT)
    s3, a3 = _chunk_step(*args, 3, o_e, o_m, m_e, E, XH, M, D, NT, BT)
    for i_t in range(0, NT, 4):
        n0, d0 = _chunk_step(*args, i_t + 4, o_e, o_m, m_e, E, XH, M, D, NT, BT)
        n1, d1 = _chunk_step(*args, i_t + 5, o_e, o_m, m_e, E, XH, M, D, NT, BT)
        n2, d2 = _chunk_step(*args, i_t + 6, o_e, o_m, m_e, E, XH, M, D, NT, BT)
        n3, d3 = _chunk_step(*args, i_t + 7, o_e, o_m, m_e, E, XH, M, D, NT, BT)
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
def segment_states_kernel(
    x, gc, y, y2, h, tot, lg, dec,
    E, H, M, D, Y_ROWS, Y_HEADS, Y_SHIFT, Y_GROUP, D2, Y2_ROWS, Y2_HEADS, Y2_SHIFT, Y2_GROUP,
    BT: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr, SPAN: tl.constexpr, DOT_PREC: tl.constexpr,
    X_GROUP: tl.constexpr = 1,
):
    # Two forward scans over the same x and gates (y `[.., D]`, y2 `[.., D2]`: NHA's k and v) in segments of SPAN
    # chunks (`ChunkStates`): one program per D block, segment and (sequence, head) walks the segment's chunks in
    # order with both states in registers, from empty slots. At every chunk it stores the states so far (the
    # chunk-start states less the segment's incoming ones' decayed share) in h's dtype and, from the first D block,
    # that share's decay exp(G since the segment start) `[M]` in dec `[N, H, NT, M]`; at the end the segment's own
    # sums in tot `[N, H, NS, M, D + D2]` float32 and its log decay in lg `[N, NS, H, M]` (state_scan_kernel's gates
    # of one-row chunks, for the walk over segments). h's and tot's rows hold both states, `[D | D2]`; X_GROUP as
    # chunk_sums_kernel's.
    i_d, i_s, i_n, i_h, XH, x_h, NT, o_m, o_d, m_m = _state_program(E, H, M, BT, BM, BD, X_GROUP)
    NS = tl.cdiv(NT, SPAN)
    HR = D + D2
    m_1, m_2 = m_m[:, None] & (o_d < D)[None, :], m_m[:, None] & (o_d < D2)[None, :]
    b_h = tl.zeros([BM, BD], dtype=tl.float32)
    b_h2 = tl.zeros([BM, BD], dtype=tl.float32)
    b_lg = tl.zeros([BM], dtype=tl.float32)
    for i_c in range(0, SPAN):
        i_t = i_s * SPAN + i_c
        live = i_t < NT  # the last segment may be short
        t, b_xw, b_glast = _decayed_rows(x, gc, i_n, i_t, x_h, XH, E, M, o_m, m_m, live, BT, False)
        tl.store(dec + ((i_n * H + i_h) * NT + i_t) * M + o_m, tl.exp(b_lg), mask=m_m & live & (i_d == 0))
        p_row = (((i_n * H + i_h) * NT + i_t) * M + o_m) * HR
        tl.store(h + p_row[:, None] + o_d[None, :], b_h.to(h.dtype.element_ty), mask=m_1 & live)
        b_a = tl.exp(b_glast)[:, None]
        b_h = b_h * b_a + _decayed_sum(b_xw, y, t, i_n, i_h, o_d, D, Y_ROWS, Y_HEADS, Y_SHIFT, Y_GROUP, DOT_PREC)
        tl.store(h + D + p_row[:, None] + o_d[None, :], b_h2.to(h.dtype.element_ty), mask=m_2 & live)
        b_h2 = b_h2 * b_a + _decayed_sum(b_xw, y2, t, i_n, i_h, o_d, D2, Y2_ROWS, Y2_HEADS, Y2_SHIFT, Y2_GROUP,
                                         DOT_PREC)
        b_lg += b_glast
    p_tot = (((i_n * H + i_h) * NS + i_s) * M + o_m) * HR
    tl.store(tot + p_tot[:, None] + o_d[None, :], b_h, mask=m_1)
    tl.store(tot + D + p_tot[:, None] + o_d[None, :], b_h2, mask=m_2)
    tl.store(lg + ((i_n * NS + i_s) * H + i_h) * M + o_m, b_lg, mask=m_m & (i_d == 0))


def slot_states(x, gc, y, h0, chunk: int, prec: str, reverse: bool = False, block_d: int = 0,
                num_warps: int = 4, group: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """States at every chunk start `[N, H, NT, M, D]` and the final state `[N, H, M, D]` (float32).

    `group` > 1 (GQA, forward scans): x and gc `[N, E, H * group, M]` repeat every state's values over a group of
    `group` heads (the query heads of one key/value head), y is a `Shifted` whose group `group` divides, and h0 is
    `[N, H, M, D]`: one state per group, which the read-outs take for each of its heads (they see the states' head
    count), instead of `group` equal ones.

    Two kernels: every chunk's own sum in parallel (the matrix products), then an element-wise walk over the chunks
    (up to 512 state elements per program). A forward scan over bf16 y gets bf16 chunk-start states (rounded once
    each; the sums and the walk stay float32): half the state traffic of its read-outs, native products against bf16
    queries. The backward's reverse scans keep float32 states: the gate gradient is a difference of large terms
    computed from them (bf16 there put dg at ~1e-2 relative error in a CPU emulation; bf16 chunk sums too, even in
    the forward scans only: benchmarks/results/emulate_bf16_rounding_cpu.txt).
    `gc` is always in scan order; with `reverse`, x and y are read back to front (time t is row E - 1 - t).
    `block_d` and `num_warps` are the chunk sums' D block (default: `_tiles`) and warps."""
    N, E, _, M = x.shape
    H = _state_heads(x, (y,), group)
    D = y.shape[-1]
    BM, BD = _tiles(M, D, block_d)
    h = new_output(N, H, E // chunk, M, D, device=x.device)
    ht = new_output(N, H, M, D, device=x.device)
    # a Shifted's group maps x's heads to y's: state head i (x's head i * group) reads y's head i * group // y_group
    y, rows, heads, shift, y_group = source_rows(y, E, H)
    chunk_sums_kernel[(triton.cdiv(D, BD), E // chunk, N * H)](
        x, gc, y, h, E, H, M, D, rows, heads, shift, y_group // group, BT=chunk, BM=BM, BD=BD, REVERSE=reverse,
        DOT_PREC=kernel_precision(prec), X_GROUP=group, num_warps=num_warps)
    half = y.dtype == torch.bfloat16 and not reverse and prec != "ieee"
    states = new_output(N, H, E // chunk, M, D, dtype=torch.bfloat16, device=x.device) if half else h
    _walk(gc, h0, h, states, ht, E, chunk, group)
    return states, ht


def slot_states_pair(x, gc, y1, y2, h0_1, h0_2, chunk: int, prec: str, group: int = 1, span: int = 32,
                     block_d: int = 0, num_warps: int = 4, num_stages: int = 1) -> tuple:
    """`((h1, ht1), (h2, ht2))`: the chunk-start states (`ChunkStates`) and final states (float32) of two forward
    scans over the same x and gates (NHA's two passes: y1 = k, y2 = v), arguments as `slot_states`'.

    In segments of `span` chunks: one program per segment walks its chunks with both states in registers from
    empty slots (`segment_states_kernel`: x, the gates and their decays loaded once for both), storing each chunk's
    state so far; an element-wise walk over the segments' sums then makes every segment's start state and the final
    ones. The read-outs add a segment's start state, decayed, to its chunks' own (`_chunk_state`): no float32 chunk
    sums written and read back, and no walk over every chunk (`slot_states`' two kernels). The local states are bf16
    where `slot_states` would round its states to bf16 (then rounded twice: here, and with the start state's share
    added), else float32. h1 and h2 hold views of the same tensors (rows `[D1 | D2]`).

    `span`, `block_d` (default 64 or less), `num_warps`, `num_stages`: the segment kernel's launch. H200, 64k tokens
    x 16 heads, M = 64, K = V = 128 (gpu_session15_h200.log, tune_segment_states.py): 0.78 ms at the defaults
    against 1.04 for the paired chunk sums and walk, 1.21 for two `slot_states`; D blocks of 128, 8 warps or
    pipelined loads (stages 2-3) spill its 255 registers and run 0.9-2.1 ms. The read-outs take ~0.09 ms more for
    the start states."""
    N, E, _, M = x.shape
    H = _state_heads(x, (y1, y2), group)
    widths = (y1.shape[-1], y2.shape[-1])
    row = sum(widths)
    BM, BD = _tiles(M, max(widths), block_d or min(64, block(max(widths))))
    NT = E // chunk
    NS = triton.cdiv(NT, span)
    half = y1.dtype == y2.dtype == torch.bfloat16 and prec != "ieee"
    local = new_output(N, H, NT, M, row, dtype=torch.bfloat16 if half else torch.float32, device=x.device)
    start = new_output(N, H, NS, M, row, device=x.device)  # the segments' own sums, then (in place) start states
    log_decay = new_output(N, NS, H, M, device=x.device)
    decay = new_output(N, H, NT, M, device=x.device)
    ht = new_output(N, H, M, row, device=x.device)
    maps = [source_rows(y, E, H) for y in (y1, y2)]
    maps = [(y, D, rows, heads, shift, y_group // group) for D, (y, rows, heads, shift, y_group) in zip(widths, maps)]
    segment_states_kernel[(triton.cdiv(max(widths), BD), NS, N * H)](
        x, gc, maps[0][0], maps[1][0], local, start, log_decay, decay, E, H, M, *maps[0][1:], *maps[1][1:], BT=chunk,
        BM=BM, BD=BD, SPAN=span, DOT_PREC=kernel_precision(prec), X_GROUP=group, num_warps=num_warps,
        num_stages=num_stages)
    h0 = None if h0_1 is None and h0_2 is None else torch.cat(  # both side by side, as the sums' rows (None: empty)
        [start.new_zeros(N, H, M, D) if a is None else a.float() for a, D in zip((h0_1, h0_2), widths)], dim=-1)
    _walk(log_decay, h0, start, start, ht, NS, 1, 1)
    D1 = widths[0]
    return ((ChunkStates(local[..., :D1], start[..., :D1], decay, span), ht[..., :D1].contiguous()),
            (ChunkStates(local[..., D1:], start[..., D1:], decay, span), ht[..., D1:].contiguous()))


def _state_heads(x, ys: tuple, group: int) -> int:
    # the state heads of a forward scan over x `[N, E, H * group, M]` (checks that the group fits x and y)
    if group < 1 or x.shape[2] % group:
        raise ValueError(f"a group of {group} heads must divide x's {x.shape[2]} heads")
    if group > 1 and not all(isinstance(y, Shifted) and y.group % group == 0 for y in ys):
        raise ValueError(f"with a group of {group} heads, y must be a Shifted whose group {group} divides")
    return x.shape[2] // group


def _walk(gates, h0, sums, states, ht, E: int, chunk: int, group: int) -> None:
    # state_scan_kernel over sums `[N, H, E // chunk, M, row]` from h0 `[N, H, M, row]` (None: empty slots) with the
    # decays of `gates`' chunk totals, into states (may be sums) and ht.
    # 512 elements per program at 8 warps (H200, 64k tokens x 16 heads, M = 64, D = 128; gpu_session8_h200.log,
    # tune_state_walk.py): 0.316 -> 0.262 ms writing bf16 states, 0.346 -> 0.315 in place, against 1024 at 4
    N, H, _, M, row = sums.shape
    width = min(512, block(M * row, least=1))
    state_scan_kernel[(triton.cdiv(M * row, width), N * H)](gates, h0 if h0 is not None else ht, sums, states, ht, E,
                                                            H, M, row, BT=chunk, BLOCK=width, HAS_H0=h0 is not None,
                                                            X_GROUP=group, num_warps=max(1, width // 64))
