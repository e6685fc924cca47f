"""Rotary position embedding for the window path, built on transformers' RoPE utilities (all rope types)."""
from __future__ import annotations

from typing import Optional

from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

__all__ = ["apply_rotary_pos_emb", "rotary_embedding"]


def rotary_embedding(
    head_dim: int,
    rope_theta: float = 10000.0,
    rope_scaling: Optional[dict] = None,
    max_position_embeddings: int = 8192,
) -> LlamaRotaryEmbedding:
    """A module mapping `(x, position_ids [B, T])` to `(cos, sin)` `[B, T, head_dim]`.

    `rope_scaling` takes transformers' rope parameters (e.g. `{"rope_type": "llama3", "factor": 8.0, ...}`).
    """
    params = {"rope_type": "default", "rope_theta": rope_theta}
    if rope_scaling:
        params.update(rope_scaling)
        params["rope_type"] = rope_scaling.get("rope_type", rope_scaling.get("type", "default"))
        params.pop("type", None)
    config = LlamaConfig(
        hidden_size=head_dim,
        num_attention_heads=1,
        head_dim=head_dim,
        rope_parameters=params,
        max_position_embeddings=max_position_embeddings,
    )
    return LlamaRotaryEmbedding(config)
