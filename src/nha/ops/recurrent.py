"""One NHA decoding step per sequence over the cache: slots plus a ring buffer of the last w tokens.

B sequences, HQ query heads, H key/value heads, G = HQ // H, K/V head dims, M slots, L window rows.
Memory is constant in the sequence length (for a bounded window): the state is updated, never grown.
"""
from __future__ import annotations

from typing import Optional

import torch

from nha.ops.checks import check_inputs
from nha.ops.chunk import MASKED
from nha.ops.precision import without_autocast
from nha.ops.state import NHAState


def _put_row(buffer: torch.Tensor, row: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Write `x` `[B, ...]` into row `row[b]` of `buffer` `[B, L, ...]` (out of place, autograd-safe)."""
    index = row.view(-1, 1, *([1] * (buffer.dim() - 2))).expand(-1, 1, *buffer.shape[2:])
    return buffer.scatter(1, index, x[:, None].to(buffer.dtype))


@without_autocast
def recurrent_nha_step(
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
    """Consume one token per sequence and return its output and the new state.

    Args:
        q: `[B, 1, HQ, K]`, k: `[B, 1, H, K]`, v: `[B, 1, H, V]`, g: `[B, 1, H, M]` (`<= 0`).
        window_size: `w >= 0`, or None (the window then grows by one row per token: a plain KV cache).
        state: the `NHAState` of the B sequences (`NHAState.empty(...)` before the first token).
        q_win, k_win: window-path query/key of this token (default q, k); scale: default `K ** -0.5`.
        check_gates: check that g holds no NaN and nothing > 0 (on CUDA that reads g back: a host sync).

    Returns:
        `o` `[B, 1, HQ, V]` and the updated `NHAState`.

    Example:
        >>> state = NHAState.empty(2, 4, 16, 32, 32, window_size=64)
        >>> o, state = recurrent_nha_step(q, k, v, g, 64, state)  # q: [2, 1, 4, 32], g: [2, 1, 4, 16]
    """
    shapes = check_inputs(q, k, v, g, window_size, q_win, k_win, state, None, check_gates)
    if shapes.time != 1:
        raise ValueError(f"recurrent_nha_step takes one token per sequence (T == 1), got T == {shapes.time}")
    B, HQ, H, K, V, M, G = (shapes.batch, shapes.q_heads, shapes.kv_heads, shapes.k_dim, shapes.v_dim,
                            shapes.num_slots, shapes.group)
    w = window_size
    acc = torch.promote_types(q.dtype, torch.float32)
    scale = K ** -0.5 if scale is None else scale
    q, k, v, g = q[:, 0], k[:, 0], v[:, 0], g[:, 0]
    q_win = q if q_win is None else q_win[:, 0]
    k_win = k if k_win is None else k_win[:, 0]
    seen, slot_k, slot_v, live = state.seen, state.slot_k.to(acc), state.slot_v.to(acc), state.slots_live
    window = [state.window_k, state.window_v, state.window_g, state.window_k_win]

    def absorb(k_j, v_j, g_j, mask):  # mask: [B] sequences that absorb this token
        a = torch.where(mask[:, None, None], torch.exp(g_j.to(acc)), torch.ones((), dtype=acc, device=q.device))
        s = (1 - a)[..., None]
        return a[..., None] * slot_k + s * k_j.to(acc)[:, :, None], a[..., None] * slot_v + s * v_j.to(acc)[:, :, None]

    if w == 0:
        slot_k, slot_v = absorb(k, v, g, torch.ones_like(live))
        live = torch.ones_like(live)
    else:
        if w is None and bool((seen >= state.window_rows).any()):  # an unbounded window grows by a row
            window = [torch.cat([x, x.new_zeros(B, 1, *x.shape[2:])], dim=1) for x in window]
        rows = window[0].shape[1]
        row = seen % rows
        if w is not None:  # the token in this row leaves the window now
            leaving = [x.gather(1, row.view(B, 1, 1, 1).expand(-1, 1, *x.shape[2:]))[:, 0] for x in window]
            full = seen >= w
            slot_k, slot_v = absorb(leaving[0], leaving[1], leaving[2], full)
            live = live | full
        window = [_put_row(x, row, new) for x, new in zip(window, (k, v, g, k_win))]
    seen = seen + 1

    z_slots = scale * torch.einsum("bhgk,bhmk->bhgm", q.to(acc).view(B, H, G, K), slot_k)
    z_slots = z_slots.masked_fill(~live[:, None, None, None], MASKED)
    if w == 0:
        logits, values = z_slots, None
    else:
        kw, vw = window[3].to(acc), window[1].to(acc)  # [B, L, H, K], [B, L, H, V]
        z_win = scale * torch.einsum("bhgk,blhk->bhgl", q_win.to(acc).view(B, H, G, K), kw)
        in_window = torch.arange(kw.shape[1], device=q.device)[None, :] < seen[:, None]  # [B, L]
        z_win = z_win.masked_fill(~in_window[:, None, None, :], MASKED)
        logits, values = torch.cat([z_slots, z_win], dim=-1), vw
    p = torch.softmax(logits, dim=-1)
    o = torch.einsum("bhgm,bhmv->bhgv", p[..., :M], slot_v)
    if values is not None:
        o = o + torch.einsum("bhgl,blhv->bhgv", p[..., M:], values)
    new_state = NHAState(slot_k, slot_v, *window, seen=seen, slots_live=live)
    return o.reshape(B, 1, HQ, V).to(q.dtype), new_state
