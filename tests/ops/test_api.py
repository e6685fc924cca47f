"""Dispatch of nha_attention, and bad input: each mistake raises ValueError with a sentence naming it."""
import warnings

import pytest
import torch

from nha.ops import NHAState, chunk_nha, naive_recurrent_nha, nha_attention, recurrent_nha_step
from nha.ops.api import pick_backend
from nha.ops.testing import make_inputs, max_abs

ALL = [naive_recurrent_nha, chunk_nha, nha_attention]


def base(**over):
    x = make_inputs(2, 5, 4, 2, 8, 8, 3)
    x.update(over)
    return x


def call(fn, x, w=2, **kw):
    return fn(x["q"], x["k"], x["v"], x["g"], w, **kw)


def test_auto_picks_recurrent_for_one_token_over_a_state_and_chunk_otherwise():
    x = make_inputs(2, 1, 4, 2, 8, 8, 3)
    state = NHAState.empty(2, 2, 3, 8, 8, 4)
    assert pick_backend(x["q"], state, None) == "recurrent"
    assert pick_backend(x["q"], None, None) == "chunk"
    o_auto, _ = nha_attention(x["q"], x["k"], x["v"], x["g"], 4, initial_state=state)
    o_naive, _ = naive_recurrent_nha(x["q"], x["k"], x["v"], x["g"], 4, initial_state=state)
    assert max_abs(o_auto, o_naive) < 1e-6


@pytest.mark.parametrize("backend", ["naive", "chunk", "recurrent"])
def test_forced_backends_agree(backend):
    x = make_inputs(2, 1, 4, 2, 8, 8, 3)
    o, _ = nha_attention(x["q"], x["k"], x["v"], x["g"], 3, backend=backend)
    o_ref, _ = naive_recurrent_nha(x["q"], x["k"], x["v"], x["g"], 3)
    assert max_abs(o, o_ref) < 1e-6


BAD = [
    ("k has another time", lambda: dict(k=torch.randn(2, 6, 2, 8)), r"`k` must have shape"),
    ("v has another batch", lambda: dict(v=torch.randn(3, 5, 2, 8)), r"`v` must have shape"),
    ("g has other heads", lambda: dict(g=torch.zeros(2, 5, 3, 3) - 1), r"`g` must have shape"),
    ("3-D q", lambda: dict(q=torch.randn(2, 5, 32)), r"`q` must be 4-D"),
    ("HQ not a multiple of H", lambda: dict(q=torch.randn(2, 5, 3, 8), q_win=torch.randn(2, 5, 3, 8)),
     r"multiple of the key/value heads"),
    ("positive gate", lambda: dict(g=torch.full((2, 5, 2, 3), 0.5)), r"must be <= 0"),
    ("NaN gate", lambda: dict(g=torch.full((2, 5, 2, 3), float("nan"))), r"contains NaN"),
    ("one NaN gate among valid ones", lambda: dict(g=torch.full((2, 5, 2, 3), -1.0).index_put_(
        (torch.tensor([1]), torch.tensor([3]), torch.tensor([0]), torch.tensor([2])), torch.tensor(float("nan")))),
     r"contains NaN"),
    ("mixed dtypes", lambda: dict(v=torch.randn(2, 5, 2, 8, dtype=torch.float64)), r"share one dtype"),
    ("two devices", lambda: dict(v=torch.randn(2, 5, 2, 8, device="meta")), r"one device"),
    ("integer q", lambda: dict(q=torch.ones(2, 5, 4, 8, dtype=torch.long)), r"floating-point"),
]


@pytest.mark.parametrize("fn", ALL)
@pytest.mark.parametrize("name,over,match", BAD, ids=[b[0] for b in BAD])
def test_bad_tensors_raise_value_error(fn, name, over, match):
    x = base(**over())
    with pytest.raises(ValueError, match=match):
        call(fn, x)


@pytest.mark.parametrize("fn", ALL)
def test_bad_window_and_slots(fn):
    x = base()
    with pytest.raises(ValueError, match="window_size` must be >= 0"):
        call(fn, x, w=-1)
    with pytest.raises(ValueError, match="int >= 0 or None"):
        call(fn, x, w=2.5)
    x0 = base(g=torch.zeros(2, 5, 2, 0))
    with pytest.raises(ValueError, match="num_slots == 0 with window_size == 0"):
        call(fn, x0, w=0)
    with pytest.raises(ValueError, match="`q_win` must have shape"):
        call(fn, x, q_win=torch.randn(2, 5, 4, 7))


@pytest.mark.parametrize("fn", ALL)
def test_bad_cu_seqlens(fn):
    x = base()
    with pytest.raises(ValueError, match="B == 1"):
        call(fn, x, cu_seqlens=torch.tensor([0, 2, 5]))
    x1 = make_inputs(1, 5, 4, 2, 8, 8, 3)
    with pytest.raises(ValueError, match="non-decreasing"):
        call(fn, x1, cu_seqlens=torch.tensor([0, 4, 2, 5]))
    with pytest.raises(ValueError, match="end at T"):
        call(fn, x1, cu_seqlens=torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="integer tensor"):
        call(fn, x1, cu_seqlens=torch.tensor([0.0, 5.0]))


@pytest.mark.parametrize("fn", ALL)
def test_bad_initial_state(fn):
    x = base()
    with pytest.raises(ValueError, match="window of 4 rows but window_size is 2"):
        call(fn, x, initial_state=NHAState.empty(2, 2, 3, 8, 8, 4))
    with pytest.raises(ValueError, match="slot_k"):
        call(fn, x, initial_state=NHAState.empty(3, 2, 3, 8, 8, 2))
    with pytest.raises(ValueError, match="NHAState"):
        call(fn, x, initial_state=(torch.zeros(1),))


def test_bad_backend_and_step_length():
    x = base()
    with pytest.raises(ValueError, match="`backend` must be one of"):
        call(nha_attention, x, backend="cuda")
    with pytest.raises(ValueError, match="triton backend needs CUDA"):
        call(nha_attention, x, backend="triton")
    with pytest.raises(ValueError, match="one token per sequence"):
        recurrent_nha_step(x["q"], x["k"], x["v"], x["g"], 2, NHAState.empty(2, 2, 3, 8, 8, 2))


@pytest.mark.parametrize("fn", ALL + [recurrent_nha_step])
def test_check_gates_false_skips_only_the_value_check(fn):
    # callers whose gates are <= 0 by construction skip the check (on CUDA a host sync); shapes are still checked
    x = base(g=torch.full((2, 5, 2, 3), 0.5))
    if fn is recurrent_nha_step:
        x = {n: t[:, :1] for n, t in x.items()}
        run = lambda **kw: fn(x["q"], x["k"], x["v"], x["g"], 2, NHAState.empty(2, 2, 3, 8, 8, 2), **kw)  # noqa: E731
    else:
        run = lambda **kw: call(fn, x, **kw)  # noqa: E731
    with pytest.raises(ValueError, match="must be <= 0"):
        run()
    o, _ = run(check_gates=False)
    assert o.shape[-1] == 8
    x["k"] = x["k"][:, :, :1]
    with pytest.raises(ValueError, match="must have shape"):
        run(check_gates=False)


def test_gate_check_on_gates_that_need_gradients_warns_nothing():
    # a CPU training call checks its gates; reading the max of a tensor that requires grad used to warn every call
    x = make_inputs(1, 12, 2, 2, 8, 8, 4, requires_grad=True, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        o, _ = chunk_nha(x["q"], x["k"], x["v"], x["g"], 4)
        o.sum().backward()
    assert x["g"].grad is not None
