"""NHA language models with transformers' `modeling_llama` contract: `NHAModel`, `NHAForCausalLM`.

Block: RMSNorm -> NativeHybridAttention -> residual -> RMSNorm -> SwiGLU MLP -> residual. Parameter names match
Llama's (`model.layers.i.self_attn.q_proj`, `...mlp.gate_proj`, ...), plus `self_attn.f_proj` (the slot gates) in
NHA layers, so Llama-family checkpoints map onto these models by name.
B batch, T new tokens, S cached + new tokens.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from nha.layers.attention import NativeHybridAttention
from nha.layers.norm import RMSNorm
from nha.layers.rotary import rotary_embedding
from nha.models.cache import NHACache
from nha.models.configuration import NHAConfig


class NHAMLP(nn.Module):
    """SwiGLU feed-forward: `down(act(gate(x)) * up(x))` (Llama, Mistral, Qwen)."""

    def __init__(self, config: NHAConfig):
        super().__init__()
        h, i, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_proj = nn.Linear(h, i, bias=bias)
        self.up_proj = nn.Linear(h, i, bias=bias)
        self.down_proj = nn.Linear(i, h, bias=bias)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class NHADecoderLayer(GradientCheckpointingLayer):
    """One pre-norm block; its attention is NHA with this layer's window (None = full attention)."""

    def __init__(self, config: NHAConfig, layer_idx: int):
        super().__init__()
        self.self_attn = NativeHybridAttention(
            config.hidden_size,
            config.num_attention_heads,
            num_kv_heads=config.num_key_value_heads,
            head_dim=config.head_dim,
            num_slots=config.layer_slots[layer_idx],
            window_size=config.layer_windows[layer_idx],
            gate_normalizer=config.gate_normalizer,
            rope_theta=config.rope_parameters["rope_theta"],
            rope_scaling=config.rope_parameters,
            max_position_embeddings=config.max_position_embeddings,
            attention_bias=config.attention_bias,
            qk_norm=config.qk_norm,
            rms_norm_eps=config.rms_norm_eps,
            v_silu=config.v_silu,
            slot_feature_map=config.slot_feature_map,
            output_norm=config.output_norm,
            layer_idx=layer_idx,
            low_memory_backward=config.low_memory_backward,
        )
        self.mlp = NHAMLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        position_embeddings: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
        past_key_values: Optional[NHACache] = None,
        cu_seqlens: Optional[torch.Tensor] = None,
        **kwargs,
    ) -> torch.Tensor:
        """hidden_states `[B, T, hidden]` -> `[B, T, hidden]`; the other arguments as in `NativeHybridAttention`."""
        residual = hidden_states
        hidden_states, _ = self.self_attn(
            self.input_layernorm(hidden_states),
            attention_mask=attention_mask,
            position_ids=position_ids,
            position_embeddings=position_embeddings,
            past_key_values=past_key_values,
            cu_seqlens=cu_seqlens,
        )
        hidden_states = residual + hidden_states
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class NHAPreTrainedModel(PreTrainedModel):
    config_class = NHAConfig
    config: NHAConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["NHADecoderLayer"]
    _skip_keys_device_placement = ["past_key_values"]
    # full-attention layers run on torch SDPA; NHA layers on the project's own operator whatever the setting
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False
    # data-dependent branches (padding, cache state) break full-graph capture; regional compile works
    _can_compile_fullgraph = False
    _supports_attention_backend = False


def packed_boundaries(position_ids: torch.Tensor) -> Optional[torch.Tensor]:
    """`cu_seqlens` `[N + 1]` from `position_ids` `[1, T]` that restart at 0 for each packed document, else None."""
    starts = (position_ids[0] == 0).nonzero().squeeze(-1)
    if starts.numel() <= 1:
        return None
    T = position_ids.shape[1]
    if int(starts[0]) != 0:
        raise ValueError("packed position_ids must start with 0 (each document counts from 0)")
    return F.pad(starts, (0, 1), value=T).to(torch.int32)


