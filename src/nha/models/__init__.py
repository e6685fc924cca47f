"""Hugging Face transformers models built from NHA layers, and their generation cache."""
from nha.models.cache import NHACache, NHAStateLayer

__all__ = ["NHACache", "NHAStateLayer"]
