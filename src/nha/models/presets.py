"""Named model presets: the paper's NHA models and its baselines, all the same module with other windows/slots.

| preset | every layer | hybrid (-h): full attention at layers k-1, 2k-1, ... |
| --- | --- | --- |
| `transformer` | `window_size=None` (full attention) | |
| `swa` | `num_slots=0`, window `w` | |
| `gsa` | `window_size=0`, `M` slots | |
| `gsa-h` | as `gsa` | every `k`-th layer full attention |
| `nha` | window `w` and `M` slots | |
| `nha-h` | as `nha` | every `k`-th layer full attention |

Sizes. `340m` and `1.3b` follow the official NHA code's config (github.com/JusenD/NHA, `NHAConfig`: 24 layers,
4 heads, 64 slots, window 32, gate normalizer 8, vocab 32000) with the GSA paper's widths (hidden 1024 for 340M,
2048 for 1.3B) and fla's SwiGLU sizing (`intermediate = 256 * ceil(hidden * 4 * 2/3 / 256)`: 2816 and 5632). The
hybrid period is our choice: 4 of 24 layers full attention (k = 6, layers 5, 11, 17, 23). The from-scratch block
options (v SiLU, swish slot feature map, gated output norm) are off in every preset so that all of them differ
only in windows and slots; pass them as overrides to get the GSA block. `tiny` is for tests (CPU, milliseconds).
"""
from __future__ import annotations

from nha.models.configuration import NHAConfig

SIZES = {
    "tiny": dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, window_size=8, num_slots=8, full_attention_every=2,
                 max_position_embeddings=4096),
    "340m": dict(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=24,
                 num_attention_heads=4, window_size=32, num_slots=64, full_attention_every=6,
                 max_position_embeddings=8192),
    "1.3b": dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=24,
                 num_attention_heads=4, window_size=32, num_slots=64, full_attention_every=6,
                 max_position_embeddings=8192),
}

PRESETS = ("transformer", "swa", "gsa", "gsa-h", "nha", "nha-h")


def preset_config(name: str, size: str = "tiny", **overrides) -> NHAConfig:
    """The `NHAConfig` of a named preset at a named size; `overrides` replace any field (or the helpers
    `full_attention_every` / `full_attention_layers` of the hybrid presets).

    Example:
        >>> cfg = preset_config("nha-h", "340m", window_size=64)
        >>> cfg.layer_windows[:6]
        [64, 64, 64, 64, 64, None]
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}: choose one of {', '.join(SIZES)}")
    fields = dict(SIZES[size])
    every = fields.pop("full_attention_every")
    if name == "transformer":
        fields.update(window_size=None, num_slots=0)
    elif name == "swa":
        fields.update(num_slots=0)
    elif name.startswith("gsa"):
        fields.update(window_size=0)
    if name.endswith("-h"):
        fields["full_attention_every"] = every
    fields.update(overrides)
    return NHAConfig(**fields)
