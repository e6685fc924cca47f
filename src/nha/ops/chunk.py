"""Chunkwise-parallel NHA in PyTorch (NHA_SPEC section 5): runs on any device, differentiable by autograd.

B batch, T time, HQ query heads, H key/value heads, G = HQ // H, K/V head dims, M slots, C chunk, w window,
N sequences, P prefix rows (the initial state's window), E = P + longest sequence ("extended" time).
The derivation is in ops/README.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from nha.ops.checks import NHAShapes, check_inputs
from nha.ops.precision import without_autocast
from nha.ops.state import NHAState

# A finite "minus infinity" for masked logits: exp() of it is exactly 0 and its gradients stay finite.
MASKED = -1e30
# exp(-1000) is 0 in float32 and float64, so clamping log gates there changes nothing but keeps cumsums finite.
MIN_LOG_GATE = -1000.0


@dataclass
class Extended:
    """Every sequence laid out densely as [initial window rows | its tokens | padding], length E."""

    q: torch.Tensor  # [N, E, HQ, K]
    q_win: torch.Tensor  # [N, E, HQ, K]
    k: torch.Tensor  # [N, E, H, K]
    v: torch.Tensor  # [N, E, H, V]
    g: torch.Tensor  # [N, E, H, M], 0 on padded rows (identity steps); with raw_gates, as given
    k_win: torch.Tensor  # [N, E, H, K]
    valid: torch.Tensor  # [N, E] bool: a real token (from the state or the input)
    prefix: int  # P
    lengths: torch.Tensor  # [N] tokens of each sequence in this call
    first_valid: torch.Tensor  # [N] first real row
    seen: torch.Tensor  # [N] tokens consumed before this call
    slot_k: torch.Tensor  # [N, H, M, K] initial slots (acc dtype)
    slot_v: torch.Tensor  # [N, H, M, V]
    slots_live: torch.Tensor  # [N] bool


def clamp_gates(g: torch.Tensor, valid: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """`[N, E, H, M]` log gates in `acc`, clamped at MIN_LOG_GATE and 0 on rows that are not `valid` `[N, E]`."""
    return g.to(acc).clamp(min=MIN_LOG_GATE) * valid[:, :, None, None]


def _gather_rows(x: torch.Tensor, index: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """`out[n, t] = x[n_or_0, index[n, t]]` where `keep`, else 0. x: `[B, T, ...]`, index/keep: `[N, L]`."""
    if x.shape[1] == 0:  # nothing to gather from (a zero-length call)
        return x.new_zeros(*index.shape, *x.shape[2:])
    flat = x.flatten(0, 1) if x.shape[0] == 1 else None
    if flat is not None:
        out = flat[index.clamp(0, max(flat.shape[0] - 1, 0)).reshape(-1)].reshape(*index.shape, *x.shape[2:])
    else:
        idx = index.clamp(0, max(x.shape[1] - 1, 0)).view(*index.shape, *([1] * (x.dim() - 2)))
        out = torch.gather(x, 1, idx.expand(-1, -1, *x.shape[2:]))
    return out * keep.view(*keep.shape, *([1] * (x.dim() - 2))).to(out.dtype)


def _extend(q, k, v, g, q_win, k_win, shapes: NHAShapes, cu_seqlens, state: Optional[NHAState], acc,
            raw_gates: bool = False) -> Extended:
    N, T, device = shapes.num_seqs, shapes.time, q.device
    if cu_seqlens is None:
        starts = torch.zeros(N, dtype=torch.long, device=device)
        lengths = torch.full((N,), T, dtype=torch.long, device=device)
        t_max = T if N > 0 else 0  # known on the host: no sync
    else:
        # the longest sequence sets the layout: read where the offsets live (a CPU cu_seqlens costs no sync, a GPU
        # one a host sync), then they move to the inputs' device without waiting for the GPU
        cu = cu_seqlens.long()
        t_max = int((cu[1:] - cu[:-1]).max()) if N > 0 else 0
        cu = cu.to(device, non_blocking=True)
        starts, lengths = cu[:-1], cu[1:] - cu[:-1]
    t = torch.arange(t_max, device=device)
    keep = t[None, :] < lengths[:, None]  # [N, t_max]
    if cu_seqlens is None:  # already one row per sequence
        seq = lambda x: x  # noqa: E731
    else:
        index = starts[:, None] + t[None, :]
        seq = lambda x: _gather_rows(x, index, keep)  # noqa: E731

    if state is None:
        P = 0
        M, K, V, H = shapes.num_slots, shapes.k_dim, shapes.v_dim, shapes.kv_heads
        slot_k = torch.zeros(N, H, M, K, dtype=acc, device=device)
        slot_v = torch.zeros(N, H, M, V, dtype=acc, device=device)
        seen = torch.zeros(N, dtype=torch.long, device=device)
        live = torch.zeros(N, dtype=torch.bool, device=device)
        prefix = [x.new_zeros(N, 0, *x.shape[2:]) for x in (k, v, g, k_win)]
        prefix_valid = torch.zeros(N, 0, dtype=torch.bool, device=device)
    else:
        P = state.window_rows
        slot_k, slot_v = state.slot_k.to(acc), state.slot_v.to(acc)
        seen, live = state.seen.to(device), state.slots_live.to(device)
        *prefix, prefix_valid = state.ordered_window()
        prefix = [x * prefix_valid[:, :, None, None].to(x.dtype) for x in prefix]

    def cat(pre, x):
        return seq(x) if pre.shape[1] == 0 else torch.cat([pre.to(x.dtype), seq(x)], dim=1)

    zeros_q = q.new_zeros(N, P, *q.shape[2:])
    valid = torch.cat([prefix_valid, keep], dim=1)
    gates = cat(prefix[2], g)
    if not raw_gates:  # the Triton path clamps and masks inside its gate kernel
        gates = clamp_gates(gates, valid, acc)
    return Extended(
        q=cat(zeros_q, q),
        q_win=cat(zeros_q, q_win),
        k=cat(prefix[0], k),
        v=cat(prefix[1], v),
        g=gates,
        k_win=cat(prefix[3], k_win),
        valid=valid,
        prefix=P,
        lengths=lengths,
        first_valid=P - torch.clamp(seen, max=P),
        seen=seen,
        slot_k=slot_k,
        slot_v=slot_v,
        slots_live=live,
    )


def _shift_right(x: torch.Tensor, by: int) -> torch.Tensor:
    """`[N, E, ...]` -> rows moved `by` later in time, zeros in front."""
    if by == 0:
        return x
    if by >= x.shape[1]:
        return torch.zeros_like(x)
    return torch.cat([x.new_zeros(x.shape[0], by, *x.shape[2:]), x[:, : x.shape[1] - by]], dim=1)


def pad_time(x: torch.Tensor, length: int) -> torch.Tensor:
    """`[N, E, ...]` -> `[N, length, ...]` with zero rows at the end (identity steps for the slot scan)."""
    return x if x.shape[1] == length else torch.cat([x, x.new_zeros(x.shape[0], length - x.shape[1], *x.shape[2:])], 1)


# The matmul form writes exp(G_t - G_j) as exp(G_t) * exp(-G_j) inside a chunk; exp(-G_j) stays below
# exp(SAFE_DECAY) (float32 keeps ~1e26 times a few thousand without overflow). Chunks that decay further fall back
# to the exact pairwise form.
SAFE_DECAY = 60.0


class SlotChunks:
    """The gated-slot recurrence of the slot path, in chunks of C (GSA's two passes, NHA_SPEC section 5).

    Built from the shifted inputs; ``logits(q)`` is pass 1, ``read(p)`` is pass 2. ``exact=None`` picks the matmul
    form when every chunk's log decay stays above ``-SAFE_DECAY``, else the pairwise form (`[C, C, M]` per chunk).
    """

    def __init__(self, k, v, g, slot_k, slot_v, chunk_size: int, group: int, exact: Optional[bool] = None):
        # k: [N, E, H, K], v: [N, E, H, V], g: [N, E, H, M] (acc dtype, 0 = identity step)
        N, E, H, K = k.shape
        V, M, C = v.shape[-1], g.shape[-1], chunk_size
        n_chunks = -(-E // C)
        Ep = n_chunks * C
        self.shape = (N, E, H, group, K, V, M, C, n_chunks)
        acc = g.dtype
        to_chunks = lambda x: pad_time(x, Ep).view(N, n_chunks, C, H, -1).permute(0, 3, 1, 2, 4)  # noqa: E731
        self.k = to_chunks(k.to(acc))  # [N, H, nC, C, K]
        self.v = to_chunks(v.to(acc))  # [N, H, nC, C, V]
        gc = to_chunks(g)  # [N, H, nC, C, M]
        self.decay = gc.cumsum(dim=-2)  # [N, H, nC, C, M] log decay from the chunk start, inclusive (<= 0)
        s = -torch.expm1(gc)  # write strength 1 - exp(g)
        if exact is None:
            exact = n_chunks > 0 and bool((self.decay[..., -1, :] < -SAFE_DECAY).any())
        self.exact = exact
        self.causal = torch.ones(C, C, dtype=torch.bool, device=g.device).tril()
        if exact:
            diff = self.decay[..., :, None, :] - self.decay[..., None, :, :]  # [N, H, nC, C(t), C(j), M]
            # weight of token j in slot m as seen from t: exp(G_t - G_j) s_j, zero for j > t (each factor <= 1)
            self.intra = torch.exp(diff.masked_fill(~self.causal[:, :, None], float("-inf"))) * s[..., None, :, :]
        else:
            self.key_weight = torch.exp(-self.decay) * s  # [N, H, nC, C, M]: exp(-G_j) s_j
        self.query_decay = torch.exp(self.decay)  # [N, H, nC, C, M]: exp(G_t)
        to_end = torch.exp(self.decay[..., -1:, :] - self.decay) * s  # [N, H, nC, C, M]
        chunk_kv = torch.cat([self.k, self.v], dim=-1)  # [N, H, nC, C, K + V]
        updates = (to_end.transpose(-1, -2) @ chunk_kv).unbind(2)  # nC x [N, H, M, K + V]
        chunk_decay = torch.exp(self.decay[..., -1, :]).unbind(2)  # nC x [N, H, M]
        state = torch.cat([slot_k, slot_v], dim=-1).to(acc)  # [N, H, M, K + V]
        starts = []
        for decay_c, update_c in zip(chunk_decay, updates):
            starts.append(state)
            state = decay_c[..., None] * state + update_c
        self.start_states = torch.stack(starts, dim=2) if starts else state.new_zeros(N, H, 0, M, K + V)
        self.final_state = state  # [N, H, M, K + V]

    def _to_chunks_q(self, x: torch.Tensor) -> torch.Tensor:
        """`[N, E, H * G, D]` -> `[N, H, nC, G, C, D]`."""
        N, E, H, G, K, V, M, C, nC = self.shape
        return pad_time(x, nC * C).view(N, nC, C, H, G, -1).permute(0, 3, 1, 4, 2, 5)

    def _from_chunks_q(self, x: torch.Tensor) -> torch.Tensor:
        """`[N, H, nC, G, C, D]` -> `[N, E, H * G, D]`."""
        N, E, H, G, K, V, M, C, nC = self.shape
        return x.permute(0, 2, 4, 1, 3, 5).reshape(N, nC * C, H * G, -1)[:, :E]

    def logits(self, q: torch.Tensor) -> torch.Tensor:
        """Pass 1: `<q_t, Ks_t[m]>` for every slot m. q: `[N, E, HQ, K]` -> `[N, E, HQ, M]` (unscaled)."""
        K = self.shape[4]
        qc = self._to_chunks_q(q.to(self.k.dtype))  # [N, H, nC, G, C, K]
        scores = (qc @ self.k[:, :, :, None].transpose(-1, -2)).masked_fill(~self.causal, 0)  # [.., G, C(t), C(j)]
        from_start = qc @ self.start_states[:, :, :, None, :, :K].transpose(-1, -2)  # [N, H, nC, G, C, M]
        if self.exact:
            intra = torch.einsum("nhcgtj,nhctjm->nhcgtm", scores, self.intra)
            return self._from_chunks_q(intra + from_start * self.query_decay[:, :, :, None])
        z = (from_start + scores @ self.key_weight[:, :, :, None]) * self.query_decay[:, :, :, None]
        return self._from_chunks_q(z)

    def read(self, p: torch.Tensor) -> torch.Tensor:
        """Pass 2: `sum_m p_t[m] Vs_t[m]`. p: `[N, E, HQ, M]` slot probabilities -> `[N, E, HQ, V]`."""
        K = self.shape[4]
        pc = self._to_chunks_q(p)  # [N, H, nC, G, C, M]
        decayed = pc * self.query_decay[:, :, :, None]  # p_t[m] exp(G_t[m])
        from_start = decayed @ self.start_states[:, :, :, None, :, K:]  # [N, H, nC, G, C, V]
        if self.exact:
            weights = torch.einsum("nhcgtm,nhctjm->nhcgtj", pc, self.intra)  # [N, H, nC, G, C, C]
        else:
            weights = (decayed @ self.key_weight[:, :, :, None].transpose(-1, -2)).masked_fill(~self.causal, 0)
        return self._from_chunks_q(from_start + weights @ self.v[:, :, :, None])


def banded_attention(q, k, v, valid, window: int, scale: float, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention of each query over the last `window` keys (itself included), with its log-sum-exp.

    Args:
        q: `[N, E, HQ, K]`, k: `[N, E, H, K]`, v: `[N, E, H, V]`, valid: `[N, E]` keys that exist.
    Returns:
        o `[N, E, HQ, V]` (acc dtype) and lse `[N, E, HQ]`; rows with no valid key have lse ~ MASKED.
    """
    N, E, HQ, K = q.shape
    H, V = k.shape[2], v.shape[3]
    G = HQ // H
    acc = torch.promote_types(q.dtype, torch.float32)
    block = max(1, min(block, E))
    nB = -(-E // block)
    Ep, span = nB * block, block + window - 1
    qb = pad_time(q.to(acc), Ep).view(N, nB, block, H, G, K).permute(0, 3, 1, 4, 2, 5)  # [N, H, nB, G, Bq, K]

    def windows(x):  # [N, E, ...] -> [N, nB, span, ...]: keys of block b are rows b*Bq - (w - 1) .. b*Bq + Bq - 1
        x = torch.cat([x.new_zeros(x.shape[0], window - 1, *x.shape[2:]), pad_time(x, Ep)], dim=1)
        return x.unfold(1, span, block).movedim(-1, 2)

    kb = windows(k.to(acc)).permute(0, 3, 1, 2, 4)  # [N, H, nB, span, K]
    vb = windows(v.to(acc)).permute(0, 3, 1, 2, 4)  # [N, H, nB, span, V]
    vmask = windows(valid)  # [N, nB, span]
    i = torch.arange(block, device=q.device)[:, None]
    j = torch.arange(span, device=q.device)[None, :]
    band = (j >= i) & (j <= i + window - 1)  # [Bq, span]
    allowed = band[None, None] & vmask[:, :, None, :]  # [N, nB, Bq, span]
    logits = scale * (qb @ kb[:, :, :, None].transpose(-1, -2))  # [N, H, nB, G, Bq, span]
    logits = logits.masked_fill(~allowed[:, None, :, None], MASKED)
    lse = torch.logsumexp(logits, dim=-1)  # [N, H, nB, G, Bq]
    o = torch.exp(logits - lse[..., None]) @ vb[:, :, :, None]  # [N, H, nB, G, Bq, V]
    o = o.permute(0, 2, 4, 1, 3, 5).reshape(N, Ep, HQ, V)[:, :E]
    lse = lse.permute(0, 2, 4, 1, 3).reshape(N, Ep, HQ)[:, :E]
    return o, lse


@without_autocast
def chunk_nha(
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
    chunk_size: int = 64,
    check_gates: bool = True,
) -> tuple[torch.Tensor, Optional[NHAState]]:
    """Native Hybrid Attention in chunkwise-parallel form; same arguments and results as `naive_recurrent_nha`.

    Args:
        q: `[B, T, HQ, K]`, k: `[B, T, H, K]`, v: `[B, T, H, V]`, g: `[B, T, H, M]` (`<= 0`).
        window_size: `w >= 0`, or None (unbounded).
        q_win, k_win: window-path queries/keys (default q, k); scale: default `K ** -0.5`.
        initial_state, output_final_state, cu_seqlens: as in `naive_recurrent_nha`.
        chunk_size: C, the length of the slot path's chunks.
        check_gates: check that g holds no NaN and nothing > 0 (on CUDA that reads g back: a host sync).

    Returns:
        `o` `[B, T, HQ, V]` and the final `NHAState` (or None).

    Example:
        >>> q, k, v = (torch.randn(1, 100, 4, 32) for _ in range(3))
        >>> g = torch.nn.functional.logsigmoid(torch.randn(1, 100, 4, 16)) / 8
        >>> o, state = chunk_nha(q, k, v, g, window_size=8, output_final_state=True)
    """
    shapes = check_inputs(q, k, v, g, window_size, q_win, k_win, initial_state, cu_seqlens, check_gates)
    if chunk_size < 1:
        raise ValueError(f"`chunk_size` must be >= 1, got {chunk_size}")
    scale = shapes.k_dim ** -0.5 if scale is None else scale
    q_win = q if q_win is None else q_win
    k_win = k if k_win is None else k_win
    acc = torch.promote_types(q.dtype, torch.float32)
    w, M = window_size, shapes.num_slots

    ext = _extend(q, k, v, g, q_win, k_win, shapes, cu_seqlens, initial_state, acc)
    N, E = ext.valid.shape
    row = torch.arange(E, device=q.device)
    if w is None or initial_state is None and w >= E:
        slots_live = ext.slots_live[:, None].expand(N, E)  # nothing ever leaves the window
    else:
        slots_live = ext.slots_live[:, None] | (row[None, :] - w >= ext.first_valid[:, None])
    use_slots = M > 0 and bool(slots_live.any())

    if not use_slots and initial_state is None and w is None:
        o_ext = _causal_sdpa(ext, scale, acc)
    else:
        window = E if w is None else min(w, E)
        if window > 0:
            o_win, lse_win = banded_attention(ext.q_win, ext.k_win, ext.v, ext.valid, window, scale,
                                              block=min(max(32, window), 256))
        else:
            o_win = ext.q.new_zeros(N, E, shapes.q_heads, shapes.v_dim, dtype=acc)
            lse_win = ext.q.new_full((N, E, shapes.q_heads), MASKED, dtype=acc)
        if use_slots:
            slots = _slot_path(ext, w, chunk_size, shapes.group)
            z = scale * slots.logits(ext.q)  # [N, E, HQ, M]
            z = z.masked_fill(~slots_live[:, :, None, None], MASKED)
            lse = torch.logaddexp(torch.logsumexp(z, dim=-1), lse_win)
            o_ext = torch.exp(lse_win - lse)[..., None] * o_win + slots.read(torch.exp(z - lse[..., None]))
        else:
            slots = None
            o_ext = o_win
    o = _to_input_layout(o_ext[:, ext.prefix:], shapes, cu_seqlens, ext.lengths).to(q.dtype)
    if not output_final_state:
        return o, None
    return o, _final_state(ext, w, shapes, slots if use_slots else None, acc)


def _slot_path(ext: Extended, w: Optional[int], chunk_size: int, group: int) -> SlotChunks:
    if w is None:  # unbounded window: nothing is ever absorbed, the slots stay as given
        k, v, g = ext.k.new_zeros(ext.k.shape), ext.v.new_zeros(ext.v.shape), torch.zeros_like(ext.g)
    else:
        # token t - w enters the slots at step t; rows past a sequence's end stay identity steps
        N, E = ext.valid.shape
        inside = torch.arange(E, device=ext.g.device)[None, :] < (ext.prefix + ext.lengths)[:, None]
        k, v = _shift_right(ext.k, w), _shift_right(ext.v, w)
        g = _shift_right(ext.g, w) * inside[:, :, None, None]
    return SlotChunks(k, v, g, ext.slot_k, ext.slot_v, chunk_size, group)


def _causal_sdpa(ext: Extended, scale: float, acc) -> torch.Tensor:
    """Plain causal attention for sequences with nothing in the slots; per sequence when lengths differ."""
    q, k, v = (x.to(acc).transpose(1, 2) for x in (ext.q_win, ext.k_win, ext.v))
    lengths = ext.lengths.tolist()
    if len(set(lengths)) <= 1:
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=True)
        return o.transpose(1, 2)
    outs = []
    for n, length in enumerate(lengths):
        o = F.scaled_dot_product_attention(q[n : n + 1, :, :length], k[n : n + 1, :, :length], v[n : n + 1, :, :length],
                                           is_causal=True, scale=scale, enable_gqa=True)
        outs.append(pad_time(o.transpose(1, 2), q.shape[2]))
    return torch.cat(outs, dim=0)


def _to_input_layout(o: torch.Tensor, shapes: NHAShapes, cu_seqlens, lengths) -> torch.Tensor:
    """`[N, t_max, HQ, V]` per-sequence rows -> `[B, T, HQ, V]` (packed back when `cu_seqlens` is given)."""
    if cu_seqlens is None:
        return o
    # packed row p of sequence n is its row p - start_n: an index_select (a boolean mask would sync on its count)
    cu = F.pad(lengths.cumsum(0), (1, 0))
    p = torch.arange(shapes.time, device=o.device)
    n = torch.searchsorted(cu[1:], p, right=True)
    return o.flatten(0, 1).index_select(0, n * o.shape[1] + p - cu[n])[None]


def _final_state(ext: Extended, w, shapes: NHAShapes, slots: Optional[SlotChunks], acc) -> NHAState:
    N, E = ext.valid.shape
    K = shapes.k_dim
    seen = ext.seen + ext.lengths
    if slots is None:  # no slot was ever live in this call, so nothing was absorbed: the slots are as given
        slot_k, slot_v = ext.slot_k, ext.slot_v
    else:
        slot_k, slot_v = slots.final_state[..., :K], slots.final_state[..., K:]
    rows = w if w is not None else int(seen.max()) if N > 0 else 0
    live = ext.slots_live | (seen > w) if w is not None else ext.slots_live
    # ordered row r holds extended row (P + length - rows + r); it goes to ring row (seen + r) % rows
    r = torch.arange(rows, device=seen.device)
    src = (ext.prefix + ext.lengths)[:, None] - rows + r[None, :]  # [N, rows]
    keep = (src >= 0) & torch.gather(ext.valid, 1, src.clamp(0, max(E - 1, 0))) if E > 0 else src >= 0
    ring = (seen[:, None] + r[None, :]) % max(rows, 1)
    order = torch.argsort(ring, dim=1)  # ring row -> ordered row

    def window(x):
        ordered = _gather_rows(x, src, keep)
        return torch.gather(ordered, 1, order.view(N, rows, 1, 1).expand(-1, -1, *x.shape[2:]))

    return NHAState(
        slot_k=slot_k.to(acc),
        slot_v=slot_v.to(acc),
        window_k=window(ext.k),
        window_v=window(ext.v),
        window_g=window(ext.g.to(ext.k.dtype)),  # gates as given (clamped at exp() == 0)
        window_k_win=window(ext.k_win),
        seen=seen,
        slots_live=live,
    )
