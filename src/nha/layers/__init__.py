"""nn.Modules: the NHA layer, rotary embedding and norms."""
from nha.layers.attention import NativeHybridAttention
from nha.layers.norm import GatedRMSNorm, RMSNorm
from nha.layers.rotary import rotary_embedding

__all__ = ["GatedRMSNorm", "NativeHybridAttention", "RMSNorm", "rotary_embedding"]
