"""The NHA operator: reference, chunkwise PyTorch path, decoding step and the dispatching entry point."""
from nha.ops.api import nha_attention
from nha.ops.chunk import chunk_nha
from nha.ops.naive import naive_recurrent_nha
from nha.ops.recurrent import recurrent_nha_step
from nha.ops.state import NHAState

__all__ = ["NHAState", "chunk_nha", "naive_recurrent_nha", "nha_attention", "recurrent_nha_step"]
