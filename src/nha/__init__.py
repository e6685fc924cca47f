"""nha: Native Hybrid Attention (arXiv 2510.07019) for PyTorch and Hugging Face transformers.

Importing `nha` registers `NHAConfig` / `NHAModel` / `NHAForCausalLM` with transformers' Auto classes.
"""
from nha.layers import NativeHybridAttention
from nha.models import NHACache, NHAConfig, NHAForCausalLM, NHAModel, preset_config
from nha.ops import NHAState, chunk_nha, naive_recurrent_nha, nha_attention, recurrent_nha_step

__version__ = "0.1.0"
__all__ = [
    "NHACache", "NHAConfig", "NHAForCausalLM", "NHAModel", "NHAState", "NativeHybridAttention", "chunk_nha",
    "naive_recurrent_nha", "nha_attention", "preset_config", "recurrent_nha_step",
]
