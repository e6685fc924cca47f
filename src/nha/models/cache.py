"""The generation cache of NHA models: a `transformers.Cache` whose NHA layers hold constant-size state.

Per NHA layer (finite window) an `NHAStateLayer` keeps the slots and the window ring buffer (`NHAState`); per
full-attention layer (`window_size=None`) transformers' own `DynamicLayer` keeps an ordinary KV cache.
B batch, H key/value heads, M slots, K/V head dims, w window.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicLayer

from nha.ops.state import NHAState


class NHAStateLayer(CacheLayerMixin):
    """One NHA layer's cache: an `NHAState` (slots + window), the same size whatever the context length."""

    is_sliding = True
    is_croppable = False

    def __init__(self, **kwargs):
        super().__init__()
        self.state: Optional[NHAState] = None
        self.tokens = 0  # positions consumed, padding included (what `generate` counts)

    def lazy_initialization(self, key_states=None, value_states=None) -> None:
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        raise NotImplementedError("NHA layers keep an NHAState: use `update_state`, not key/value updates")

    def update_state(self, state: NHAState, new_tokens: int) -> None:
        self.state = state
        self.tokens += new_tokens
        self.is_initialized = True

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.tokens + query_length, 0

    def get_seq_length(self) -> int:
        return self.tokens

    def get_max_length(self) -> int:
        return -1

    def state_bytes(self) -> int:
        return 0 if self.state is None else sum(t.numel() * t.element_size() for t in self.state.tensors())

    def _map(self, fn) -> None:
        if self.state is not None:
            self.state = self.state.map(fn)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._map(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._map(lambda t: t[indices])

    def reset(self) -> None:
        self.state, self.tokens = None, 0

    def offload(self):
        self._map(lambda t: t.to("cpu", non_blocking=True))

    def prefetch(self):
        pass

    def crop(self, tokens_to_remove: int) -> None:
        raise ValueError("an NHA layer's state cannot be cropped: the slots have already absorbed those tokens")


class NHACache(Cache):
    """Cache for a stack of NHA layers, given each layer's window (None = full attention = a KV cache).

    Example:
        >>> cache = NHACache(window_sizes=[64, 64, None])
        >>> out = model(input_ids, past_key_values=cache, use_cache=True)
    """

    def __init__(self, window_sizes: Sequence[Optional[int]]):
        super().__init__(layers=[DynamicLayer() if w is None else NHAStateLayer() for w in window_sizes])
        self.window_sizes = list(window_sizes)

    def nha_layer(self, layer_idx: int) -> NHAStateLayer:
        layer = self.layers[layer_idx]
        if not isinstance(layer, NHAStateLayer):
            raise ValueError(f"layer {layer_idx} has window_size=None: it keeps a key/value cache, not an NHA state")
        return layer

    def memory_bytes(self) -> int:
        """Bytes held by the cache now: NHA states plus key/value tensors of full-attention layers."""
        total = 0
        for layer in self.layers:
            if isinstance(layer, NHAStateLayer):
                total += layer.state_bytes()
            elif layer.is_initialized:
                total += sum(t.numel() * t.element_size() for t in (layer.keys, layer.values))
        return total
