"""The definition of Native Hybrid Attention: a token loop that follows NHA_SPEC section 2 line by line.

B batch, T time, HQ query heads, H key/value heads, K/V head dims, M slots, w window, N sequences.
Slow (a Python step per token) and exact: every fast path is tested against it.
"""
from __future__ import annotations

from typing import Optional

import torch

from nha.ops.checks import check_inputs
from nha.ops.precision import without_autocast
from nha.ops.state import NHAState


def sequence_bounds(batch: int, time: int, cu_seqlens: Optional[torch.Tensor]) -> list[tuple[int, int, int]]:
    """`(batch row, start, end)` of each sequence: the rows of a dense batch, or the segments of a packed one."""
    if cu_seqlens is None:
        return [(b, 0, time) for b in range(batch)]
    cs = cu_seqlens.tolist()
    return [(0, s, e) for s, e in zip(cs, cs[1:])]


@without_autocast
def naive_recurrent_nha(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    window_size: Optional[int],
    *,
    q_win: Optional[torch.Tensor] = None,
    k_win: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
    initial_state: Optional[NHAState] = None,
    output_final_state: bool = False,
    cu_seqlens: Optional[torch.Tensor] = None,
    check_gates: bool = True,
) -> tuple[torch.Tensor, Optional[NHAState]]:
    """Native Hybrid Attention, one token at a time (the reference).

    Args:
        q: `[B, T, HQ, K]` queries of the slot path.
        k: `[B, T, H, K]` keys written into the slots (and, by default, the window's keys).
        v: `[B, T, H, V]` values, shared by both paths.
        g: `[B, T, H, M]` log forget gates, `<= 0`.
        window_size: `w >= 0`, or None for an unbounded window (causal softmax attention).
        q_win: `[B, T, HQ, K]` window-path queries (RoPE-rotated); default `q`.
        k_win: `[B, T, H, K]` window-path keys (RoPE-rotated); default `k`.
        scale: logit scale of both paths; default `K ** -0.5`.
        initial_state: an `NHAState` with one entry per sequence, to continue from.
        output_final_state: return the `NHAState` after the last token.
        cu_seqlens: `[N + 1]` offsets of N sequences packed in a `B == 1` batch.
        check_gates: check that g holds no NaN and nothing > 0 (on CUDA that reads g back: a host sync).

    Returns:
        `o` `[B, T, HQ, V]` in the input dtype, and the final `NHAState` (or None).

    Example:
        >>> q = torch.randn(1, 8, 2, 16); k, v = torch.randn(1, 8, 2, 16), torch.randn(1, 8, 2, 16)
        >>> g = torch.nn.functional.logsigmoid(torch.randn(1, 8, 2, 4)) / 8
        >>> o, _ = naive_recurrent_nha(q, k, v, g, window_size=3)
    """
    shapes = check_inputs(q, k, v, g, window_size, q_win, k_win, initial_state, cu_seqlens, check_gates)
    B, T, HQ, H, K, V, M = (shapes.batch, shapes.time, shapes.q_heads, shapes.kv_heads,
                            shapes.k_dim, shapes.v_dim, shapes.num_slots)
    G = shapes.group
    w = window_size
    acc = torch.promote_types(q.dtype, torch.float32)
    scale = K ** -0.5 if scale is None else scale
    q_win = q if q_win is None else q_win
    k_win = k if k_win is None else k_win
    device = q.device

    bounds = sequence_bounds(B, T, cu_seqlens)
    if initial_state is not None:
        start_window = initial_state.ordered_window()
    # positions of a packed batch outside every sequence stay zero
    o = torch.zeros(B, T, HQ, V, dtype=acc, device=device)
    finals = []
    for n, (b, start, end) in enumerate(bounds):
        slot_k = torch.zeros(H, M, K, dtype=acc, device=device)
        slot_v = torch.zeros(H, M, V, dtype=acc, device=device)
        slots_live = False
        # (k, v, g, k_win) of each token in the window, oldest first; each entry `[H, dim]`
        window: list[tuple[torch.Tensor, ...]] = []
        seen = 0
        if initial_state is not None:
            slot_k = initial_state.slot_k[n].to(acc)
            slot_v = initial_state.slot_v[n].to(acc)
            slots_live = bool(initial_state.slots_live[n])
            seen = int(initial_state.seen[n])
            wk, wv, wg, wkw, valid = start_window
            window = [(wk[n, r], wv[n, r], wg[n, r], wkw[n, r]) for r in range(valid.shape[1]) if valid[n, r]]

        for t in range(start, end):
            window.append((k[b, t], v[b, t], g[b, t], k_win[b, t]))
            # 1. absorb the token that left the window (with w == 0, the current token itself)
            while w is not None and len(window) > w:
                k_j, v_j, g_j, _ = window.pop(0)
                a = torch.exp(g_j.to(acc))  # [H, M]
                s = 1 - a
                slot_k = a[..., None] * slot_k + s[..., None] * k_j.to(acc)[:, None, :]
                slot_v = a[..., None] * slot_v + s[..., None] * v_j.to(acc)[:, None, :]
                slots_live = True
            # 2-4. one softmax over the M slots and the window
            q_t = q[b, t].to(acc).view(H, G, K)
            qw_t = q_win[b, t].to(acc).view(H, G, K)
            z_slots = scale * torch.einsum("hgk,hmk->hgm", q_t, slot_k)
            if not slots_live:
                z_slots = torch.full_like(z_slots, float("-inf"))
            win_kw = torch.stack([e[3] for e in window], dim=1).to(acc) if window else q_t.new_zeros(H, 0, K)
            win_v = torch.stack([e[1] for e in window], dim=1).to(acc) if window else q_t.new_zeros(H, 0, V)
            z_win = scale * torch.einsum("hgk,hlk->hgl", qw_t, win_kw)
            p = torch.softmax(torch.cat([z_slots, z_win], dim=-1), dim=-1)
            # 5. read out both memories
            o_t = torch.einsum("hgm,hmv->hgv", p[..., :M], slot_v) + torch.einsum("hgl,hlv->hgv", p[..., M:], win_v)
            o[b, t] = o_t.reshape(HQ, V)
            seen += 1
        finals.append((slot_k, slot_v, window, seen, slots_live))

    o = o.to(q.dtype)
    if not output_final_state:
        return o, None
    return o, _ring_state(finals, w, H, M, K, V, k.dtype, acc, device)


