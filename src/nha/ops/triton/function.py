"""The autograd Function of the Triton NHA operator: every stage's kernels in one forward and one backward, so the
glue between stages (shifts, casts, the merge's and the output's gradients, gradient sums) is fused or gone.

N sequences, S rows (the extended layout of chunk.py's `_extend`), E scan steps (S rounded up to the chunk),
HQ query heads, H key/value heads, G = HQ // H, K/V head dims, M slots.

Forward: window path (banded attention, lse; its output in q's dtype) -> scan gates (`slot_gates`: shift by w,
masks, GQA; the write strengths in bf16 for a prefill of bf16 inputs) -> both passes' chunk-start states -> slot
pass 1 (logits z) -> merge (p, a; without gradients made inside the next read-out from z and lse, never in memory:
`WindowMerge`) -> slot pass 2 with the output `o = a * o_win + S^T p` in its epilogue. The slot kernels read k and
v shifted by w and per query head in place (shift.py's `Shifted`): no copies, nothing more saved.
Backward: pass 2's dp -> merge and output together
(`merge_backward`: dz, the window path's do and delta, the gate term dz * z + p * dp) -> window path -> pass 1's dq
(in q's dtype with the window path's dq added in its epilogue) -> both passes' reverse scans side by side
(`reverse_scans`, over the flipped scan's gates made again from the layer's, `reverse_slot_gates`: ds1 + ds2, dk,
dv; in a steep chunk a reverse read-out takes the in-chunk tensors of the forward read-out of its pair swapped,
transposed: dk dq's weights, dv the output's, the logits the forward's q . k and dp's do . v; a gentle chunk's are
one product in the read-out itself, and every read-out of both directions takes `slot_gates`' one set of flags) ->
the gates' gradient of both passes at once (chunk totals, then every chunk's reverse cumsum summed over the group and
moved back to the layer's rows, in g's dtype). dk and dv leave their read-outs at the layer's rows in the input's
dtype with the window path's share added when G = 1; with G > 1 one pass each sums the group, shifts them back and
adds that share (`unshift`). Both passes' chunk-start states, the output read's in-chunk weights, the logits'
in-chunk products, the scan's write strengths and chunk cumsums and the slot probabilities are saved by the forward
(`Plan.save_states`); else the backward recomputes them as the forward made them (bit-identical; of the forward's
own tensors only the window path's output and log-sum-exp, the slot logits, the merge weights a and the final slots
stay).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from nha.ops.chunk import MASKED, pad_time
from nha.ops.triton.gates import reverse_slot_gates, slot_gates, slot_gates_grad
from nha.ops.triton.merge import WindowMerge, merge_backward, merge_forward
from nha.ops.triton.shift import shifted, unshift
from nha.ops.triton.slot_chunk import ChunkStates, chunk_products, read_weights
from nha.ops.triton.slot_scan import (final_term, forward_states, logits_forward, read_dp, read_dq, read_forward,
                                     reverse_scans)
from nha.ops.triton.window_attn import window_backward, window_forward


@dataclass
class Plan:
    """What one call computes, fixed before the Function runs.

    valid_i8: `[N, S]` int8 real rows; live_i8: `[N, S]` int8 rows whose slots take part in the softmax;
    ends: `[N]` int64 end of each sequence's rows; window: rows of the window path (0: none); shift: the scan's delay
    (w, or past the end for an unbounded window); use_slots: whether the slot path runs at all; group: G;
    length: E; chunk: the scan's chunk; scale: logit scale; prec: slot-scan product precision (slot_chunk.py);
    save_states: keep both passes' chunk-start states, the forward's in-chunk read weights and q . k products, the
        scan's gates and the slot probabilities for the backward instead of recomputing them.
    backward: whether gradients were asked for (without them the forward skips what only a backward reads).
    """

    valid_i8: torch.Tensor
    live_i8: torch.Tensor
    ends: torch.Tensor
    window: int
    shift: int
    use_slots: bool
    group: int
    length: int
    chunk: int
    scale: float
    prec: str
    save_states: bool
    backward: bool


def _group_sum(x: Optional[torch.Tensor], group: int) -> Optional[torch.Tensor]:
    # `[N, HQ, ...]` per query head -> `[N, H, ...]` per key/value head
    return x if x is None or group == 1 else x.view(x.shape[0], -1, group, *x.shape[2:]).sum(2)


def _first_of_group(x: Optional[torch.Tensor], group: int) -> Optional[torch.Tensor]:
    # `[N, H, ...]` per key/value head -> `[N, HQ, ...]` per query head: each group's first head, zeros in the rest
    # (a final slot state's gradient, which reaches every forward scan state of the group once)
    if x is None or group == 1:
        return x
    out = x.new_zeros(x.shape[0], x.shape[1] * group, *x.shape[2:])
    out[:, ::group] = x
    return out


class NHAFunction(torch.autograd.Function):
    """`(o [N, S, HQ, V] in q's dtype, final slot keys [N, H, M, K], final slot values [N, H, M, V])`.

    Inputs in the extended layout, contiguous: q `[N, S, HQ, K]`, k `[N, S, H, K]`, v `[N, S, H, V]`, g `[N, S, H, M]`
    (as given: clamped and masked here), q_win/k_win (None: the window path uses q/k), h0_k `[N, H, M, K]` and h0_v
    `[N, H, M, V]` float32 (None: empty slots). The final slots are float32 and None when the slot path is off.
    """

    @staticmethod
    def forward(ctx, q, k, v, g, q_win, k_win, h0_k, h0_v, plan: Plan):
        ctx.set_materialize_grads(False)
        N, S, HQ, _ = q.shape
        V = v.shape[-1]
        qw = q if q_win is None else q_win
        kw = k if k_win is None else k_win
        o_win, lse_win = None, None
        if plan.window > 0:  # in q's dtype: a half o_win is half the bytes of the read-out's epilogue
            o_win, lse_win = window_forward(qw, kw, v, plan.valid_i8, plan.window, plan.scale, dtype=q.dtype)
        ctx.plan, ctx.shared = plan, (q_win is None, k_win is None)
        if not plan.use_slots:
            o = o_win if o_win is not None else q.new_zeros(N, S, HQ, V)
            ctx.save_for_backward(qw, kw, v, o_win, lse_win)
            return o, None, None
        if lse_win is None:
            lse_win = q.new_full((N, S, HQ), MASKED, dtype=torch.float32)
        E, C, G, prec = plan.length, plan.chunk, plan.group, plan.prec
        # with `gentle`, which chunks' in-chunk read-outs take one product each (every read-out of both scan
        # directions takes these flags: slot_chunk.gentle_chunks)
        # a prefill of bf16 inputs rounds every slot-kernel operand to bf16 ("bf16" products): its write strengths
        # are stored so, half the bytes of the row input that all its slot kernels read
        s_dtype = torch.bfloat16 if prec == "bf16" else torch.float32
        s_in, gc, gentle = slot_gates(g, plan.valid_i8, plan.ends, plan.shift, G, E, C, s_dtype=s_dtype)
        k_in, v_in = shifted(k, plan.shift, E, G), shifted(v, plan.shift, E, G)
        q_in = pad_time(q, E).contiguous()
        # a group's query heads hold the same gates: one chunk-start state per key/value head serves them all
        h_k, h_v, ht_k, ht_v = forward_states(s_in, gc, k_in, v_in, h0_k, h0_v, C, prec, group=G)
        merge = WindowMerge(lse_win, plan.live_i8, plan.scale)
        z, a_qk = logits_forward(q_in, s_in, gc, k_in, h_k, C, prec, gentle=gentle)
        # the merge (p, a): in memory for a backward (which reads them: the merge kernel writes them once), else made
        # in the output's read-out and never stored
        probs = merge_forward(z, lse_win, plan.live_i8, plan.scale) if plan.backward else None
        o, w_o = read_forward(z, s_in, gc, v_in, h_v, C, prec, merge, o_win, probs, gentle=gentle, dtype=q.dtype,
                              out_rows=S)
        p, a = probs or (None, None)
        states = (*h_k[:3], *h_v[:3])  # both `ChunkStates`' tensors (local, start, decay); ctx.span their span
        ctx.span = h_k.span
        if not plan.save_states:  # the backward recomputes these, as the forward made them
            states, w_o, a_qk, s_in, gc, p = (None,) * 6, None, None, None, None, None
        ctx.save_for_backward(qw, kw, v, o_win, lse_win, g, q_in, k, s_in, gc, z, p, a, h0_k, h0_v, ht_k, ht_v,
                              *states, w_o, a_qk, gentle)
        return o, ht_k, ht_v

    @staticmethod
    def backward(ctx, do, dht_k, dht_v):
        plan, shared = ctx.plan, ctx.shared
        if do is None and dht_k is None and dht_v is None:
            return (None,) * 9
        if not plan.use_slots:
            return (*_window_only_backward(do, *ctx.saved_tensors, plan, shared), None, None, None, None)
        return (*_backward(do, dht_k, dht_v, ctx.saved_tensors, plan, shared, ctx.span), None)


def _window_only_backward(do, qw, kw, v, o_win, lse_win, plan: Plan, shared):
    """`(dq, dk, dv, dg, dq_win, dk_win)` when only the window path reaches the output."""
    if o_win is None or do is None:
        return (None,) * 6
    do = do.contiguous()
    delta = (do.float() * o_win.float()).sum(-1)
    dq, dk, dv = window_backward(qw, kw, v, plan.valid_i8, lse_win, delta, do, plan.window, plan.scale)
    dq, dk = dq.to(qw.dtype), dk.to(kw.dtype)
    return (dq if shared[0] else None, dk if shared[1] else None, dv.to(v.dtype), None,
            None if shared[0] else dq, None if shared[1] else dk)


def _layer_rows_out(plan: Plan, S: int, G: int, other: Optional[torch.Tensor], dtype: torch.dtype) -> Optional[dict]:
    # with one query head per key/value head (nothing to sum over a group), a k/v gradient's slot read-out stores
    # itself at the layer's rows: moved back by the scan's shift, in the input's dtype, with the window path's share
    # `other` `[N, S, H, D]` float32 added. With G > 1 it stays per query head and `_at_layer_rows` unshifts it.
    return dict(out_rows=S, out_shift=plan.shift, o_win=other, dtype=dtype) if G == 1 else None


def _at_layer_rows(d_in: torch.Tensor, plan: Plan, S: int, G: int, other: Optional[torch.Tensor],
                   dtype: torch.dtype) -> torch.Tensor:
    """A k/v gradient `[N, S, H, D]` in `dtype` from its slot read-out plus `other` (the window path's share)."""
    if G != 1:
        return unshift(d_in, plan.shift, S, G, other=other, dtype=dtype)
    # the read-out wrote every row a scan step absorbs; the last rows (all, for an unbounded window) never reach
    # the slots and get the window path's share alone
    first_unreached = max(0, min(S, plan.length - plan.shift))
    if first_unreached < S:
        d_in[:, first_unreached:] = 0 if other is None else other[:, first_unreached:]
    return d_in


def _backward(do, dht_k, dht_v, saved, plan: Plan, shared, span: int):
    """`(dq, dk, dv, dg, dq_win, dk_win, dh0_k, dh0_v)` of the full operator."""
    (qw, kw, v, o_win, lse_win, g, q_in, k, s_in, gc, z, p, a, h0_k, h0_v, ht_k, ht_v, *states, w_o, a_qk,
     gentle) = saved
    h_k = h_v = None
    if states[0] is not None:
        h_k, h_v = ChunkStates(*states[:3], span), ChunkStates(*states[3:], span)
    N, S, HQ = qw.shape[0], qw.shape[1], q_in.shape[2]
    E, C, G, prec = plan.length, plan.chunk, plan.group, plan.prec
    k_in, v_in = shifted(k, plan.shift, E, G), shifted(v, plan.shift, E, G)
    if gc is None:  # not saved (`save_states=False`): the scan's gates and the slot probabilities, recomputed
        s_in, gc, _ = slot_gates(g, plan.valid_i8, plan.ends, plan.shift, G, E, C)
        p, _ = merge_forward(z, lse_win, plan.live_i8, plan.scale)
    if h_k is None:  # and both passes' chunk-start states (freed before the reverse scans)
        h_k, h_v, _, _ = forward_states(s_in, gc, k_in, v_in, h0_k, h0_v, C, prec, group=G)
    do = q_in.new_zeros(N, S, HQ, v.shape[-1]) if do is None else do.contiguous()
    dht_k = None if dht_k is None else dht_k.float().contiguous()
    dht_v = None if dht_v is None else dht_v.float().contiguous()
    finals = [t for t in (final_term(dht_k, ht_k), final_term(dht_v, ht_v)) if t is not None]
    final_sum = _first_of_group(sum(finals), G) if finals else None
    # the reverse scans run per query head: a group's final-state gradient enters once, at its first head
    dht_k, dht_v = _first_of_group(dht_k, G), _first_of_group(dht_v, G)
    do_in = pad_time(do, E).contiguous()
    dp, a_dov = read_dp(do_in, s_in, gc, v_in, h_v, C, prec, gentle=gentle)
    del h_v
    dz, delta, do_win, pass_term = merge_backward(p, dp, z, a, do, o_win, plan.live_i8, plan.scale)
    dq_w = dk_w = dv_w = None
    if o_win is not None:
        dq_w, dk_w, dv_w = window_backward(qw, kw, v, plan.valid_i8, lse_win, delta, do_win, plan.window, plan.scale)
    del delta, do_win  # transients die before the reverse scans, where the backward's memory peaks
    # dq comes out of its slot read-out in q's dtype with the window path's share added (when q is shared)
    dq, w_dq = read_dq(dz, s_in, gc, k_in, h_k, C, prec, gentle=gentle, o_win=dq_w if shared[0] else None,
                       dtype=q_in.dtype, out_rows=S)
    del h_k
    dq_win = None if shared[0] or dq_w is None else dq_w.to(qw.dtype)
    del dq_w  # float32 [N, S, HQ, K]: in dq or in dq_win by now
    # k and v: the slot path's gradients moved back to the layer's rows, plus the window path's (k's when it shares k);
    # their reads take dq's and the output's in-chunk weights swapped (the latter recomputed as the forward did)
    if w_o is None:
        w_o = read_weights(p, s_in, gc, C, prec, gentle=gentle)
    if a_qk is None:  # the forward's in-chunk products q . k, for the reverse logits (recomputed as it made them)
        a_qk = chunk_products(q_in, k_in, gc, C, prec)
    dk_other = dk_w if shared[1] else None
    gcr = reverse_slot_gates(g, plan.valid_i8, plan.ends, plan.shift, G, E, C)  # the flipped scan's chunk cumsums
    ds, dk, dv, dh0_k, dh0_v = reverse_scans(s_in, gcr, gc, (dz, q_in, k_in, dht_k, h0_k),
                                             (p, do_in, v_in, dht_v, h0_v),
                                             (w_dq, w_o), (a_qk, a_dov), C, prec, gentle,
                                             dk_out=_layer_rows_out(plan, S, G, dk_other, k.dtype),
                                             dv_out=_layer_rows_out(plan, S, G, dv_w, v.dtype))
    dg = slot_gates_grad(g, plan.valid_i8, plan.ends, plan.shift, C, s_in, pass_term, ds, final_sum)
    dk = _at_layer_rows(dk, plan, S, G, dk_other, k.dtype)
    dv = _at_layer_rows(dv, plan, S, G, dv_w, v.dtype)
    dk_win = None if shared[1] or dk_w is None else dk_w.to(kw.dtype)
    return dq, dk, dv, dg, dq_win, dk_win, _group_sum(dh0_k, G), _group_sum(dh0_v, G)
