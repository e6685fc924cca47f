"""Hugging Face transformers models built from NHA layers, and their generation cache.

Importing this package registers `NHAConfig` / `NHAModel` / `NHAForCausalLM` with `AutoConfig`, `AutoModel` and
`AutoModelForCausalLM` (model_type "nha"), so saved NHA folders load through the Auto classes.
"""
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from nha.models.cache import NHACache, NHAStateLayer
from nha.models.configuration import NHAConfig
from nha.models.modeling import NHAForCausalLM, NHAModel, NHAPreTrainedModel
from nha.models.presets import PRESETS, SIZES, preset_config

AutoConfig.register(NHAConfig.model_type, NHAConfig, exist_ok=True)
AutoModel.register(NHAConfig, NHAModel, exist_ok=True)
AutoModelForCausalLM.register(NHAConfig, NHAForCausalLM, exist_ok=True)

__all__ = ["NHACache", "NHAConfig", "NHAForCausalLM", "NHAModel", "NHAPreTrainedModel", "NHAStateLayer", "PRESETS",
           "SIZES", "preset_config"]
