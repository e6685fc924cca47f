"""The properties of NHA_SPEC section 3, each against an independent formulation (SDPA, closed-form GSA)."""
import pytest
import torch
import torch.nn.functional as F

from nha.ops import chunk_nha, naive_recurrent_nha
from nha.ops.testing import make_inputs, max_abs

IMPLS = [naive_recurrent_nha, chunk_nha]


def sdpa(q, k, v, mask=None, is_causal=False):
    """`[B, T, heads, D]` attention in float64 through torch SDPA (GQA by enable_gqa)."""
    q, k, v = (x.double().transpose(1, 2) for x in (q, k, v))
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, enable_gqa=True)
    return o.transpose(1, 2)


def closed_form_gsa(q, k, v, g, scale):
    """Gated Slot Attention written as sums over the past, not as a recurrence:
    Ks_t[m] = sum_{j<=t} exp(sum_{l=j+1..t} g_l[m]) (1 - exp(g_j[m])) k_j, likewise Vs_t; o_t = softmax(q Ks_t) Vs_t."""
    B, T, HQ, K = q.shape
    H = k.shape[2]
    q, k, v, g = (x.double() for x in (q, k, v, g))
    q = q.view(B, T, H, HQ // H, K)
    cum = g.cumsum(1)  # [B, T, H, M]
    out = torch.zeros(B, T, H, HQ // H, v.shape[-1], dtype=torch.float64)
    for t in range(T):
        decay = torch.exp(cum[:, t : t + 1] - cum[:, : t + 1]) * (1 - torch.exp(g[:, : t + 1]))  # [B, t+1, H, M]
        ks = torch.einsum("bjhm,bjhk->bhmk", decay, k[:, : t + 1])
        vs = torch.einsum("bjhm,bjhv->bhmv", decay, v[:, : t + 1])
        p = torch.softmax(scale * torch.einsum("bhgk,bhmk->bhgm", q[:, t], ks), dim=-1)
        out[:, t] = torch.einsum("bhgm,bhmv->bhgv", p, vs)
    return out.reshape(B, T, HQ, -1)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("w,T", [(None, 37), (37, 37), (100, 37), (None, 1)])
@pytest.mark.parametrize("M", [0, 8])
def test_unbounded_or_long_window_is_causal_softmax_attention(impl, w, T, M):
    x = make_inputs(2, T, 6, 2, 16, 8, M, gate_scale=3.0)
    o, _ = impl(x["q"], x["k"], x["v"], x["g"], w, q_win=x["q_win"], k_win=x["k_win"])
    assert max_abs(o, sdpa(x["q_win"], x["k_win"], x["v"], is_causal=True)) < 1e-5


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("w", [1, 4, 16])
def test_no_slots_is_sliding_window_attention(impl, w):
    T = 40
    x = make_inputs(2, T, 4, 2, 16, 8, 0)
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    band = (j <= i) & (j > i - w)
    o, _ = impl(x["q"], x["k"], x["v"], x["g"], w, q_win=x["q_win"], k_win=x["k_win"])
    assert max_abs(o, sdpa(x["q_win"], x["k_win"], x["v"], mask=band)) < 1e-5


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("group", [1, 2])
def test_zero_window_is_gated_slot_attention(impl, group):
    x = make_inputs(2, 30, 2 * group, 2, 8, 6, 5)
    o, _ = impl(x["q"], x["k"], x["v"], x["g"], 0)
    assert max_abs(o, closed_form_gsa(x["q"], x["k"], x["v"], x["g"], 8 ** -0.5)) < 1e-5


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("w", [0, 3, None])
def test_varlen_equals_each_sequence_alone(impl, w):
    cu = torch.tensor([0, 6, 19, 20, 33])
    x = make_inputs(1, 33, 2, 1, 8, 8, 4)
    names = ("q", "k", "v", "g", "q_win", "k_win")
    o, state = impl(*(x[n] for n in names[:4]), w, q_win=x["q_win"], k_win=x["k_win"], cu_seqlens=cu,
                    output_final_state=True)
    for n, (s, e) in enumerate(zip(cu.tolist(), cu[1:].tolist())):
        piece = {name: x[name][:, s:e] for name in names}
        o_n, state_n = impl(*(piece[nm] for nm in names[:4]), w, q_win=piece["q_win"], k_win=piece["k_win"],
                            output_final_state=True)
        assert max_abs(o[:, s:e], o_n) < 1e-6
        assert max_abs(state.slot_k[n], state_n.slot_k[0]) < 1e-6
        assert max_abs(state.slot_v[n], state_n.slot_v[0]) < 1e-6
        rows = state_n.window_rows
        assert max_abs(state.window_v[n, :rows], state_n.window_v[0]) < 1e-6


def test_empty_slots_are_masked_until_a_token_leaves_the_window():
    """For t < w the slots hold nothing: the output is window attention alone, whatever q and g are."""
    w, T = 8, 8
    x = make_inputs(1, T, 2, 2, 8, 8, 4)
    o, state = naive_recurrent_nha(x["q"] * 100, x["k"], x["v"], x["g"], w, q_win=x["q_win"], k_win=x["k_win"],
                                   output_final_state=True)
    assert max_abs(o, sdpa(x["q_win"], x["k_win"], x["v"], is_causal=True)) < 1e-5
    assert not state.slots_live.any() and state.slot_k.abs().max() == 0


def test_every_past_token_sits_in_exactly_one_memory():
    """After T tokens with window w the slots hold the decayed sum of tokens 0..T-w-1, the window the last w."""
    w, T = 3, 10
    x = make_inputs(1, T, 1, 1, 4, 4, 2)
    _, state = naive_recurrent_nha(x["q"], x["k"], x["v"], x["g"], w, output_final_state=True)
    g, k = x["g"][0, : T - w].double(), x["k"][0, : T - w].double()
    cum = g.cumsum(0)
    expected = torch.einsum("jhm,jhk->hmk", torch.exp(cum[-1:] - cum) * (1 - torch.exp(g)), k)
    assert max_abs(state.slot_k[0], expected) < 1e-6
    # ring buffer: token p sits in row p % w, so the window rows hold tokens T-w .. T-1
    for p in range(T - w, T):
        assert torch.equal(state.window_k[0, p % w], x["k"][0, p])
