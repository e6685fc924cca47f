"""The decoding step against the reference, token by token; constant memory for a bounded window."""
import dataclasses

import pytest
import torch

from nha.ops import NHAState, chunk_nha, naive_recurrent_nha, nha_attention, recurrent_nha_step
from nha.ops.testing import make_inputs, max_abs, random_state


STEP_GRID = [(w, M, group) for w in (0, 1, 4, 50, None) for M, group in ((3, 1), (3, 2), (0, 2)) if (M, w) != (0, 0)]


@pytest.mark.parametrize("w,M,group", STEP_GRID)
def test_token_by_token_equals_one_call(w, M, group):
    T = 12
    x = make_inputs(2, T, 2 * group, 2, 8, 6, M)
    args = [x[n] for n in ("q", "k", "v", "g")]
    o_ref, s_ref = naive_recurrent_nha(*args, w, q_win=x["q_win"], k_win=x["k_win"], output_final_state=True)
    state = NHAState.empty(2, 2, M, 8, 6, w)
    outs = []
    for t in range(T):
        step = [a[:, t : t + 1] for a in args]
        o, state = recurrent_nha_step(*step, w, state, q_win=x["q_win"][:, t : t + 1], k_win=x["k_win"][:, t : t + 1])
        outs.append(o)
    assert max_abs(torch.cat(outs, 1), o_ref) < 1e-5
    for a, b in zip(state.tensors(), s_ref.tensors()):
        assert max_abs(a, b) < 1e-5


@pytest.mark.parametrize("w", [0, 3, 8])
def test_prefill_then_decode_through_nha_attention(w):
    x = make_inputs(2, 20, 4, 2, 8, 8, 4)
    names = ("q", "k", "v", "g")
    o_ref, _ = chunk_nha(*(x[n] for n in names), w, q_win=x["q_win"], k_win=x["k_win"])
    o, state = nha_attention(*(x[n][:, :13] for n in names), w, q_win=x["q_win"][:, :13], k_win=x["k_win"][:, :13],
                             output_final_state=True)
    outs = [o]
    for t in range(13, 20):
        o, state = nha_attention(*(x[n][:, t : t + 1] for n in names), w, q_win=x["q_win"][:, t : t + 1],
                                 k_win=x["k_win"][:, t : t + 1], initial_state=state, output_final_state=True)
        outs.append(o)
    assert max_abs(torch.cat(outs, 1), o_ref) < 1e-5


def test_step_from_random_state_matches_reference():
    x = make_inputs(3, 1, 2, 1, 8, 8, 4)
    state = random_state(3, 1, 4, 8, 8, 5, seen=[0, 3, 17], slots_live=False)
    args = [x[n] for n in ("q", "k", "v", "g")]
    o_ref, s_ref = naive_recurrent_nha(*args, 5, initial_state=state, output_final_state=True)
    o, s = recurrent_nha_step(*args, 5, state)
    assert max_abs(o, o_ref) < 1e-5
    for a, b in zip(s.tensors(), s_ref.tensors()):
        assert max_abs(a, b) < 1e-5


def test_decoding_memory_is_constant_for_a_bounded_window():
    w, M = 6, 4
    state = NHAState.empty(2, 2, M, 8, 8, w)
    sizes = set()
    for _ in range(40):
        x = make_inputs(2, 1, 2, 2, 8, 8, M)
        _, state = recurrent_nha_step(x["q"], x["k"], x["v"], x["g"], w, state)
        sizes.add(sum(t.numel() for t in state.tensors()))
    assert len(sizes) == 1
    # H * (M*K + M*V) slot floats plus w rows of (k, v, g, k_win), plus two per-sequence counters
    assert sizes.pop() == 2 * (2 * (M * 8 + M * 8) + w * 2 * (8 + 8 + M + 8) + 2)


def test_state_tensors_are_its_fields_in_order():
    # NHAState.tensors() lists the fields by hand (it runs on every decoding step): it must follow the dataclass
    state = NHAState.empty(2, 1, 3, 4, 5, 2)
    names = [f.name for f in dataclasses.fields(NHAState)]
    assert len(state.tensors()) == len(names)
    assert all(t is getattr(state, n) for t, n in zip(state.tensors(), names))
