"""One fused NHA decoding step per sequence over its state (slots + window ring buffer), in one Triton kernel.

B sequences, HQ query heads, H key/value heads, G = HQ // H, K/V head dims, M slots, L window rows, BL row block.
One program per (sequence, query head): it absorbs the token leaving the window into the slots (the group's first
head writes the new slots), then takes one softmax over the M slot logits, the live window rows and the new token.
The kernel writes the whole new state (the group's first head copies its ring buffer rows with the new token in
place), so a step is one launch and a few allocations, with no host sync for a bounded window.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from nha.ops.checks import check_inputs
from nha.ops.precision import without_autocast
from nha.ops.recurrent import recurrent_nha_step
from nha.ops.state import NHAState
from nha.ops.triton.common import MAX_HEAD_DIM, MAX_SLOTS, SUPPORTED_DTYPES, CompiledLaunch, block, new_output


@triton.jit(do_not_specialize=["L"])
def decode_kernel(
    q, k, v, g, qw, kw, sk, sv, wk, wv, wg, wkw, seen, live,
    sk_out, sv_out, wk_out, wv_out, wg_out, wkw_out, seen_out, live_out, o,
    scale, L,
    HQ: tl.constexpr, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, M: tl.constexpr, WINDOW: tl.constexpr,
    MODE: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BL: tl.constexpr,
):
    # L (the ring buffer's rows) is a plain argument: an unbounded window grows it by a row a step
    # MODE 0: w == 0 (the token itself is absorbed, no window); 1: bounded window; 2: unbounded (nothing absorbed)
    i_b, i_hq = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64)
    G = HQ // H
    i_h = i_hq // G
    first_of_group = i_hq % G == 0
    o_m, o_k, o_v = tl.arange(0, BM), tl.arange(0, BK), tl.arange(0, BV)
    m_m, m_k, m_v = o_m < M, o_k < K, o_v < V
    b_seen = tl.load(seen + i_b)
    b_live = tl.load(live + i_b) != 0
    cur = b_seen % tl.maximum(L, 1)
    # the token that enters the slots now, if any
    if MODE == 0:
        absorb = b_seen >= 0
        p_j = i_b * H + i_h
        b_kj = tl.load(k + p_j * K + o_k, mask=m_k, other=0.0).to(tl.float32)
        b_vj = tl.load(v + p_j * V + o_v, mask=m_v, other=0.0).to(tl.float32)
        b_gj = tl.load(g + p_j * M + o_m, mask=m_m, other=0.0).to(tl.float32)
    else:
        if MODE == 1:
            absorb = b_seen >= WINDOW
        else:
            absorb = b_seen < 0
        p_j = (i_b * L + cur) * H + i_h
        b_kj = tl.load(wk + p_j * K + o_k, mask=m_k & absorb, other=0.0).to(tl.float32)
        b_vj = tl.load(wv + p_j * V + o_v, mask=m_v & absorb, other=0.0).to(tl.float32)
        b_gj = tl.load(wg + p_j * M + o_m, mask=m_m & absorb, other=0.0).to(tl.float32)
    b_a = tl.where(absorb, tl.exp(b_gj), 1.0)
    b_s = 1.0 - b_a
    b_live = b_live | absorb
    p_sk = ((i_b * H + i_h) * M + o_m[:, None]) * K + o_k[None, :]
    b_sk = tl.load(sk + p_sk, mask=m_m[:, None] & m_k[None, :], other=0.0)
    b_sk = b_a[:, None] * b_sk + b_s[:, None] * b_kj[None, :]
    b_q = tl.load(q + (i_b * HQ + i_hq) * K + o_k, mask=m_k, other=0.0).to(tl.float32)
    b_z = tl.sum(b_sk * b_q[None, :], axis=1) * scale
    b_z = tl.where(m_m & b_live, b_z, float("-inf"))
    tl.store(sk_out + p_sk, b_sk, mask=m_m[:, None] & m_k[None, :] & first_of_group)
    if i_hq == 0:
        tl.store(live_out + i_b, b_live.to(live_out.dtype.element_ty))
        tl.store(seen_out + i_b, b_seen + 1)

    # window: the new token, then the live rows of the ring buffer except the one it replaces (online softmax)
    b_mw = tl.full([1], -1e30, dtype=tl.float32)
    b_lw = tl.zeros([1], dtype=tl.float32)
    b_acc = tl.zeros([BV], dtype=tl.float32)
    if MODE != 0:
        b_qw = tl.load(qw + (i_b * HQ + i_hq) * K + o_k, mask=m_k, other=0.0).to(tl.float32)
        b_kc = tl.load(kw + (i_b * H + i_h) * K + o_k, mask=m_k, other=0.0).to(tl.float32)
        b_mw = tl.zeros([1], dtype=tl.float32) + tl.sum(b_qw * b_kc) * scale
        b_lw = tl.full([1], 1.0, dtype=tl.float32)
        b_acc = tl.load(v + (i_b * H + i_h) * V + o_v, mask=m_v, other=0.0).to(tl.float32)
        for start in range(0, L, BL):
            rows = start + tl.arange(0, BL)
            m_r = (rows < L) & (rows < b_seen) & (rows != cur)
            p_r = (i_b * L + rows.to(tl.int64)) * H + i_h
            b_kw = tl.load(wkw + p_r[:, None] * K + o_k[None, :], mask=m_r[:, None] & m_k[None, :], other=0.0)
            b_l = tl.sum(b_kw.to(tl.float32) * b_qw[None, :], axis=1) * scale
            b_l = tl.where(m_r, b_l, float("-inf"))
            b_mnew = tl.maximum(b_mw, tl.max(b_l, axis=0))
            b_p = tl.exp(b_l - b_mnew)
            b_alpha = tl.exp(b_mw - b_mnew)
            b_vw = tl.load(wv + p_r[:, None] * V + o_v[None, :], mask=m_r[:, None] & m_v[None, :], other=0.0)
            b_acc = b_acc * b_alpha + tl.sum(b_p[:, None] * b_vw.to(tl.float32), axis=0)
            b_lw = b_lw * b_alpha + tl.sum(b_p, axis=0)
            b_mw = b_mnew
        if first_of_group:  # the new ring buffer: the old rows, the new token in row `cur`
            _copy_rows(wk, wk_out, k, i_b, i_h, H, K, L, cur, BK, BL)
            _copy_rows(wv, wv_out, v, i_b, i_h, H, V, L, cur, BV, BL)
            _copy_rows(wg, wg_out, g, i_b, i_h, H, M, L, cur, BM, BL)
            _copy_rows(wkw, wkw_out, kw, i_b, i_h, H, K, L, cur, BK, BL)

    # one softmax over slots and window
    b_m = tl.maximum(b_mw, tl.max(b_z, axis=0))
    b_ps = tl.exp(b_z - b_m)
    b_den = tl.sum(b_ps, axis=0) + b_lw * tl.exp(b_mw - b_m)
    p_sv = ((i_b * H + i_h) * M + o_m[:, None]) * V + o_v[None, :]
    b_sv = tl.load(sv + p_sv, mask=m_m[:, None] & m_v[None, :], other=0.0)
    b_sv = b_a[:, None] * b_sv + b_s[:, None] * b_vj[None, :]
    tl.store(sv_out + p_sv, b_sv, mask=m_m[:, None] & m_v[None, :] & first_of_group)
    b_o = (tl.sum(b_ps[:, None] * b_sv, axis=0) + b_acc * tl.exp(b_mw - b_m)) / b_den
    tl.store(o + (i_b * HQ + i_hq) * V + o_v, b_o.to(o.dtype.element_ty), mask=m_v)


@triton.jit
def _copy_rows(src, dst, new, i_b, i_h, H, D, L, cur, BD: tl.constexpr, BL: tl.constexpr):
    # dst[b, :, h] = src[b, :, h] with row `cur` replaced by the new token's `new[b, h]` (`[B, L, H, D]` buffers)
    o_d = tl.arange(0, BD)
    m_d = o_d < D
    b_new = tl.load(new + (i_b * H + i_h) * D + o_d, mask=m_d, other=0.0)
    for start in range(0, L, BL):
        rows = start + tl.arange(0, BL)
        p_r = ((i_b * L + rows.to(tl.int64)) * H + i_h)[:, None] * D + o_d[None, :]
        m_r = (rows < L)[:, None] & m_d[None, :]
        b_x = tl.load(src + p_r, mask=m_r, other=0.0)
        b_x = tl.where((rows == cur)[:, None], b_new[None, :].to(b_x.dtype), b_x)
        tl.store(dst + p_r, b_x, mask=m_r)


_launch_decode = CompiledLaunch(decode_kernel)


@without_autocast
def triton_nha_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    window_size: Optional[int],
    state: NHAState,
    *,
    q_win: Optional[torch.Tensor] = None,
    k_win: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
    check_gates: bool = True,
) -> tuple[torch.Tensor, NHAState]:
    """One decoding step in one kernel; same arguments and results as `recurrent_nha_step` (no autograd).

    Inputs that need gradients, or that the kernel does not cover (float64, head dims > 256, M > 128, M == 0),
    run `recurrent_nha_step` instead. The input state is left unchanged; the new state shares nothing with it.

    Args:
        q: `[B, 1, HQ, K]`, k: `[B, 1, H, K]`, v: `[B, 1, H, V]`, g: `[B, 1, H, M]` (`<= 0`).
        window_size: `w >= 0`, or None; state: the `NHAState` of the B sequences.
        q_win, k_win: this token's window-path query/key (default q, k); scale: default `K ** -0.5`.
        check_gates: check that g holds no NaN and nothing > 0 (on CUDA that reads g back: a host sync).

    Returns:
        `o` `[B, 1, HQ, V]` and the new `NHAState`.

    Example:
        >>> state = NHAState.empty(16, 8, 64, 128, 128, window_size=64, dtype=torch.bfloat16, device="cuda")
        >>> o, state = triton_nha_step(q, k, v, g, 64, state)  # q: [16, 1, 32, 128], g: [16, 1, 8, 64]
    """
    shapes = check_inputs(q, k, v, g, window_size, q_win, k_win, state, None, check_gates)
    if shapes.time != 1:
        raise ValueError(f"triton_nha_step takes one token per sequence (T == 1), got T == {shapes.time}")
    grads = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, g, *state.tensors()))
    covered = (q.dtype in SUPPORTED_DTYPES and max(shapes.k_dim, shapes.v_dim) <= MAX_HEAD_DIM
               and 0 < shapes.num_slots <= MAX_SLOTS)
    if grads or not covered:
        return recurrent_nha_step(q, k, v, g, window_size, state, q_win=q_win, k_win=k_win, scale=scale,
                                  check_gates=False)
    B, HQ, H, K, V, M = shapes.batch, shapes.q_heads, shapes.kv_heads, shapes.k_dim, shapes.v_dim, shapes.num_slots
    w = window_size
    scale = K ** -0.5 if scale is None else scale
    q_win = q if q_win is None else q_win
    k_win = k if k_win is None else k_win
    window = [state.window_k, state.window_v, state.window_g, state.window_k_win]
    if w is None and bool((state.seen >= state.window_rows).any()):  # an unbounded window grows by a row
        window = [torch.cat([x, x.new_zeros(B, 1, *x.shape[2:])], dim=1) for x in window]
    window = [x.contiguous() for x in window]
    new_window = [torch.empty_like(x) for x in window]
    L = window[0].shape[1]
    slot_k, slot_v = state.slot_k.float().contiguous(), state.slot_v.float().contiguous()
    sk_out, sv_out = new_output(B, H, M, K, device=q.device), new_output(B, H, M, V, device=q.device)
    seen_out, live_out = torch.empty_like(state.seen), torch.empty_like(state.slots_live)
    o = new_output(B, 1, HQ, V, dtype=q.dtype, device=q.device)
    BM, BK, BV = block(M), block(K), block(V)
    tensors = (q.contiguous(), k.contiguous(), v.contiguous(), g.contiguous(), q_win.contiguous(), k_win.contiguous(),
               slot_k, slot_v, *window, state.seen.contiguous(), state.slots_live.contiguous(),
               sk_out, sv_out, *new_window, seen_out, live_out, o)
    # the sizes are constexprs (fixed for a layer), L is not specialized: a step's launch can reuse the binary
    constexprs = dict(HQ=HQ, H=H, K=K, V=V, M=M, WINDOW=0 if w is None else w,
                      MODE=0 if w == 0 else 2 if w is None else 1, BM=BM, BK=BK, BV=BV, BL=32 if q.is_cuda else 16)
    _launch_decode((B, HQ), tensors, (float(scale), L), constexprs, num_warps=4 if BM * max(BK, BV) <= 8192 else 8)
    return o, NHAState(sk_out, sv_out, *new_window, seen=seen_out, slots_live=live_out)
