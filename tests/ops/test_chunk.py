"""chunk_nha against the reference (naive_recurrent_nha): output, final state and every gradient."""
import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nha.ops import chunk_nha, naive_recurrent_nha
from nha.ops.chunk import SAFE_DECAY
from nha.ops.testing import INPUT_NAMES, make_inputs, max_abs, random_state, rel_rmse

STATE_GRADS = ("slot_k", "slot_v", "window_k", "window_v", "window_g", "window_k_win")


def run_with_grads(fn, x, window, state=None, cu_seqlens=None, **kw):
    """Output, final state and the gradients of every input and initial-state tensor for a fixed random loss."""
    o, final = fn(x["q"], x["k"], x["v"], x["g"], window, q_win=x["q_win"], k_win=x["k_win"], initial_state=state,
                  output_final_state=True, cu_seqlens=cu_seqlens, **kw)
    gen = torch.Generator().manual_seed(1)
    loss = (o.float() * torch.randn(o.shape, generator=gen)).sum()
    loss = loss + (final.slot_k.float() * torch.randn(final.slot_k.shape, generator=gen)).sum()
    loss = loss + (final.slot_v.float() * torch.randn(final.slot_v.shape, generator=gen)).sum()
    loss = loss + (final.window_v.float() * torch.randn(final.window_v.shape, generator=gen)).sum()
    wrt = [x[n] for n in INPUT_NAMES] + ([getattr(state, n) for n in STATE_GRADS] if state is not None else [])
    grads = torch.autograd.grad(loss, wrt, allow_unused=True)
    grads = [torch.zeros_like(w) if g is None else g for w, g in zip(wrt, grads)]
    return o, final, grads


def assert_match(a, b, tol, what=""):
    oa, fa, ga = a
    ob, fb, gb = b
    assert max_abs(oa, ob) <= tol, f"{what} output: {max_abs(oa, ob)}"
    for name, ta, tb in zip(("slot_k", "slot_v", "window_k", "window_v", "window_g", "window_k_win", "seen", "live"),
                            fa.tensors(), fb.tensors()):
        assert ta.shape == tb.shape, f"{what} state {name}: {ta.shape} vs {tb.shape}"
        assert max_abs(ta, tb) <= tol, f"{what} state {name}: {max_abs(ta, tb)}"
    for i, (x, y) in enumerate(zip(ga, gb)):
        scale = max(1.0, y.abs().max().item()) if y.numel() else 1.0
        assert max_abs(x, y) <= tol * scale, f"{what} grad #{i}: {max_abs(x, y)}"


GRID = [
    (T, w, M, group)
    for T, w, M, group in itertools.product([1, 7, 63, 64, 65, 200], [0, 1, 5, 64, 100, None], [0, 1, 16], [1, 3])
    if not (M == 0 and w == 0) and (T < 200 or (M, group) == (16, 3))
]


@pytest.mark.parametrize("T,w,M,group", GRID)
def test_chunk_matches_reference_fp32(T, w, M, group):
    x = make_inputs(1 if T == 200 else 2, T, 2 * group, 2, 8, 12, M, requires_grad=True)
    ref = run_with_grads(naive_recurrent_nha, x, w)
    out = run_with_grads(chunk_nha, x, w, chunk_size=16)
    assert_match(out, ref, 2e-5, f"T={T} w={w} M={M} G={group}")


@pytest.mark.parametrize("w,M", [(0, 4), (3, 4), (5, 0), (None, 4), (100, 4)])
def test_chunk_varlen_matches_reference(w, M):
    cu = torch.tensor([0, 9, 9, 30, 47])  # an empty sequence included
    x = make_inputs(1, 47, 4, 2, 8, 6, M, requires_grad=True)
    state = random_state(4, 2, M, 8, 6, w, seen=[0, 3, 12, 2], requires_grad=True)
    ref = run_with_grads(naive_recurrent_nha, x, w, state=state, cu_seqlens=cu)
    out = run_with_grads(chunk_nha, x, w, state=state, cu_seqlens=cu, chunk_size=8)
    assert_match(out, ref, 2e-5, f"varlen w={w} M={M}")


@pytest.mark.parametrize("w,seen,live", [(4, [2, 9], False), (4, [0, 1], True), (0, [5, 0], True),
                                         (None, [3, 6], False), (None, [0, 4], True), (16, [40, 16], False)])
def test_chunk_initial_state_matches_reference(w, seen, live):
    x = make_inputs(2, 21, 2, 1, 8, 8, 5, requires_grad=True)
    state = random_state(2, 1, 5, 8, 8, w, seen=seen, requires_grad=True, slots_live=live)
    ref = run_with_grads(naive_recurrent_nha, x, w, state=state)
    out = run_with_grads(chunk_nha, x, w, state=state, chunk_size=8)
    assert_match(out, ref, 2e-5, f"state w={w} seen={seen}")


