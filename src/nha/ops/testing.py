"""Inputs and error measures shared by the operator's tests and benchmarks (fla's `assert_close` idea).

B batch, T time, HQ query heads, H key/value heads, K/V head dims, M slots.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from nha.ops.state import NHAState

INPUT_NAMES = ("q", "k", "v", "g", "q_win", "k_win")


def make_inputs(
    B: int, T: int, HQ: int, H: int, K: int, V: int, M: int,
    *, dtype: torch.dtype = torch.float32, device: str = "cpu", gate_scale: float = 1.0, requires_grad: bool = False,
    seed: Optional[int] = None, shared_window_inputs: bool = False,
) -> dict[str, Optional[torch.Tensor]]:
    """Random `q, k, v, g, q_win, k_win` with gates `logsigmoid(N(0,1) * gate_scale) / 2` (all `<= 0`); with
    `shared_window_inputs`, q_win and k_win are None (the window path uses q and k)."""
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    rnd = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    x = {
        "q": rnd(B, T, HQ, K), "k": rnd(B, T, H, K), "v": rnd(B, T, H, V),
        "g": F.logsigmoid(rnd(B, T, H, M) * gate_scale) / 2,
        "q_win": rnd(B, T, HQ, K), "k_win": rnd(B, T, H, K),
    }
    x = {n: t.to(device=device, dtype=dtype).requires_grad_(requires_grad) for n, t in x.items()}
    if shared_window_inputs:
        x["q_win"] = x["k_win"] = None
    return x


def random_state(N: int, H: int, M: int, K: int, V: int, window_size: Optional[int], seen: list[int],
                 *, dtype: torch.dtype = torch.float32, requires_grad: bool = False,
                 slots_live: Optional[bool] = None) -> NHAState:
    """A state with random slots and window rows after `seen[n]` tokens.

    Slots are live where a token was absorbed (`seen > w`), or everywhere when `slots_live=True` (given content).
    """
    rows = window_size if window_size is not None else max(seen, default=0)
    seen_t = torch.tensor(seen, dtype=torch.long)
    # rows that hold no token yet are zero, as every implementation leaves them
    empty = (torch.arange(rows)[None, :] >= seen_t[:, None]).view(N, rows, 1, 1)
    window = lambda d: torch.randn(N, rows, H, d, dtype=dtype).masked_fill(empty, 0)  # noqa: E731
    state = NHAState(
        slot_k=torch.randn(N, H, M, K, dtype=dtype), slot_v=torch.randn(N, H, M, V, dtype=dtype),
        window_k=window(K), window_v=window(V), window_g=(F.logsigmoid(window(M)) / 2).masked_fill(empty, 0),
        window_k_win=window(K),
        seen=seen_t,
        slots_live=torch.tensor([bool(slots_live) or (window_size is not None and s > window_size) for s in seen]),
    )
    return state.map(lambda t: t.requires_grad_(requires_grad) if t.is_floating_point() else t)


def rel_rmse(x: torch.Tensor, ref: torch.Tensor) -> float:
    """`||x - ref|| / ||ref||` in float64; 0 for two empty tensors, inf for any NaN."""
    x, ref = x.detach().double(), ref.detach().double()
    if x.numel() == 0:
        return 0.0
    if torch.isnan(x).any():
        return float("inf")
    return ((x - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def max_abs(x: torch.Tensor, ref: torch.Tensor) -> float:
    return 0.0 if x.numel() == 0 else (x.detach().double() - ref.detach().double()).abs().max().item()
