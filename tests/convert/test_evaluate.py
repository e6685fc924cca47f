"""The speed probe of a conversion report: chunked prefill through the cache, decoding, and cache sizes, for a source
model and its hybrid alike, on CPU and (when there is one) on a GPU."""
import pytest
import torch

from nha.convert import convert_model
from nha.convert.evaluate import decode_speed

from convert_sources import tiny_source


def _pair(device):
    source = tiny_source("llama").to(device)
    hybrid, _ = convert_model(source, window_size=4, num_slots=8, full_attention_layers=[1])
    return source, hybrid.to(device)


def _check(device):
    source, hybrid = _pair(device)
    rows = {}
    for name, model in (("source", source), ("hybrid", hybrid)):
        for context in (40, 100):
            # prefill in chunks shorter than the context: later chunks continue from the cache
            rows[name, context] = decode_speed(model, context=context, new_tokens=3, prefill_chunk=32)
    for row in rows.values():
        assert row["prefill_s"] > 0 and row["decode_tok_s"] > 0 and row["cache_mib"] > 0
    # the source's key/value cache grows with the context; the hybrid's grows only in its one full-attention layer
    src_growth = rows["source", 100]["cache_mib"] - rows["source", 40]["cache_mib"]
    hyb_growth = rows["hybrid", 100]["cache_mib"] - rows["hybrid", 40]["cache_mib"]
    assert src_growth > 0 and 0 < hyb_growth < src_growth / 2


def test_decode_speed_on_cpu():
    _check(torch.device("cpu"))


@pytest.mark.gpu
def test_decode_speed_on_gpu():
    _check(torch.device("cuda"))
