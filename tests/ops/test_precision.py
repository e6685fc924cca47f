"""The operators keep their own precision under torch.autocast: float32 accumulation, the input dtype out."""
import pytest
import torch

from nha.ops import chunk_nha, naive_recurrent_nha, nha_attention, recurrent_nha_step
from nha.ops.state import NHAState
from nha.ops.testing import make_inputs


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("fn", [chunk_nha, naive_recurrent_nha, nha_attention])
def test_autocast_changes_nothing(fn, dtype):
    # fp16 autocast used to overflow on the -1e30 of a masked logit; bf16 autocast ran the products in bf16
    x = make_inputs(1, 70, 2, 2, 16, 16, 4, seed=0)
    want, _ = fn(x["q"], x["k"], x["v"], x["g"], 8)
    with torch.autocast("cpu", dtype=dtype):
        got, _ = fn(x["q"], x["k"], x["v"], x["g"], 8)
    assert got.dtype == torch.float32
    assert torch.equal(got, want)


def test_decoding_step_under_autocast():
    x = make_inputs(2, 1, 2, 2, 16, 16, 4, seed=1)
    state = NHAState.empty(2, 2, 4, 16, 16, 3)
    want, _ = recurrent_nha_step(x["q"], x["k"], x["v"], x["g"], 3, state)
    with torch.autocast("cpu", dtype=torch.float16):
        got, _ = recurrent_nha_step(x["q"], x["k"], x["v"], x["g"], 3, state)
    assert torch.equal(got, want)
