"""Forward and backward of the two passes of the slot path, built from the kernels of slot_chunk.py,
scan_states.py and gates.py.

N sequences, E time (a multiple of BT), H heads, M slots, K/V head dims, D = K or V, BT chunk.

Both passes scan `S_t = diag(a_t) S_{t-1} + s_t (x) y_t` with `a = exp(g)`, `S_0 = h0`, `G_t = sum_{i<=t} g_i`:
  pass 1 (logits)  z_t = S_t q_t,    y = k;   pass 2 (read)  o_t = S_t^T p_t,   y = v
(k and v as `[N, E, H, D]` tensors or shift.py's `Shifted`, read in place).
Backward, for a read-out with row input r_t `[M]` and column input c_t `[D]` (pass 1: r = dz, c = q; pass 2:
r = p, c = do), let `R_t = sum_{t' >= t} exp(G_t' - G_t) r_t' (x) c_t' + exp(G_E - G_t) dS_E`: R is the same scan run
backwards in time, i.e. forwards on time-flipped inputs with gates `g'_u = g_{E-u}`, `g'_0 = 0`. Then
  ds_t = R_t y_t (a logits read-out of R),  dy_t = R_t^T s_t (a plain read-out of R),
  pass 1: dq_t = S_t^T dz_t;  pass 2: dp_t = S_t do_t  (the forward states again),
  dG_t = (dz_t * z_t or p_t * dp_t) - s_t * ds_t  (+ rowsum(dS_E * S_E) at t = E), dg = reverse cumsum of dG,
  dh0 = exp(g_0) R_0. Both passes' R scans run side by side (`reverse_scans`): their gates are the same, so their
  logits read-outs share one in-chunk kernel that computes the decays once and returns ds1 + ds2 as one tensor. The
  gate work is gates.py's: both directions' chunk cumsums, and dG and its reverse cumsum for both passes at once
  (`slot_gates_grad`, from that ds and `final_term`).
"""
from __future__ import annotations

from typing import Optional

import torch

from nha.ops.triton.merge import WindowMerge
from nha.ops.triton.scan_states import slot_states, slot_states_pair
from nha.ops.triton.slot_chunk import read_weights, slot_logits, slot_read


def final_term(d_final: Optional[torch.Tensor], final: torch.Tensor) -> Optional[torch.Tensor]:
    """The final state's share of every gate's gradient: rowsum(dS_E * S_E) `[N, H, M]` (None without dS_E)."""
    return None if d_final is None else (d_final * final).sum(-1)


def _initial_state_grad(h0, gc, r0):
    # dh0 = exp(g_0) R_0 (the first row's chunk cumsum is g_0)
    return None if h0 is None else torch.exp(gc[:, 0])[..., None] * r0


def forward_states(s, gc, k, v, h0_k, h0_v, chunk: int, prec: str, group: int = 1) -> tuple:
    """`(h_k, h_v, S_E of k, S_E of v)`: both passes' chunk-start states (`ChunkStates`, `[N, H / group, NT, M,
    K or V]`) and final states (float32), over states built from (s, g, k) and (s, g, v) (`slot_states_pair`: one
    program per segment of chunks makes both, then a walk over the segments). `gc`: the chunk cumsums of g
    (computed once for both passes); `group`: GQA's G, one state per key/value head (h0 `[N, H / group, M, K or V]`).
    The backward recomputes them the same way."""
    (h_k, ht_k), (h_v, ht_v) = slot_states_pair(s, gc, k, v, h0_k, h0_v, chunk, prec, group=group)
    return h_k, h_v, ht_k, ht_v


def logits_forward(q, s, gc, k, h, chunk: int, prec: str, gentle=None):
    """Pass 1: `z = S_t q_t` over the states h of (s, g, k) (`forward_states`) -> z `[N, E, H, M]` and the in-chunk
    products `q_t . k_j` `[N, E, H, chunk]` (for the backward to keep or drop: its reverse logits reuse them,
    `reverse_scans`). `gentle`: gc's `gentle_chunks` flags (computed when None; every read-out below takes them, so
    that a reverse one can take another's in-chunk tensors)."""
    return slot_logits(q, s, gc, k, h, chunk, prec, keep_products=True, gentle=gentle)