class NHAModel(NHAPreTrainedModel):
    """The NHA decoder stack (embeddings, blocks, final norm), returning hidden states and the cache."""

    def __init__(self, config: NHAConfig):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList([NHADecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        # RoPE once per forward, handed to every layer as position_embeddings
        self.rotary_emb = rotary_embedding(config.head_dim, config.rope_parameters["rope_theta"],
                                           config.rope_parameters, config.max_position_embeddings)
        self.gradient_checkpointing = False
        self.post_init()

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        past_key_values: Optional[NHACache] = None,
        inputs_embeds: Optional[torch.FloatTensor] = None,
        use_cache: Optional[bool] = None,
        cu_seqlens: Optional[torch.Tensor] = None,
        output_hidden_states: Optional[bool] = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """
        Args:
            input_ids: `[B, T]` token ids (or `inputs_embeds` `[B, T, hidden]`).
            attention_mask: `[B, S]` 1 for tokens, 0 for padding, over cached + new positions (left padding for
                batched generation); padded positions change no state and their outputs are zero.
            position_ids: `[B, T]`; default: count of real tokens before each position (padding takes none).
                With `B == 1`, positions that restart at 0 mark packed documents (like `cu_seqlens`).
            past_key_values: an `NHACache` (made here when `use_cache` and none is given).
            cu_seqlens: `[N + 1]` int boundaries of packed documents in a `B == 1` batch (training, no cache).

        Returns:
            `BaseModelOutputWithPast` with `last_hidden_state` `[B, T, hidden]` and `past_key_values`.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        B, T = inputs_embeds.shape[:2]
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if self.gradient_checkpointing and self.training:
            use_cache = False
        output_hidden_states = bool(output_hidden_states if output_hidden_states is not None
                                    else self.config.output_hidden_states)
        if attention_mask is not None and attention_mask.dim() != 2:
            raise ValueError(f"attention_mask must be 2-D [batch, past + new tokens] of 0/1, got shape "
                             f"{tuple(attention_mask.shape)}")
        if past_key_values is not None and not isinstance(past_key_values, NHACache):
            raise ValueError(f"past_key_values must be an NHACache (NHA layers keep slot state), got "
                             f"{type(past_key_values).__name__}")
        if cu_seqlens is None and position_ids is not None and B == 1 and attention_mask is None \
                and past_key_values is None:
            cu_seqlens = packed_boundaries(position_ids)
        if cu_seqlens is not None:
            if B != 1:
                raise ValueError(f"cu_seqlens describes documents packed into one row: batch size must be 1, got {B}")
            if past_key_values is not None or attention_mask is not None:
                raise ValueError("cu_seqlens (packed documents) is for training: pass it without attention_mask "
                                 "or past_key_values")
            use_cache = False
            # the operator reads the offsets on the host (the layout's length, their checks): a GPU copy would cost
            # each layer host syncs, so it moves to the CPU once here (free when it already is there)
            cu_seqlens = cu_seqlens.cpu()
        if use_cache and past_key_values is None:
            past_key_values = NHACache(self.config.layer_windows)
        if (attention_mask is not None and attention_mask.shape[-1] == T and bool(attention_mask.all())
                and (past_key_values is None or past_key_values.get_seq_length() == 0)):
            # no padding and nothing cached (a training batch, a first prefill): the same as no mask, with one host
            # sync here instead of one per NHA layer, and full-attention layers keep SDPA's causal (flash) path
            attention_mask = None
        if position_ids is None:
            position_ids = self._default_positions(B, T, attention_mask, past_key_values, cu_seqlens,
                                                   inputs_embeds.device)
        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids)
        all_hidden = [] if output_hidden_states else None
        for layer in self.layers:
            if all_hidden is not None:
                all_hidden.append(hidden_states)
            hidden_states = layer(
                hidden_states,
                attention_mask=attention_mask,
                position_ids=position_ids,
                position_embeddings=position_embeddings,
                past_key_values=past_key_values if use_cache else None,
                cu_seqlens=cu_seqlens,
            )
        hidden_states = self.norm(hidden_states)
        if all_hidden is not None:
            all_hidden.append(hidden_states)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            past_key_values=past_key_values if use_cache else None,
            hidden_states=tuple(all_hidden) if all_hidden is not None else None,
        )

    @staticmethod
    def _default_positions(B, T, attention_mask, cache, cu_seqlens, device) -> torch.LongTensor:
        """Absolute positions inside each sequence, as `NativeHybridAttention.default_positions` counts them."""
        if cu_seqlens is not None:
            t = torch.arange(T, device=device)
            cu = cu_seqlens.to(device, torch.long, non_blocking=True)
            return (t - cu[torch.searchsorted(cu[1:], t, right=True)])[None]
        if attention_mask is not None:
            return (attention_mask.long().cumsum(-1) - 1)[:, -T:].clamp(min=0)
        past = cache.get_seq_length() if cache is not None else 0
        return (past + torch.arange(T, device=device))[None].expand(B, T)


class NHAForCausalLM(NHAPreTrainedModel, GenerationMixin):
    """`NHAModel` plus the LM head; `generate` works with greedy, sampling and beam search over an `NHACache`.

    Example:
        >>> import nha
        >>> model = NHAForCausalLM(nha.models.preset_config("nha-h", "tiny"))
        >>> out = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=8, do_sample=False)
    """

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: NHAConfig):
        super().__init__(config)
        self.model = NHAModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        past_key_values: Optional[NHACache] = None,
        inputs_embeds: Optional[torch.FloatTensor] = None,
        labels: Optional[torch.LongTensor] = None,
        use_cache: Optional[bool] = None,
        logits_to_keep: Union[int, torch.Tensor] = 0,
        cu_seqlens: Optional[torch.Tensor] = None,
        output_hidden_states: Optional[bool] = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """As `NHAModel.forward`, plus `labels` `[B, T]` (-100 = ignored; shifted inside, as transformers does)
        and `logits_to_keep` (keep the last n positions' logits). Returns logits `[B, T', vocab]` and the loss."""
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            cu_seqlens=cu_seqlens,
            output_hidden_states=output_hidden_states,
        )
        hidden_states = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, keep, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
        )

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
        # generate would make a DynamicCache; NHA layers need their slot state, so hand it an NHACache instead
        if model_kwargs.get("past_key_values") is None and generation_config.use_cache is not False:
            if generation_config.cache_implementation not in (None, "dynamic"):
                raise ValueError(f"NHA models generate with their own NHACache; cache_implementation="
                                 f"{generation_config.cache_implementation!r} is not supported")
            model_kwargs["past_key_values"] = NHACache(self.config.layer_windows)
            return
        return super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)
