"""The declarative key map between transformers' Llama-family checkpoints and NHA models (torchtitan's from_hf /
to_hf idea): one table of names, read in both directions, plus the source keys NHA recomputes instead of loading.

NHA models use Llama's parameter names on purpose, so the map is the identity on names; it is still written out
so that every source weight is accounted for: a key the table does not know is an error, never silently lost.
"{}" in a template stands for the layer index.
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Iterable

import torch

# NHA parameter name -> transformers parameter name. Entries that a given architecture lacks (biases: Qwen2 /
# Llama with mlp_bias; q/k norms: Qwen3) simply do not occur in its state dict.
FROM_HF: dict[str, str] = {
    "model.embed_tokens.weight": "model.embed_tokens.weight",
    "model.norm.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
    "model.layers.{}.input_layernorm.weight": "model.layers.{}.input_layernorm.weight",
    "model.layers.{}.post_attention_layernorm.weight": "model.layers.{}.post_attention_layernorm.weight",
    "model.layers.{}.self_attn.q_proj.weight": "model.layers.{}.self_attn.q_proj.weight",
    "model.layers.{}.self_attn.k_proj.weight": "model.layers.{}.self_attn.k_proj.weight",
    "model.layers.{}.self_attn.v_proj.weight": "model.layers.{}.self_attn.v_proj.weight",
    "model.layers.{}.self_attn.q_proj.bias": "model.layers.{}.self_attn.q_proj.bias",
    "model.layers.{}.self_attn.k_proj.bias": "model.layers.{}.self_attn.k_proj.bias",
    "model.layers.{}.self_attn.v_proj.bias": "model.layers.{}.self_attn.v_proj.bias",
    "model.layers.{}.self_attn.o_proj.weight": "model.layers.{}.self_attn.o_proj.weight",
    "model.layers.{}.self_attn.q_norm.weight": "model.layers.{}.self_attn.q_norm.weight",
    "model.layers.{}.self_attn.k_norm.weight": "model.layers.{}.self_attn.k_norm.weight",
    "model.layers.{}.mlp.gate_proj.weight": "model.layers.{}.mlp.gate_proj.weight",
    "model.layers.{}.mlp.up_proj.weight": "model.layers.{}.mlp.up_proj.weight",
    "model.layers.{}.mlp.down_proj.weight": "model.layers.{}.mlp.down_proj.weight",
    "model.layers.{}.mlp.gate_proj.bias": "model.layers.{}.mlp.gate_proj.bias",
    "model.layers.{}.mlp.up_proj.bias": "model.layers.{}.mlp.up_proj.bias",
    "model.layers.{}.mlp.down_proj.bias": "model.layers.{}.mlp.down_proj.bias",
}
TO_HF: dict[str, str] = {nha: hf for nha, hf in FROM_HF.items()}

# Source keys that hold no weight: RoPE frequency tables older checkpoints saved; NHA recomputes them from the
# config (rope_parameters), so they are dropped, and reported as dropped.
DROPPED_HF: tuple[str, ...] = (
    "model.rotary_emb.inv_freq",
    "model.layers.{}.self_attn.rotary_emb.inv_freq",
)

# NHA parameters no source has: made by `nha.convert.gates` (the slot gates).
NEW_NHA: tuple[str, ...] = ("model.layers.{}.self_attn.f_proj.weight",)


@lru_cache(maxsize=None)
def _pattern(template: str) -> re.Pattern:
    return re.compile("^" + re.escape(template).replace(r"\{\}", r"(\d+)") + "$")


def _lookup(key: str, table: dict[str, str] | Iterable[str]):
    """The template matching `key` and its layer index (or None), or (None, None)."""
    for template in table:
        m = _pattern(template).match(key)
        if m:
            return template, (int(m.group(1)) if m.groups() else None)
    return None, None


def _fill(template: str, layer) -> str:
    return template.replace("{}", str(layer)) if layer is not None else template


def from_hf(hf_state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """Rename a transformers state dict to NHA names.

    Returns:
        `(nha_state, mapped, dropped)`: the renamed tensors (shared, not copied), the source keys mapped, and the
        source keys dropped on purpose (`DROPPED_HF`).

    Raises:
        ValueError: a source key neither mapped nor known to be droppable (a weight NHA has no place for).
    """
    reverse = {hf: nha for nha, hf in FROM_HF.items()}
    out, mapped, dropped, unknown = {}, [], [], []
    for key, tensor in hf_state.items():
        template, layer = _lookup(key, reverse)
        if template is not None:
            out[_fill(reverse[template], layer)] = tensor
            mapped.append(key)
        elif _lookup(key, DROPPED_HF)[0] is not None:
            dropped.append(key)
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"{len(unknown)} source weight(s) have no place in an NHA model, e.g. {unknown[:3]}: the "
                         "source uses a feature NHA layers lack (such as an output-projection bias)")
    return out, mapped, dropped


def to_hf(nha_state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename an NHA state dict back to transformers names (the inverse of `from_hf` on mapped keys).

    Returns:
        `(hf_state, nha_only)`: the renamed tensors, and the NHA keys with no source counterpart (the gates).
    """
    out, nha_only = {}, []
    for key, tensor in nha_state.items():
        template, layer = _lookup(key, TO_HF)
        if template is None:
            nha_only.append(key)
        else:
            out[_fill(TO_HF[template], layer)] = tensor
    return out, nha_only