def read_forward(z, s, gc, v, h, chunk: int, prec: str, merge: WindowMerge, o_win, probs: Optional[tuple] = None,
                 gentle=None, **out):
    """Pass 2 and NHA's output: `o = a * o_win + S_t^T p_t` over the states h of (s, g, v) -> o `[N, E, H, V]`
    float32 (or as `out` says: `slot_read`'s dtype and rows) and the read's in-chunk weights `[N, E, H, chunk]` (the
    backward's dv read reuses them: `reverse_scans`); `gentle` as `logits_forward`'s; o_win None: no window.
    The merge's slot probabilities p and window share a: `probs` = (p, a) from `merge_forward` (a forward with
    gradients, whose backward reads them), or None: made from the raw logits z `[N, E, H, M]` inside the read-out
    (`merge`), never in memory."""
    p, a, merge = (z, None, merge) if probs is None else (*probs, None)
    w = read_weights(p, s, gc, chunk, prec, gentle=gentle, merge=merge)
    return slot_read(p, s, gc, v, h, chunk, prec, weights=w, gentle=gentle, a=a, merge=merge, o_win=o_win, **out), w


def read_dp(do, s, gc, v, h, chunk: int, prec: str, gentle=None):
    """`(dp, a)`: `dp_t = S_t do_t` `[N, E, H, M]` float32, the gradient of `read_forward`'s p, given its output
    gradient do `[N, E, H, V]` (any float dtype) and the forward's chunk-start states h, and the in-chunk products
    `do_t . v_j` `[N, E, H, chunk]` (the reverse logits reuse them)."""
    return slot_logits(do, s, gc, v, h, chunk, prec, keep_products=True, gentle=gentle)


def read_dq(dz, s, gc, k, h, chunk: int, prec: str, gentle=None, **out):
    """`(dq, w)`: `dq_t = S_t^T dz_t`, the gradient of `logits_forward`'s q, given its logits' gradient dz
    `[N, E, H, M]` and the forward's chunk-start states h (`out` as `slot_read`'s: rows, dtype, an added window
    share), and the read's in-chunk weights `[N, E, H, chunk]` (the dk read reuses them: `reverse_scans`)."""
    w = read_weights(dz, s, gc, chunk, prec, gentle=gentle)
    return slot_read(dz, s, gc, k, h, chunk, prec, weights=w, gentle=gentle, **out), w


def reverse_scans(s, gcr, gc, logits: tuple, read: tuple, weights: tuple, products: tuple, chunk: int, prec: str,
                  gentle: torch.Tensor, dk_out: Optional[dict] = None, dv_out: Optional[dict] = None):
    """`(ds, dk, dv, dh0_k, dh0_v)`: the rest of both passes' gradients but the gates', from their states R run
    backwards in time (the module docstring), both scans side by side so their logits read-outs share the decays.

    logits: `(dz, q, k, dS_E, h0)` of pass 1; read: `(p, do, v, dS_E, h0)` of pass 2 (dS_E, h0: None when absent).
    ds = ds1 + ds2 `[N, E, H, M]` float32 (the gates' gradient only needs the sum); dk, dv float32 `[N, E, H, D]`, or
    as `dk_out` / `dv_out` say (`slot_read`'s output options); dh0_k / dh0_v None without h0.
    The kernels read r, c, s, y back to front and write in place order; only the gates' chunk cumsums are laid out in
    the flipped order: gcr, `gates.reverse_slot_gates`' (one for both scans). Both scans' float32 chunk-start states
    `[N, H, E / chunk, M, K + V]` are alive together (one scan at a time would hold one of them).
    weights: the in-chunk weights of `read_dq` and of `read_forward`: a reverse read of (s, r) has the forward read
    of (r, s)'s weights swapped (`slot_read`'s `swapped_weights`), so dk and dv take them instead of computing their
    own. products: the in-chunk products of `logits_forward` and of `read_dp` (`q_t . k_j`, `do_t . v_j`): the
    paired reverse logits take them swapped (`slot_logits`' `swapped_products`). gentle: the forward scans'
    `gentle_chunks` flags, which made those tensors: the reverse kernels take them flipped."""
    flags = gentle.flip(1).contiguous()
    (dz, q, k, dht_k, h0_k), (p, do, v, dht_v, h0_v) = logits, read
    hr_k, r0_k = slot_states(dz, gcr, q, dht_k, chunk, prec, reverse=True)
    hr_v, r0_v = slot_states(p, gcr, do, dht_v, chunk, prec, reverse=True)
    ds = slot_logits(k, dz, gcr, q, hr_k, chunk, prec, reverse=True, plus=(v, p, do, hr_v), swapped_products=products,
                     gentle=flags)
    w_k, w_v = weights
    dk = slot_read(s, dz, gcr, q, hr_k, chunk, prec, reverse=True, swapped_weights=w_k, gentle=flags,
                   **(dk_out or {}))
    dv = slot_read(s, p, gcr, do, hr_v, chunk, prec, reverse=True, swapped_weights=w_v, gentle=flags,
                   **(dv_out or {}))
    return ds, dk, dv, _initial_state_grad(h0_k, gc, r0_k), _initial_state_grad(h0_v, gc, r0_v)