def _ring_state(finals, w, H, M, K, V, dtype, acc, device) -> NHAState:
    """Pack each sequence's slots and window list into an `NHAState` whose window is a ring buffer."""
    rows = w if w is not None else max((len(f[2]) for f in finals), default=0)
    zeros = {
        "k": torch.zeros(H, K, dtype=dtype, device=device),
        "v": torch.zeros(H, V, dtype=dtype, device=device),
        "g": torch.zeros(H, M, dtype=dtype, device=device),
    }
    buffers = {name: [] for name in ("k", "v", "g", "kw")}
    for _, _, window, seen, _ in finals:
        ring = [[zeros["k"], zeros["v"], zeros["g"], zeros["k"]] for _ in range(rows)]
        for i, entry in enumerate(window):
            p = seen - len(window) + i  # absolute position of this token in its sequence
            ring[p % rows] = list(entry)
        for j, name in enumerate(buffers):
            stacked = torch.stack([r[j] for r in ring]) if rows else zeros[name[0]].new_zeros(0, *zeros[name[0]].shape)
            buffers[name].append(stacked.to(dtype))
    return NHAState(
        slot_k=torch.stack([f[0] for f in finals]),
        slot_v=torch.stack([f[1] for f in finals]),
        window_k=torch.stack(buffers["k"]),
        window_v=torch.stack(buffers["v"]),
        window_g=torch.stack(buffers["g"]),
        window_k_win=torch.stack(buffers["kw"]),
        seen=torch.tensor([f[3] for f in finals], dtype=torch.long, device=device),
        slots_live=torch.tensor([f[4] for f in finals], dtype=torch.bool, device=device),
    )
