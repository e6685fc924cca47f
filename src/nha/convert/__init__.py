"""Pretrained Llama-family transformers models -> NHA hybrids: key map, gate init, conversion, fine-tuning recipe
and before/after evaluation. `nha convert` and `nha finetune` are the command lines."""
from nha.convert.convert import (SUPPORTED, ConversionReport, convert_model, default_full_attention_layers,
                                 nha_config_from_hf, save_model)
from nha.convert.gates import gate_from_keys, pooling_matrix
from nha.convert.keymap import FROM_HF, from_hf, to_hf
from nha.convert.source import load_source, resolve_source, smollm2_folder

__all__ = ["FROM_HF", "SUPPORTED", "ConversionReport", "convert_model", "default_full_attention_layers",
           "from_hf", "gate_from_keys", "load_source", "nha_config_from_hf", "pooling_matrix", "resolve_source",
           "save_model", "smollm2_folder", "to_hf"]
