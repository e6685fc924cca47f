"""Pretrained Llama-family model -> NHA hybrid: a real `NHAForCausalLM` built from an `NHAConfig`, loaded with the
key-mapped source state dict plus gates derived from the key projections (`nha.convert.gates`).

Nothing of the source model is modified; the report lists every source key as mapped or dropped, and every NHA
key that no source weight fills as new.
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch

from nha.convert.gates import gate_from_keys
from nha.convert.keymap import from_hf
from nha.models import NHAConfig, NHAForCausalLM

# model_type -> the transformers class converted; these share the Llama block (pre-norm, SwiGLU, RoPE, GQA)
SUPPORTED = {
    "llama": "LlamaForCausalLM",      # Llama 2 / 3 (rope scaling "llama3"), SmolLM2
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",      # q/k/v bias
    "qwen3": "Qwen3ForCausalLM",      # per-head q/k RMSNorm
}
DEFAULT_WINDOW, DEFAULT_SLOTS, DEFAULT_FULL_EVERY = 64, 64, 8


def _supported_names() -> str:
    return ", ".join(SUPPORTED.values())


def default_full_attention_layers(num_layers: int, every: int = DEFAULT_FULL_EVERY) -> list[int]:
    """One full-attention layer in every `every`: the last layer of each block of `every` layers, the final partial
    block included (30 layers, every 8 -> 7, 15, 23, 29), so the top layer always sees everything."""
    if every <= 0:
        raise ValueError(f"full-attention spacing must be a positive int, got {every}")
    return [min(start + every - 1, num_layers - 1) for start in range(0, num_layers, every)]


def _check_layers(layers: Sequence[int], num_layers: int) -> list[int]:
    out = []
    for i in layers:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < num_layers:
            raise ValueError(f"full-attention layer {i!r} is not a layer index of this model: it has {num_layers} "
                             f"layers, 0..{num_layers - 1}")
        if i in out:
            raise ValueError(f"full-attention layer {i} is listed twice")
        out.append(i)
    return sorted(out)


def nha_config_from_hf(
    hf_config,
    *,
    window_size: Optional[int] = DEFAULT_WINDOW,
    num_slots: int = DEFAULT_SLOTS,
    full_attention_layers: Optional[Sequence[int]] = None,
    gate_normalizer: float = 8.0,
) -> tuple[NHAConfig, list[str]]:
    """The `NHAConfig` of a converted model, and notes on source features that change meaning.

    Args:
        hf_config: the source's transformers config (model_type in `SUPPORTED`).
        window_size: `w` of the NHA layers; None turns every layer into full attention (the source itself).
        num_slots: `M` of the NHA layers.
        full_attention_layers: layer indices kept as full attention; None = one in every 8
            (`default_full_attention_layers`), `[]` = none.
        gate_normalizer: tau of the gates.
    """
    model_type = getattr(hf_config, "model_type", None)
    if model_type not in SUPPORTED:
        raise ValueError(f"cannot convert a {model_type!r} model: supported architectures are {_supported_names()}")
    L = hf_config.num_hidden_layers
    notes = []
    # Llama / Qwen3 put attention_bias on o_proj as well, which NHA layers lack; Qwen2 biases q/k/v only
    attention_bias = True if model_type == "qwen2" else bool(getattr(hf_config, "attention_bias", False))
    if attention_bias and model_type != "qwen2":
        raise ValueError(f"this {SUPPORTED[model_type]} has attention_bias=True, which biases o_proj too; NHA layers "
                         "have no output-projection bias (q/k/v biases as in Qwen2 are supported)")
    if getattr(hf_config, "sliding_window", None) and (model_type == "mistral"
                                                        or getattr(hf_config, "use_sliding_window", False)):
        notes.append(f"the source limits attention to a sliding window of {hf_config.sliding_window}; the NHA "
                     "model's full-attention layers see the whole context")
    if window_size is None:
        windows = [None] * L
    else:
        if isinstance(window_size, bool) or not isinstance(window_size, int) or window_size < 0:
            raise ValueError(f"window_size must be an int >= 0 or None (full attention), got {window_size!r}")
        full = default_full_attention_layers(L) if full_attention_layers is None else \
            _check_layers(full_attention_layers, L)
        windows = [None if i in full else window_size for i in range(L)]
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads
    config = NHAConfig(
        vocab_size=hf_config.vocab_size,
        hidden_size=hf_config.hidden_size,
        intermediate_size=hf_config.intermediate_size,
        num_hidden_layers=L,
        num_attention_heads=hf_config.num_attention_heads,
        num_key_value_heads=getattr(hf_config, "num_key_value_heads", None) or hf_config.num_attention_heads,
        head_dim=head_dim,
        hidden_act=hf_config.hidden_act,
        max_position_embeddings=hf_config.max_position_embeddings,
        initializer_range=getattr(hf_config, "initializer_range", 0.02),
        rms_norm_eps=hf_config.rms_norm_eps,
        rope_parameters=dict(hf_config.rope_parameters),
        attention_bias=attention_bias,
        mlp_bias=bool(getattr(hf_config, "mlp_bias", False)),
        qk_norm=model_type == "qwen3",
        tie_word_embeddings=bool(getattr(hf_config, "tie_word_embeddings", False)),
        bos_token_id=getattr(hf_config, "bos_token_id", None),
        eos_token_id=getattr(hf_config, "eos_token_id", None),
        pad_token_id=getattr(hf_config, "pad_token_id", None),
        window_size=windows,
        # full-attention layers keep slots, hence gates initialised like the others, so that their window can be
        # reassigned later (e.g. by `nha search-windows`) without retraining a gate from scratch
        num_slots=[num_slots] * L,
        gate_normalizer=gate_normalizer,
        # the from-scratch GSA-block options stay off: a converted layer must start as the source's attention
        v_silu=False, slot_feature_map=None, output_norm=False,
    )
    return config, notes


@dataclass
class ConversionReport:
    """What happened to every key: source keys mapped or dropped, NHA keys new (initialised here)."""

    source: str
    mapped: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    full_attention_layers: list[int] = field(default_factory=list)

    def summary(self, verbose: bool = False) -> str:
        lines = [f"converted {self.source}: {len(self.mapped)} keys mapped, {len(self.new)} new, "
                 f"{len(self.dropped)} dropped; full attention in layers {self.full_attention_layers}"]
        for name, keys in (("new", self.new), ("dropped", self.dropped)) + ((("mapped", self.mapped),) if verbose
                                                                               else ()):
            for k in keys:
                lines.append(f"  {name}: {k}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def convert_model(
    source,
    *,
    window_size: Optional[int] = DEFAULT_WINDOW,
    num_slots: int = DEFAULT_SLOTS,
    full_attention_layers: Optional[Sequence[int]] = None,
    gate_normalizer: float = 8.0,
    gate_std: Optional[float] = None,
) -> tuple[NHAForCausalLM, ConversionReport]:
    """Build the NHA hybrid of a transformers Llama-family causal LM.

    Args:
        source: a `LlamaForCausalLM` / `MistralForCausalLM` / `Qwen2ForCausalLM` / `Qwen3ForCausalLM` (not changed).
        window_size, num_slots, full_attention_layers, gate_normalizer: as in `nha_config_from_hf`.
        gate_std: std of the initial gate logits `f` on unit-variance inputs; default the from-scratch init's
            `initializer_range * sqrt(hidden_size)` (see `nha.convert.gates`).

    Returns:
        `(model, report)`: an `NHAForCausalLM` in eval mode, in the source's dtype, and the key report.

    Example:
        >>> nha_model, report = convert_model(llama, window_size=64, num_slots=64, full_attention_layers=[7, 15])
        >>> print(report.summary())
    """
    cls = type(source).__name__
    model_type = getattr(getattr(source, "config", None), "model_type", None)
    if model_type not in SUPPORTED or cls != SUPPORTED[model_type]:
        raise ValueError(f"cannot convert a {cls} (model_type {model_type!r}): supported architectures are "
                         f"{_supported_names()}")
    config, notes = nha_config_from_hf(source.config, window_size=window_size, num_slots=num_slots,
                                       full_attention_layers=full_attention_layers, gate_normalizer=gate_normalizer)
    src_state = source.state_dict()
    dtype = next(iter(src_state.values())).dtype
    state, mapped, dropped = from_hf(src_state)
    model = NHAForCausalLM(config)
    target = model.state_dict()
    if gate_std is None:
        gate_std = config.initializer_range * math.sqrt(config.hidden_size)
    new = []
    for i, layer in enumerate(model.model.layers):
        if layer.self_attn.f_proj is not None:
            key = f"model.layers.{i}.self_attn.f_proj.weight"
            state[key] = gate_from_keys(
                state[f"model.layers.{i}.self_attn.k_proj.weight"], num_kv_heads=config.num_key_value_heads,
                num_slots=layer.self_attn.num_slots, norm_weight=state[f"model.layers.{i}.input_layernorm.weight"],
                target_std=gate_std, seed=i)
            new.append(key)
    if config.tie_word_embeddings and "lm_head.weight" not in state:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    missing = sorted(set(target) - set(state))
    extra = sorted(set(state) - set(target))
    if missing or extra:
        raise ValueError(f"the mapped state dict does not fit the NHA model: missing {missing[:4]}, unexpected "
                         f"{extra[:4]}")
    for key, tensor in state.items():
        if tensor.shape != target[key].shape:
            raise ValueError(f"{key}: source shape {tuple(tensor.shape)} but the NHA model expects "
                             f"{tuple(target[key].shape)}")
    model.load_state_dict(state, strict=True)
    model = model.to(dtype).eval()
    full = [i for i, w in enumerate(config.layer_windows) if w is None]
    name = getattr(source.config, "_name_or_path", "") or cls
    return model, ConversionReport(source=name, mapped=mapped, new=new, dropped=dropped, notes=notes,
                                   full_attention_layers=full)


def save_model(model, tokenizer, out: str | Path, *, overwrite: bool = False, extra_files: dict | None = None) -> Path:
    """Write `model` (and `tokenizer`, if any) as an ordinary transformers folder, atomically: everything goes to a
    temporary sibling folder that is renamed into place only once complete.

    `extra_files`: name -> text, written alongside (e.g. a conversion report).
    """
    out = Path(out)
    if out.exists() and not overwrite:
        if not out.is_dir() or any(out.iterdir()):
            raise ValueError(f"{out} already exists: choose another output folder or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it owner-only; the result is an ordinary shared folder
    old = None
    try:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        if out.exists():
            old = out.with_name(out.name + f".old-{os.getpid()}")
            os.replace(out, old)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and old.exists():
            # the new folder is in place: drop the old one; it is not: put the old one back
            if out.exists():
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(old, out)
    return out
