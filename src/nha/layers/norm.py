"""Norms of the NHA block: RMSNorm (transformers' Llama/Qwen3 one) and the GSA-style gated output norm."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.llama.modeling_llama import LlamaRMSNorm as RMSNorm

__all__ = ["GatedRMSNorm", "RMSNorm"]


class GatedRMSNorm(nn.Module):
    """`RMSNorm(o) * silu(gate)` over the last dim (the output norm of the GSA block). o, gate: `[..., D]`."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.norm = RMSNorm(dim, eps=eps)

    def forward(self, o: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        return self.norm(o) * F.silu(gate)
