"""nha: Native Hybrid Attention (arXiv 2510.07019) for PyTorch and Hugging Face transformers."""
from nha.ops import NHAState, chunk_nha, naive_recurrent_nha, nha_attention, recurrent_nha_step

__version__ = "0.1.0"
__all__ = ["NHAState", "chunk_nha", "naive_recurrent_nha", "nha_attention", "recurrent_nha_step"]
