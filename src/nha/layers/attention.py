"""The NHA layer: projections, gates, RoPE on the window path, the operator, and the output projection.

B batch, T new tokens, S cached + new tokens, HQ query heads, H key/value heads, D head dim, M slots, w window.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from nha.layers.norm import GatedRMSNorm, RMSNorm
from nha.layers.rotary import apply_rotary_pos_emb, rotary_embedding
from nha.ops.api import nha_attention

FEATURE_MAPS = {None: None, "swish": F.silu}


class NativeHybridAttention(nn.Module):
    """Native Hybrid Attention (NHA_SPEC section 4): M gated slots plus a sliding window under one softmax.

    `window_size=None` makes the same module a full-attention layer (a plain KV cache when decoding);
    `num_slots=0` makes it sliding-window attention and `window_size=0` Gated Slot Attention.

    Args:
        hidden_size: model width.
        num_heads: query heads HQ.
        num_kv_heads: key/value heads H (GQA), default HQ.
        head_dim: D, default hidden_size // num_heads.
        num_slots: M slots per key/value head.
        window_size: w >= 0, or None for full attention.
        gate_normalizer: tau in `g = logsigmoid(W_f x) / tau`.
        rope_theta, rope_scaling, max_position_embeddings: rotary embedding of the window path.
        attention_bias: bias on the q/k/v projections (Qwen2); qk_norm: per-head RMSNorm on q and k (Qwen3).
        v_silu, slot_feature_map, output_norm: the from-scratch GSA-block options (off for converted models).
        layer_idx: index into the cache.
        backend: operator backend for `nha_attention` ("auto" picks the fastest correct one).
        low_memory_backward: on the Triton path, recompute the slot path's intermediates in the backward instead of
            keeping them from the forward (`nha_attention(..., save_states=False)`): bit-identical gradients, a third
            of the memory kept until the backward, a slower backward (BENCHMARKS.md, session 11).

    Example:
        >>> layer = NativeHybridAttention(256, 4, num_slots=16, window_size=32)
        >>> y = layer(torch.randn(2, 100, 256))[0]   # [2, 100, 256]
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        *,
        num_kv_heads: Optional[int] = None,
        head_dim: Optional[int] = None,
        num_slots: int = 64,
        window_size: Optional[int] = 64,
        gate_normalizer: float = 8.0,
        rope_theta: float = 10000.0,
        rope_scaling: Optional[dict] = None,
        max_position_embeddings: int = 8192,
        attention_bias: bool = False,
        qk_norm: bool = False,
        rms_norm_eps: float = 1e-6,
        v_silu: bool = False,
        slot_feature_map: Optional[str] = None,
        output_norm: bool = False,
        layer_idx: int = 0,
        backend: str = "auto",
        low_memory_backward: bool = False,
    ):
        super().__init__()
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if num_heads <= 0 or num_kv_heads <= 0 or num_heads % num_kv_heads != 0:
            raise ValueError(f"num_heads ({num_heads}) must be a positive multiple of num_kv_heads ({num_kv_heads})")
        if head_dim is None:
            if hidden_size % num_heads != 0:
                raise ValueError(
                    f"hidden_size ({hidden_size}) must divide by num_heads ({num_heads}), or give head_dim")
            head_dim = hidden_size // num_heads
        if window_size is not None and (isinstance(window_size, bool) or window_size < 0):
            raise ValueError(f"window_size must be an int >= 0 or None (full attention), got {window_size!r}")
        if num_slots < 0 or (num_slots == 0 and window_size == 0):
            raise ValueError(f"need num_slots > 0 or a window: got num_slots={num_slots}, window_size={window_size}")
        if gate_normalizer <= 0:
            raise ValueError(f"gate_normalizer must be > 0, got {gate_normalizer}")
        if slot_feature_map not in FEATURE_MAPS:
            raise ValueError(f"slot_feature_map must be one of {list(FEATURE_MAPS)}, got {slot_feature_map!r}")
        self.hidden_size, self.num_heads = hidden_size, num_heads
        self.num_kv_heads, self.head_dim = num_kv_heads, head_dim
        self.num_slots, self.window_size, self.gate_normalizer = num_slots, window_size, gate_normalizer
        self.layer_idx, self.backend, self.low_memory_backward = layer_idx, backend, low_memory_backward
        self.v_silu, self.slot_feature_map = v_silu, slot_feature_map
        self.scaling = head_dim ** -0.5

        self.q_proj = nn.Linear(hidden_size, num_heads * head_dim, bias=attention_bias)
        self.k_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=attention_bias)
        self.v_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=attention_bias)
        # the only new parameter. A full-attention layer keeps it too (unused while window_size is None), so every
        # layer has the same parameters and windows can be reassigned after training (NHA_SPEC section 4); only a
        # layer without slots (SWA) has none
        self.f_proj = nn.Linear(hidden_size, num_kv_heads * num_slots, bias=False) if num_slots > 0 else None
        self.o_proj = nn.Linear(num_heads * head_dim, hidden_size, bias=False)
        self.q_norm = RMSNorm(head_dim, eps=rms_norm_eps) if qk_norm else None
        self.k_norm = RMSNorm(head_dim, eps=rms_norm_eps) if qk_norm else None
        if output_norm:
            self.g_proj = nn.Linear(hidden_size, num_heads * head_dim, bias=False)
            self.o_norm = GatedRMSNorm(head_dim, eps=rms_norm_eps)
        else:
            self.g_proj = self.o_norm = None
        self.rotary = rotary_embedding(head_dim, rope_theta, rope_scaling, max_position_embeddings)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        position_embeddings: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
        past_key_values=None,
        cu_seqlens: Optional[torch.Tensor] = None,
        **kwargs,
    ) -> tuple[torch.Tensor, None]:
        """
        Args:
            hidden_states: `[B, T, hidden]`.
            attention_mask: `[B, S]` with 1 for real tokens and 0 for padding, over cached + new positions (as
                transformers passes it); padded positions are identity steps and their outputs are zero.
            position_ids: `[B, T]` absolute positions (default: cached tokens + index, skipping padding).
            position_embeddings: `(cos, sin)` `[B, T, D]` computed once per model (default: this layer's rotary).
            past_key_values: an `NHACache`, updated in place (prefill and decoding).
            cu_seqlens: `[N + 1]` packed documents in a `B == 1` batch (training; not with a cache).

        Returns:
            `(output [B, T, hidden], None)`.
        """
        B, T, _ = hidden_states.shape
        HQ, H, D, M = self.num_heads, self.num_kv_heads, self.head_dim, self.num_slots
        if cu_seqlens is not None and (past_key_values is not None or attention_mask is not None):
            raise ValueError("cu_seqlens describes a packed batch: pass it without attention_mask or past_key_values")
        q = self.q_proj(hidden_states).view(B, T, HQ, D)
        k = self.k_proj(hidden_states).view(B, T, H, D)
        v = self.v_proj(hidden_states).view(B, T, H, D)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.v_silu:
            v = F.silu(v)
        if position_embeddings is None:
            if position_ids is None:
                position_ids = self.default_positions(B, T, attention_mask, past_key_values, hidden_states.device)
            position_embeddings = self.rotary(hidden_states, position_ids)
        cos, sin = position_embeddings
        q_win, k_win = apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=2)
        # under autocast the projections are half precision but cos/sin float32: keep one dtype for the operator
        q_win, k_win = q_win.to(q.dtype), k_win.to(k.dtype)

        new_mask = None if attention_mask is None else attention_mask[:, -T:].bool()
        if self.window_size is None:
            o = self._full_attention(q_win, k_win, v, attention_mask, past_key_values, cu_seqlens)
        else:
            feature_map = FEATURE_MAPS[self.slot_feature_map]
            if feature_map is not None:
                q, k = feature_map(q), feature_map(k)
            if self.f_proj is None:
                g = q.new_zeros(B, T, H, 0)
            else:
                g = F.logsigmoid(self.f_proj(hidden_states).float()) / self.gate_normalizer
                g = g.to(q.dtype).view(B, T, H, M)
            o = self._nha(q, k, v, g, q_win, k_win, new_mask, past_key_values, cu_seqlens)
        if new_mask is not None:
            o = o * new_mask[:, :, None, None].to(o.dtype)
        if self.o_norm is not None:
            o = self.o_norm(o, self.g_proj(hidden_states).view(B, T, HQ, D))
        return self.o_proj(o.reshape(B, T, HQ * D)), None

    def default_positions(self, B, T, attention_mask, cache, device) -> torch.Tensor:
        """Positions inside each sequence: padding takes none, and a cache hand-off continues the count."""
        if attention_mask is not None:
            pos = attention_mask.long().cumsum(-1) - 1
            return pos[:, -T:].clamp(min=0)
        past = cache.get_seq_length(self.layer_idx) if cache is not None else 0
        return (past + torch.arange(T, device=device))[None].expand(B, T)

    def _nha(self, q, k, v, g, q_win, k_win, new_mask, cache, cu_seqlens) -> torch.Tensor:
        B, T = q.shape[:2]
        layer = cache.nha_layer(self.layer_idx) if cache is not None else None
        state = None if layer is None else layer.state
        # logsigmoid(f) / tau <= 0 by construction: on a GPU, skip the gate check's host sync
        run = lambda *xs, cu=cu_seqlens: nha_attention(  # noqa: E731
            *xs[:4], self.window_size, q_win=xs[4], k_win=xs[5], scale=self.scaling, initial_state=state,
            output_final_state=layer is not None, cu_seqlens=cu, backend=self.backend,
            check_gates=not q.is_cuda, save_states=not self.low_memory_backward)
        if new_mask is None or bool(new_mask.all()):
            o, new_state = run(q, k, v, g, q_win, k_win)
        else:
            # padding is an identity step: drop padded positions, run the rows as a packed batch, scatter back
            keep = new_mask.reshape(-1).nonzero().squeeze(-1)
            cu = F.pad(new_mask.sum(-1).cumsum(0), (1, 0)).to(torch.int32)
            packed = [x.flatten(0, 1).index_select(0, keep)[None] for x in (q, k, v, g, q_win, k_win)]
            o_packed, new_state = run(*packed, cu=cu)
            o = o_packed.new_zeros(B * T, *o_packed.shape[2:]).index_copy(0, keep, o_packed[0])
            o = o.view(B, T, -1, o_packed.shape[-1])
        if layer is not None:
            layer.update_state(new_state, T)
        return o

    def _full_attention(self, q_win, k_win, v, attention_mask, cache, cu_seqlens=None) -> torch.Tensor:
        """Causal softmax attention over the cached and new keys (a `window_size=None` layer)."""
        B, T = q_win.shape[:2]
        if cu_seqlens is not None:
            # packed documents never see each other: the operator's varlen path with no slots and an unbounded
            # window is causal attention per document, in memory linear in the packed length (no T x T mask)
            no_gates = q_win.new_zeros(B, T, k_win.shape[2], 0)
            o, _ = nha_attention(q_win, k_win, v, no_gates, None, scale=self.scaling,
                                 cu_seqlens=cu_seqlens, backend=self.backend)
            return o
        q, k, v = q_win.transpose(1, 2), k_win.transpose(1, 2), v.transpose(1, 2)  # [B, heads, T, D]
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        S = k.shape[2]
        if attention_mask is None and S == T:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scaling, enable_gqa=True)
            return o.transpose(1, 2)
        rows = torch.arange(T, device=q.device)[:, None] + (S - T)
        allowed = torch.arange(S, device=q.device)[None, :] <= rows  # [T, S] causal
        if attention_mask is not None:
            if attention_mask.shape[-1] != S:
                raise ValueError(f"attention_mask covers {attention_mask.shape[-1]} positions, the cache holds {S}")
            allowed = allowed & attention_mask.bool()[:, None, :]
            # a padded query keeps its own key so no row is empty (its output is zeroed afterwards)
            allowed = allowed | (torch.arange(S, device=q.device)[None, :] == rows)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed.view(-1, 1, T, S), scale=self.scaling,
                                           enable_gqa=True)
        return o.transpose(1, 2)
