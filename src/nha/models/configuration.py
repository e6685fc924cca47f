"""`NHAConfig`: a transformers config whose per-layer window and slot counts make every layout of the paper.

Every layer is the same `NativeHybridAttention` module; `window_size=None` in a layer makes it full attention
(the paper's inter-layer hybridization), `num_slots=0` sliding-window attention, `window_size=0` GSA.
"""
from __future__ import annotations

from typing import Optional, Union

from transformers import PretrainedConfig
from transformers.activations import ACT2FN

Window = Optional[int]


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


class NHAConfig(PretrainedConfig):
    r"""Configuration of `NHAModel` / `NHAForCausalLM`; field names follow transformers' `LlamaConfig`.

    Besides the Llama fields (`vocab_size`, `hidden_size`, `intermediate_size`, `num_hidden_layers`,
    `num_attention_heads`, `num_key_value_heads`, `head_dim`, `hidden_act`, `max_position_embeddings`,
    `rms_norm_eps`, `rope_parameters` (`rope_theta` / `rope_scaling` accepted as in transformers), `attention_bias`,
    `mlp_bias`, `tie_word_embeddings`, `initializer_range`) it holds:

    Args:
        window_size: `w >= 0` for every layer, or a list with one entry per layer; `None` = full attention.
        num_slots: `M >= 0` slots per key/value head, for every layer or per layer (a full-attention layer with
            slots keeps its gate projection, unused until its window is set).
        gate_normalizer: tau in `g = logsigmoid(W_f x) / tau`.
        qk_norm: per-head RMSNorm on q and k (Qwen3).
        v_silu, slot_feature_map, output_norm: the from-scratch GSA-block options (off for converted models).
        low_memory_backward: NHA layers on the Triton (GPU) path recompute their slot path's intermediates in the
            backward instead of keeping them: the same gradients, a third of the attention's memory kept until the
            backward, a slower backward. A middle ground before gradient checkpointing; no effect on CPU.
        full_attention_every: construction helper: layers `k-1, 2k-1, ...` become full attention (0 slots).
        full_attention_layers: construction helper: these layer indices become full attention (0 slots).
        The two helpers are folded into `window_size` (saved as a per-layer list) and not stored.

    Example:
        >>> cfg = NHAConfig(hidden_size=256, num_hidden_layers=8, num_attention_heads=4, window_size=64,
        ...                 num_slots=64, full_attention_every=4)
        >>> cfg.layer_windows
        [64, 64, 64, None, 64, 64, 64, None]
    """

    model_type = "nha"
    keys_to_ignore_at_inference = ["past_key_values"]
    base_model_pp_plan = {
        "embed_tokens": (["input_ids"], ["inputs_embeds"]),
        "layers": (["hidden_states", "attention_mask"], ["hidden_states"]),
        "norm": (["hidden_states"], ["hidden_states"]),
    }

    vocab_size: int = 32000
    hidden_size: int = 1024
    intermediate_size: int = 2816
    num_hidden_layers: int = 24
    num_attention_heads: int = 4
    num_key_value_heads: Optional[int] = None
    head_dim: Optional[int] = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 8192
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    use_cache: bool = True
    pad_token_id: Optional[int] = None
    bos_token_id: Optional[int] = 1
    eos_token_id: Optional[Union[int, list]] = 2
    tie_word_embeddings: bool = False
    rope_parameters: Optional[dict] = None
    attention_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    window_size: Optional[Union[int, list]] = 32
    num_slots: Union[int, list] = 64
    gate_normalizer: float = 8.0
    v_silu: bool = False
    slot_feature_map: Optional[str] = None
    output_norm: bool = False
    low_memory_backward: bool = False

    def __post_init__(self, **kwargs):
        every = kwargs.pop("full_attention_every", None)
        layers = kwargs.pop("full_attention_layers", None)
        self._validate_shapes()
        windows = self._per_layer("window_size", self.window_size)
        slots = self._per_layer("num_slots", self.num_slots)
        if every is not None:
            if not _is_int(every) or every <= 0:
                raise ValueError(f"full_attention_every must be a positive int, got {every!r}")
            layers = list(layers or []) + [i for i in range(every - 1, self.num_hidden_layers, every)]
        for i in layers or []:
            if not _is_int(i) or not -self.num_hidden_layers <= i < self.num_hidden_layers:
                raise ValueError(
                    f"full_attention_layers holds {i!r}, not a layer index in 0..{self.num_hidden_layers - 1}")
            # a layer made full attention here is a plain attention layer: no slots, so no gate to leave unused
            windows[i], slots[i] = None, 0
        for i, (w, m) in enumerate(zip(windows, slots)):
            if w is not None and (not _is_int(w) or w < 0):
                raise ValueError(f"window_size of layer {i} must be an int >= 0 or None (full attention), got {w!r}")
            if not _is_int(m) or m < 0:
                raise ValueError(f"num_slots of layer {i} must be an int >= 0, got {m!r}")
            if w == 0 and m == 0:
                raise ValueError(f"layer {i} has window_size=0 and num_slots=0: it would attend to nothing")
        # a uniform layout stays a scalar so saved configs read as written
        if layers:
            self.window_size, self.num_slots = windows, slots
        if self.gate_normalizer <= 0:
            raise ValueError(f"gate_normalizer must be > 0, got {self.gate_normalizer}")
        if self.hidden_act not in ACT2FN:
            raise ValueError(
                f"hidden_act must be an activation transformers knows (e.g. 'silu'), got {self.hidden_act!r}")
        if self.slot_feature_map not in (None, "swish"):
            raise ValueError(f"slot_feature_map must be None or 'swish', got {self.slot_feature_map!r}")
        # transformers' own RoPE standardization: accepts rope_theta / rope_scaling and fills rope_parameters
        super().__post_init__(**kwargs)

    def _validate_shapes(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
            value = getattr(self, name)
            if not _is_int(value) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if not _is_int(self.num_key_value_heads) or self.num_key_value_heads <= 0:
            raise ValueError(f"num_key_value_heads must be a positive int, got {self.num_key_value_heads!r}")
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError(f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                             f"num_key_value_heads ({self.num_key_value_heads}) for grouped-query attention")
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads != 0:
                raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                                 f"({self.num_attention_heads}), or give head_dim explicitly")
            self.head_dim = self.hidden_size // self.num_attention_heads
        elif not _is_int(self.head_dim) or self.head_dim <= 0 or self.head_dim % 2:
            raise ValueError(f"head_dim must be a positive even int (RoPE rotates pairs), got {self.head_dim!r}")

    def _per_layer(self, name: str, value) -> list:
        if isinstance(value, (list, tuple)):
            if len(value) != self.num_hidden_layers:
                raise ValueError(f"{name} has {len(value)} entries but num_hidden_layers is {self.num_hidden_layers}: "
                                 "give one entry per layer, or a single value for all")
            return list(value)
        return [value] * self.num_hidden_layers

    @property
    def layer_windows(self) -> list[Window]:
        """The window of each layer (`None` = full attention)."""
        return self._per_layer("window_size", self.window_size)

    @property
    def layer_slots(self) -> list[int]:
        """The slot count of each layer, as configured.

        A full-attention layer with slots keeps its gate projection (unused while its window is None) so that its
        window can be reassigned after training and survive save/load; layers made full by `full_attention_every`
        or `full_attention_layers` get 0 slots.
        """
        return self._per_layer("num_slots", self.num_slots)
