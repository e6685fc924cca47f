"""Initial slot gates of a converted model, derived from its key projection.

The gate projection `W_f: hidden -> H * M` is the only parameter a pretrained Transformer lacks. Random gates
would make every slot forget at an arbitrary, token-independent-looking rate; instead each KV head's `M` gate
rows are built from that head's `D` key rows (as Liger, arXiv 2503.01496, builds gates by pooling the key
projection), so a token's gates react to the same features its key does:

    W_f[h, m] = s_h * sum_j P[m, j] * W_k[h, j]          P: [M, D], s_h: one scale per KV head

- `M <= D`: `P` averages contiguous groups of key rows (row m pools rows j with floor(j * M / D) == m); with
  `M == D` (SmolLM2: D = 64, M = 64) it is the identity.
- `M > D`: the first D rows copy the key rows; each further row is a fixed random unit-norm mix of the head's key
  rows (seeded). Copies would not do: two slots with equal gates receive equal writes and stay equal forever.

Scale: the key projection's magnitude is arbitrary for a gate, so `s_h` sets the spread of `f = W_f x` to what a
freshly initialised NHA layer has (`initializer_range * sqrt(hidden)` on unit-variance inputs, i.e. entries of
std `initializer_range`), measured through the layer's input RMSNorm weight `gamma` that really scales `x`. Gates
then start in the paper's regime `g = logsigmoid(f) / 8` with `f` around 0: decays `exp(g)` near 0.92 per token,
spread both ways, rather than saturated at 0 or 1.
"""
from __future__ import annotations

from typing import Optional

import torch


def pooling_matrix(num_slots: int, head_dim: int, *, seed: int = 0) -> torch.Tensor:
    """`P` `[M, D]` mapping a head's D key rows to its M gate rows (see the module docstring)."""
    M, D = num_slots, head_dim
    if M <= 0 or D <= 0:
        raise ValueError(f"num_slots and head_dim must be positive, got {M} and {D}")
    if M <= D:
        group = torch.arange(D) * M // D  # [D]: the gate row each key row pools into
        P = torch.zeros(M, D)
        P[group, torch.arange(D)] = 1.0
        return P / P.sum(1, keepdim=True)
    g = torch.Generator().manual_seed(seed)
    extra = torch.randn(M - D, D, generator=g, dtype=torch.float64)
    extra = extra / extra.norm(dim=1, keepdim=True)
    return torch.cat([torch.eye(D, dtype=torch.float64), extra]).float()


def gate_from_keys(
    k_weight: torch.Tensor,
    *,
    num_kv_heads: int,
    num_slots: int,
    norm_weight: Optional[torch.Tensor] = None,
    target_std: float,
    seed: int = 0,
) -> torch.Tensor:
    """The gate projection's weight `[H * M, hidden]` from the key projection's weight `[H * D, hidden]`.

    Args:
        k_weight: `[H * D, hidden]`, the layer's `k_proj.weight`.
        num_kv_heads: H.
        num_slots: M.
        norm_weight: `[hidden]`, the layer's input RMSNorm weight (scales the inputs the gates see); None = ones.
        target_std: wanted RMS over gate rows of `||W_f[row] * gamma||`, i.e. the std of `f` on unit-variance
            inputs.
        seed: seed of the mixing rows when M > D.

    Example:
        >>> W_f = gate_from_keys(layer.k_proj.weight, num_kv_heads=3, num_slots=64, target_std=0.48)
    """
    HD, hidden = k_weight.shape
    if HD % num_kv_heads:
        raise ValueError(f"k_proj has {HD} rows, not a multiple of num_kv_heads={num_kv_heads}")
    D = HD // num_kv_heads
    k = k_weight.detach().float().view(num_kv_heads, D, hidden)
    P = pooling_matrix(num_slots, D, seed=seed).to(k.device)  # drawn on the CPU: the same rows on every device
    gamma = torch.ones(hidden, device=k.device) if norm_weight is None else norm_weight.detach().float()
    w = torch.einsum("md,hdc->hmc", P, k)  # [H, M, hidden]
    spread = (w * gamma).pow(2).sum(-1).mean(-1).sqrt()  # [H]: RMS of the gate rows' effective norms
    w = w * (target_std / spread.clamp_min(1e-12))[:, None, None]
    return w.reshape(num_kv_heads * num_slots, hidden).to(k_weight.dtype)
