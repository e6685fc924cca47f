"""One NHA decoding step per sequence (B sequences, HQ query heads, H key/value heads, K/V dims, M slots, L rows)."""
from __future__ import annotations

from nha.ops.recurrent import recurrent_nha_step


def triton_nha_step(q, k, v, g, window_size, state, *, q_win=None, k_win=None, scale=None):
    """Same as `recurrent_nha_step` (the fused kernel comes next)."""
    return recurrent_nha_step(q, k, v, g, window_size, state, q_win=q_win, k_win=k_win, scale=scale)