def test_chunk_steep_gates_use_exact_form():
    """Gates decaying past SAFE_DECAY within a chunk take the pairwise form and stay exact."""
    x = make_inputs(1, 70, 2, 2, 8, 8, 4, gate_scale=30.0, requires_grad=True)
    with torch.no_grad():
        x["g"][..., :2] = -40.0  # slots 0 and 1 forget almost at once
    assert (-x["g"].sum(1)).max() > SAFE_DECAY
    ref = run_with_grads(naive_recurrent_nha, x, 3)
    out = run_with_grads(chunk_nha, x, 3, chunk_size=32)
    assert_match(out, ref, 2e-5, "steep gates")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("w,M", [(5, 16), (0, 16), (64, 16), (None, 16), (5, 0)])
def test_chunk_half_precision_error_is_at_most_twice_the_reference_rounding(dtype, w, M):
    """FlashAttention's rule: against the fp32 result, the half-precision path errs at most 2x the reference
    evaluated on the same half inputs and rounded to half."""
    x32 = make_inputs(2, 70, 4, 2, 16, 16, M)
    xh = {n: t.to(dtype).requires_grad_() for n, t in x32.items()}
    xref = {n: t.detach().float().requires_grad_() for n, t in xh.items()}
    o_ref, _, g_ref = run_with_grads(naive_recurrent_nha, xref, w)
    o_base, _, g_base = run_with_grads(naive_recurrent_nha, xh, w)  # same reference code, half in and out
    o, _, grads = run_with_grads(chunk_nha, xh, w)
    assert rel_rmse(o, o_ref) <= 2 * rel_rmse(o_base, o_ref) + 1e-6
    for gr, gb, g0 in zip(grads, g_base, g_ref):
        assert rel_rmse(gr, g0) <= 2 * rel_rmse(gb, g0) + 1e-6


@pytest.mark.parametrize("w", [0, 2, 5, None])
def test_gradcheck_float64(w):
    x = make_inputs(1, 6, 2, 1, 3, 2, 2, dtype=torch.float64)
    x["g"] = (x["g"] - 0.2).detach()  # keep g < 0 under gradcheck's perturbations
    x = {n: t.requires_grad_() for n, t in x.items()}

    def fn(q, k, v, g, q_win, k_win):
        return chunk_nha(q, k, v, g, w, q_win=q_win, k_win=k_win, chunk_size=4)[0]

    assert torch.autograd.gradcheck(fn, tuple(x[n] for n in INPUT_NAMES), eps=1e-6, atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(
    T=st.integers(1, 40), w=st.one_of(st.none(), st.integers(0, 45)), M=st.integers(0, 5),
    group=st.sampled_from([1, 2]), chunk=st.sampled_from([1, 3, 8, 64]), seed=st.integers(0, 10_000),
)
def test_chunk_property_random_shapes(T, w, M, group, chunk, seed):
    if M == 0 and w == 0:
        M = 1
    x = make_inputs(2, T, 2 * group, 2, 4, 3, M, seed=seed)
    args = [x[n] for n in ("q", "k", "v", "g")]
    kw = dict(q_win=x["q_win"], k_win=x["k_win"], output_final_state=True)
    o_ref, s_ref = naive_recurrent_nha(*args, w, **kw)
    o, s = chunk_nha(*args, w, chunk_size=chunk, **kw)
    assert max_abs(o, o_ref) < 2e-5
    for a, b in zip(s.tensors(), s_ref.tensors()):
        assert max_abs(a, b) < 2e-5


@settings(max_examples=25, deadline=None)
@given(T=st.integers(2, 40), w=st.one_of(st.none(), st.integers(0, 12)), split=st.floats(0, 1),
       seed=st.integers(0, 999))
def test_state_handoff_at_random_split_equals_one_call(T, w, split, seed):
    x = make_inputs(2, T, 2, 1, 4, 4, 3, seed=seed)
    cut = int(split * T)
    args = [x[n] for n in ("q", "k", "v", "g", "q_win", "k_win")]
    call = lambda xs, state: chunk_nha(*xs[:4], w, q_win=xs[4], k_win=xs[5], initial_state=state,  # noqa: E731
                                       output_final_state=True, chunk_size=4)
    o_all, s_all = call(args, None)
    o1, s1 = call([a[:, :cut] for a in args], None)
    o2, s2 = call([a[:, cut:] for a in args], s1)
    assert max_abs(torch.cat([o1, o2], 1), o_all) < 2e-5
    for a, b in zip(s2.tensors(), s_all.tensors()):
        assert max_abs(a, b) < 2e-5
