"""Forward and backward of the two passes of the slot path, built from the kernels of slot_chunk.py and gates.py.

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
  dh0 = exp(g_0) R_0. The gate work is gates.py's: both directions' chunk cumsums, and dG and its reverse cumsum for
  both passes at once (`slot_gates_grad`, from the ds each backward here returns and `final_term`).
"""
from __future__ import annotations

from typing import Optional

import torch

from nha.ops.triton.gates import reverse_chunk_cumsum
from nha.ops.triton.slot_chunk import slot_logits, slot_read, slot_states


def _reverse_scan(r, c, g, s, y, d_final, chunk, prec, dy_out: Optional[dict] = None):
    """`(ds, dy, R_0)`: read-outs of the backward-in-time state R (see the module docstring).

    The kernels read r, c, s, y back to front and write ds, dy in place order (`reverse=True`); only the gates'
    chunk cumsums are laid out in the flipped order. `dy_out`: how `slot_read` stores dy (default `[N, E, H, D]`
    float32; e.g. moved back to the layer's rows, in its dtype, with the window path's share added)."""
    gcr = reverse_chunk_cumsum(g, chunk)
    hr, r0 = slot_states(r, gcr, c, d_final, chunk, prec, reverse=True)
    ds = slot_logits(y, r, gcr, c, hr, chunk, prec, reverse=True)
    dy = slot_read(s, r, gcr, c, hr, chunk, prec, reverse=True, **(dy_out or {}))
    return ds, dy, r0


def final_term(d_final: Optional[torch.Tensor], final: torch.Tensor) -> Optional[torch.Tensor]:
    """The final state's share of every gate's gradient: rowsum(dS_E * S_E) `[N, H, M]` (None without dS_E)."""
    return None if d_final is None else (d_final * final).sum(-1)


def _initial_state_grad(h0, gc, r0):
    # dh0 = exp(g_0) R_0 (the first row's chunk cumsum is g_0)
    return None if h0 is None else torch.exp(gc[:, 0])[..., None] * r0


def logits_forward(q, s, gc, k, h0, chunk: int, prec: str):
    """Pass 1: `z = S_t q_t` over states built from (s, g, k) -> z `[N, E, H, M]`, `S_E` `[N, H, M, K]` (float32)
    and the chunk-start states `[N, H, NT, M, K]` (for the backward to keep or drop).

    `gc`: the chunk cumsums of g (computed once for both passes)."""
    h, ht = slot_states(s, gc, k, h0, chunk, prec)
    return slot_logits(q, s, gc, k, h, chunk, prec), ht, h


def logits_backward(dz, dht, q, s, g, k, h0, gc, chunk: int, prec: str, h=None, dq_out: Optional[dict] = None,
                    dk_out: Optional[dict] = None):
    """`(dq, ds, dk, dh0)` of `logits_forward` but its gates (float32 `[N, E, H, D]`, dh0 None without h0).
    `h`: the forward's chunk-start states, recomputed when None; `dq_out` / `dk_out`: how `slot_read` stores dq / dk
    instead (rows, dtype, an added window share). The gates' gradient is the caller's (`gates.slot_gates_grad`, for
    both passes at once)."""
    if h is None:
        h, _ = slot_states(s, gc, k, h0, chunk, prec)
    dq = slot_read(dz, s, gc, k, h, chunk, prec, **(dq_out or {}))
    ds, dk, r0 = _reverse_scan(dz, q, g, s, k, dht, chunk, prec, dk_out)
    return dq, ds, dk, _initial_state_grad(h0, gc, r0)


def read_forward(p, s, gc, v, h0, chunk: int, prec: str, **out):
    """Pass 2: `o = S_t^T p_t` over states built from (s, g, v) -> o `[N, E, H, V]` float32 (or as `out` says:
    `slot_read`'s dtype, rows and `a * o_win` of NHA's output), `S_E` `[N, H, M, V]` float32 and the chunk-start
    states `[N, H, NT, M, V]`."""
    h, ht = slot_states(s, gc, v, h0, chunk, prec)
    return slot_read(p, s, gc, v, h, chunk, prec, **out), ht, h


def read_dp(do, s, gc, v, h0, chunk: int, prec: str, h=None):
    """`dp_t = S_t do_t` `[N, E, H, M]` float32: the gradient of `read_forward`'s p, given its output gradient do
    `[N, E, H, V]` (any float dtype); `h` as `logits_backward`."""
    if h is None:
        h, _ = slot_states(s, gc, v, h0, chunk, prec)
    return slot_logits(do, s, gc, v, h, chunk, prec)


def read_backward(do, dht, p, s, g, v, h0, gc, chunk: int, prec: str, dv_out: Optional[dict] = None):
    """`(ds, dv, dh0)` of `read_forward`, the rest of its gradient after `read_dp`; `dv_out` as `logits_backward`'s
    `dk_out`."""
    ds, dv, r0 = _reverse_scan(p, do, g, s, v, dht, chunk, prec, dv_out)
    return ds, dv, _initial_state_grad(h0, gc, r0)
