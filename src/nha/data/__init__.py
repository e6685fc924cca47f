"""Data for training and evaluation: packed text with document boundaries, and synthetic recall tasks."""
from nha.data.sources import TaskSource, TextSource
from nha.data.synthetic import RecallScore, SyntheticBatch, exact_match, haystack, mqar
from nha.data.text import PackedText, Tokenizer, collate_packed, load_documents, pack_documents, shakespeare_files

__all__ = ["PackedText", "RecallScore", "SyntheticBatch", "TaskSource", "TextSource", "Tokenizer", "collate_packed",
           "exact_match", "haystack", "load_documents", "mqar", "pack_documents", "shakespeare_files"]
