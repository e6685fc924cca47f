"""Validation shared by every NHA implementation: user mistakes become a ValueError that says what was expected.

B batch, T time, HQ query heads, H key/value heads, K/V head dims, M slots, N sequences.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from nha.ops.state import NHAState


@dataclass(frozen=True)
class NHAShapes:
    batch: int
    time: int
    q_heads: int
    kv_heads: int
    k_dim: int
    v_dim: int
    num_slots: int
    num_seqs: int
    window_size: Optional[int]

    @property
    def group(self) -> int:
        return self.q_heads // self.kv_heads


def _shape(name: str, t: torch.Tensor, expected: tuple[int, ...], what: str) -> None:
    if tuple(t.shape) != expected:
        raise ValueError(f"`{name}` must have shape {list(expected)} ({what}), got {list(t.shape)}")


def check_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    window_size: Optional[int],
    q_win: Optional[torch.Tensor] = None,
    k_win: Optional[torch.Tensor] = None,
    initial_state: Optional[NHAState] = None,
    cu_seqlens: Optional[torch.Tensor] = None,
    check_gate_values: bool = True,
) -> NHAShapes:
    """Check every argument of the NHA operator and return the sizes; raise ValueError on anything off."""
    named = {"q": q, "k": k, "v": v, "g": g}
    if q_win is not None:
        named["q_win"] = q_win
    if k_win is not None:
        named["k_win"] = k_win
    for name, t in named.items():
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"`{name}` must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"`{name}` must be 4-D [B, T, heads, dim], got shape {list(t.shape)}")
        if not t.is_floating_point():
            raise ValueError(f"`{name}` must be a floating-point tensor, got {t.dtype}")
    devices = {t.device for t in named.values()}
    if len(devices) > 1:
        raise ValueError(f"all inputs must be on one device, got {sorted(str(d) for d in devices)}")
    dtypes = {name: t.dtype for name, t in named.items()}
    if len(set(dtypes.values())) > 1:
        raise ValueError(f"all inputs must share one dtype, got {', '.join(f'{n}={d}' for n, d in dtypes.items())}")

    B, T, HQ, K = q.shape
    H = k.shape[2]
    _shape("k", k, (B, T, H, K), "[B, T, H, K] with B, T, K of q")
    if v.dim() != 4 or v.shape[:3] != (B, T, H):
        raise ValueError(f"`v` must have shape [B, T, H, V] = [{B}, {T}, {H}, V], got {list(v.shape)}")
    V = v.shape[3]
    if g.shape[:3] != (B, T, H):
        raise ValueError(f"`g` must have shape [B, T, H, M] = [{B}, {T}, {H}, M], got {list(g.shape)}")
    M = g.shape[3]
    if H == 0 or HQ % H != 0:
        raise ValueError(f"the number of query heads ({HQ}) must be a positive multiple of the key/value heads ({H})")
    if q_win is not None:
        _shape("q_win", q_win, tuple(q.shape), "like q")
    if k_win is not None:
        _shape("k_win", k_win, tuple(k.shape), "like k")

    if window_size is not None:
        if isinstance(window_size, bool) or not isinstance(window_size, int):
            raise ValueError(f"`window_size` must be an int >= 0 or None (unbounded), got {window_size!r}")
        if window_size < 0:
            raise ValueError(f"`window_size` must be >= 0 or None (unbounded), got {window_size}")
    if M == 0 and window_size == 0:
        raise ValueError("num_slots == 0 with window_size == 0 leaves nothing to attend to: give slots or a window")
    if check_gate_values and M > 0 and g.numel() > 0:
        top = float(g.detach().amax())  # one reduction and one host sync: amax propagates NaN
        if top != top:
            raise ValueError("`g` (log forget gates) contains NaN")
        if top > 0:
            raise ValueError(f"`g` holds log forget gates and must be <= 0 everywhere, got max {top:.4g}")

    N = B
    if cu_seqlens is not None:
        if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dim() != 1 or cu_seqlens.is_floating_point():
            raise ValueError("`cu_seqlens` must be a 1-D integer tensor [N + 1] of cumulative sequence lengths")
        if B != 1:
            raise ValueError(f"with `cu_seqlens` the batch must be packed into B == 1, got B == {B}")
        if cu_seqlens.numel() < 2:
            raise ValueError("`cu_seqlens` must hold at least two offsets [0, ..., T]")
        cs = cu_seqlens.tolist()
        if cs[0] != 0 or cs[-1] != T:
            raise ValueError(f"`cu_seqlens` must start at 0 and end at T = {T}, got {cs[0]} .. {cs[-1]}")
        if any(b < a for a, b in zip(cs, cs[1:])):
            raise ValueError(f"`cu_seqlens` must be non-decreasing, got {cs}")
        N = len(cs) - 1

    if initial_state is not None:
        check_state(initial_state, N, H, M, K, V, window_size, q.device)
    return NHAShapes(B, T, HQ, H, K, V, M, N, window_size)


def check_state(state: NHAState, N: int, H: int, M: int, K: int, V: int, window_size, device) -> None:
    if not isinstance(state, NHAState):
        raise ValueError(f"`initial_state` must be an nha.ops.NHAState, got {type(state).__name__}")
    _shape("initial_state.slot_k", state.slot_k, (N, H, M, K), "[N sequences, H, M, K]")
    _shape("initial_state.slot_v", state.slot_v, (N, H, M, V), "[N sequences, H, M, V]")
    L = state.window_rows
    if window_size is not None and L != window_size:
        raise ValueError(f"`initial_state` holds a window of {L} rows but window_size is {window_size}")
    _shape("initial_state.window_k", state.window_k, (N, L, H, K), "[N, L, H, K]")
    _shape("initial_state.window_v", state.window_v, (N, L, H, V), "[N, L, H, V]")
    _shape("initial_state.window_g", state.window_g, (N, L, H, M), "[N, L, H, M]")
    _shape("initial_state.window_k_win", state.window_k_win, (N, L, H, K), "[N, L, H, K]")
    _shape("initial_state.seen", state.seen, (N,), "[N]")
    _shape("initial_state.slots_live", state.slots_live, (N,), "[N]")
    for t in state.tensors():
        if t.device != device:
            raise ValueError(f"`initial_state` is on {t.device} but the inputs are on {device}")
    if window_size is None and L > 0 and bool((state.seen > L).any()):
        raise ValueError("`initial_state.seen` exceeds the rows of an unbounded window")
