"""The Triton building blocks of the slot path, each against a PyTorch formula: the gate kernels (gates.py), the
chunk-start states, the slot read-outs against the recurrence and their half-precision products (slot_chunk.py),
the kernels reading shifted keys and values in place (shift.py's Shifted), the chunks' gentle flags; and the
decoding step's launch cache (common.CompiledLaunch) against a stand-in kernel.

N sequences, E time, H heads, M slots, D head dim.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nha.ops.triton import common
from nha.ops.triton.common import CompiledLaunch, chunk_cumsum
from nha.ops.triton.gates import reverse_chunk_cumsum, reverse_slot_gates, slot_gates, slot_gates_grad
from nha.ops.triton.merge import WindowMerge, merge_forward
from nha.ops.triton.shift import shifted, unshift
from nha.ops.triton.scan_states import slot_states, slot_states_pair
from nha.ops.triton.slot_chunk import (GENTLE_SPAN, chunk_products, dot_precision, gentle_chunks, read_weights,
                                      slot_logits, slot_read)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def _poison_outputs(monkeypatch):
    # every kernel output starts as NaN, so an element a kernel forgot to write fails the comparison
    monkeypatch.setattr(common, "POISON_OUTPUTS", True)


@pytest.mark.parametrize("M", [5, 16])
def test_reverse_chunk_cumsum_is_the_flipped_scans_cumsum(M):
    N, E, H, chunk = 2, 128, 3, 64
    g = torch.randn(N, E, H, M, device=DEVICE)
    flipped = torch.flip(g, dims=[1])
    g_rev = torch.cat([torch.zeros_like(flipped[:, :1]), flipped[:, :-1]], dim=1)  # g'_u = g_(E-u), g'_0 = 0
    torch.testing.assert_close(reverse_chunk_cumsum(g, chunk), chunk_cumsum(g_rev, chunk), rtol=1e-5, atol=1e-5)


def _scan_gates_reference(g, valid, ends, shift, group, length):
    # PyTorch: clamp, mask invalid rows, move `shift` later, repeat heads, cut each sequence at its end
    g = g.double().clamp(min=-1000.0) * valid[:, :, None, None]
    g_in = shifted(g, shift, length, group).materialize()
    return g_in * (torch.arange(length, device=g.device)[None, :] < ends[:, None])[:, :, None, None]


@pytest.mark.parametrize("shift,group,with_final,S", [(0, 1, True, 50), (5, 2, False, 50), (5, 2, True, 50),
                                                      (20, 1, True, 50), (70, 1, True, 50), (5, 1, True, 2100)])
def test_slot_gates_and_their_gradient(shift, group, with_final, S):
    # S = 2100: 132 chunks, more than one block of the walk over the chunks after each chunk (later_totals_kernel)
    N, H, M, chunk = 2, 2, 6, 16
    length = (S // chunk + 1) * chunk
    g = -torch.rand(N, S, H, M, device=DEVICE).pow(3) * 4
    g[0, 3, 0, :2] = torch.tensor([-5000.0, -1e-9])  # a clamped gate and one whose 1 - exp(g) cancels in float32
    g.requires_grad_()
    valid = torch.rand(N, S, device=DEVICE) > 0.2
    valid[0, 3] = True
    ends = torch.tensor([S, 37], device=DEVICE)
    s_in, gc, gentle = slot_gates(g.detach(), valid.to(torch.int8), ends, shift, group, length, chunk)
    ref = _scan_gates_reference(g, valid, ends, shift, group, length)
    torch.testing.assert_close(s_in.double(), -torch.expm1(ref), rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(gc, chunk_cumsum(ref.float(), chunk), rtol=1e-5, atol=1e-5)
    # the chunks' flags are gentle_chunks' of gc, bit for bit (all 0 here; with gentle chunks:
    # test_slot_gates_flags_chunks_as_gentle_chunks_does)
    assert torch.equal(gentle, gentle_chunks(gc, chunk))
    assert not gentle.any()  # M <= 16: every chunk is steep (FUSED_SLOTS)
    # the backward's flipped-scan cumsums, made from the layer's gates: those of the scan's gates, bit for bit
    gcr = reverse_slot_gates(g.detach(), valid.to(torch.int8), ends, shift, group, length, chunk)
    assert torch.equal(gcr, reverse_chunk_cumsum(ref.float(), chunk))
    # a bf16 prefill's write strengths: the float32 ones rounded to bf16 (to nearest on a GPU, as torch does; the
    # interpreter's conversion truncates: within one bf16 unit in the last place, at most 2^-7 of the value)
    s_half, gc_half, gentle_half = slot_gates(g.detach(), valid.to(torch.int8), ends, shift, group, length, chunk,
                                              s_dtype=torch.bfloat16)
    assert s_half.dtype == torch.bfloat16 and torch.equal(gc_half, gc) and torch.equal(gentle_half, gentle)
    if common.INTERPRETER:
        torch.testing.assert_close(s_half.float(), s_in, rtol=2.0 ** -7, atol=0)
    else:
        assert torch.equal(s_half, s_in.bfloat16())
    # what both slot passes pass back: to the chunk cumsums G through dG = dz z + p dp - s (ds1 + ds2) (plus the final
    # states' term at the last step), and to s = 1 - exp(g_in) through ds1 + ds2
    dz, z, p, dp, ds1, ds2 = (torch.randn_like(s_in) for _ in range(6))
    final = torch.randn(N, H * group, M, device=DEVICE) if with_final else None
    dG = dz * z + p * dp - s_in * (ds1 + ds2)
    if with_final:
        dG[:, -1] += final
    dG_in = torch.flip(torch.cumsum(torch.flip(dG, dims=[1]), dim=1), dims=[1])  # G_t sums g_in up to t
    loss = (ref * dG_in).sum() - (torch.expm1(ref) * (ds1 + ds2)).sum()
    # shift 20: the last rows never enter the slots; 70 > length: none does (an unbounded window), nothing flows back
    expected = torch.autograd.grad(loss, (g,))[0] if loss.requires_grad else torch.zeros_like(g)
    got = slot_gates_grad(g.detach(), valid.to(torch.int8), ends, shift, chunk, s_in, dz * z + p * dp, ds1 + ds2,
                          final)
    torch.testing.assert_close(got, expected.float(), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("by,group", [(0, 1), (3, 2), (20, 1)])
def test_unshift_is_the_gradient_of_shifted(by, group):
    N, S, H, D, length = 2, 30, 2, 5, 32
    x = torch.randn(N, S, H, D, device=DEVICE, requires_grad=True)
    dy = torch.randn(N, length, H * group, D, device=DEVICE)
    other = torch.randn(N, S, H, D, device=DEVICE)
    (expected,) = torch.autograd.grad((shifted(x, by, length, group).materialize() * dy).sum(), (x,))
    torch.testing.assert_close(unshift(dy, by, S, group, other=other), expected + other, rtol=1e-5, atol=1e-5)
    assert unshift(dy, by, S, group, dtype=torch.bfloat16).dtype == torch.bfloat16


@pytest.mark.parametrize("with_h0", [False, True])
def test_slot_states_are_the_recurrence_at_every_chunk_start(with_h0):
    # 39 chunks of 16 (a GPU's smallest product): the walk's groups of four chunks and a partial last group
    N, E, H, M, D, chunk = 1, 624, 2, 3, 5, 16
    x = torch.rand(N, E, H, M, device=DEVICE)
    g = -torch.rand(N, E, H, M, device=DEVICE)
    y = torch.randn(N, E, H, D, device=DEVICE)
    h0 = torch.randn(N, H, M, D, device=DEVICE) if with_h0 else None
    S = torch.zeros(N, H, M, D, device=DEVICE) if h0 is None else h0.clone()
    starts = []
    for t in range(E):
        if t % chunk == 0:
            starts.append(S.clone())
        S = torch.exp(g[:, t])[..., None] * S + x[:, t][..., None] * y[:, t][:, :, None, :]
    h, ht = slot_states(x, chunk_cumsum(g, chunk), y, h0, chunk, "ieee")
    torch.testing.assert_close(h, torch.stack(starts, 2), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ht, S, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("h0_of, group, span", [("none", 1, 1), ("first", 2, 2), ("both", 1, 3)])
def test_segment_states_are_the_scans(h0_of, group, span):
    # NHA's two forward scans share x and the gates: `slot_states_pair` makes both in segments of `span` chunks
    # (span 1: every chunk its own; 3 of 4 chunks: a short last segment), as local states plus the segments' start
    # states, in tensors whose rows hold both side by side (widths 6 and 9: the wider one sets the D blocks, the
    # narrower one's tail is masked), with either initial state absent. Each must be `slot_states`' scan, and the
    # read-outs, which make every chunk's state from the segments', must read what they read from those states.
    N, S, KV, M, chunk, E = 2, 50, 2, 5, 16, 64
    H = KV * group
    k = shifted(torch.randn(N, S, KV, 6, device=DEVICE), 3, E, group)
    v = shifted(torch.randn(N, S, KV, 9, device=DEVICE), 3, E, group)
    x = torch.rand(N, E, KV, M, device=DEVICE).repeat_interleave(group, 2)
    gc = chunk_cumsum(-torch.rand(N, E, KV, M, device=DEVICE), chunk).repeat_interleave(group, 2)
    h0_k = None if h0_of == "none" else torch.randn(N, KV, M, 6, device=DEVICE)
    h0_v = torch.randn(N, KV, M, 9, device=DEVICE) if h0_of == "both" else None
    (h_k, ht_k), (h_v, ht_v) = slot_states_pair(x, gc, k, v, h0_k, h0_v, chunk, "ieee", group=group, span=span)
    # to float32 rounding, not bit for bit: a segment's start state reaches its chunks decayed by one product of
    # their gates instead of chunk by chunk, the same terms summed in another order
    close = dict(rtol=1e-5, atol=1e-5)
    for (h, ht), y, h0 in [((h_k, ht_k), k, h0_k), ((h_v, ht_v), v, h0_v)]:
        h_one, ht_one = slot_states(x, gc, y, h0, chunk, "ieee", group=group)
        assert h.span == span and h.local.stride(3) == h.start.stride(3) == 15 and ht.is_contiguous()
        torch.testing.assert_close(h.materialize(), h_one, **close)
        torch.testing.assert_close(ht, ht_one, **close)
        q, p = torch.randn(N, E, H, y.shape[-1], device=DEVICE), torch.rand(N, E, H, M, device=DEVICE)
        torch.testing.assert_close(slot_logits(q, x, gc, y, h, chunk, "ieee"),
                                   slot_logits(q, x, gc, y, h_one, chunk, "ieee"), **close)
        torch.testing.assert_close(slot_read(p, x, gc, y, h, chunk, "ieee"),
                                   slot_read(p, x, gc, y, h_one, chunk, "ieee"), **close)
    with pytest.raises(ValueError, match="contiguous but for a row"):
        slot_read(p, x, gc, v, h_one.transpose(0, 1), chunk, "ieee")
    with pytest.raises(ValueError, match="segment states of span"):
        slot_read(p, x, gc, v, h_v._replace(span=span + 2), chunk, "ieee")


@pytest.mark.parametrize("M", [5, 40])
@pytest.mark.parametrize("sub", [16, 32])
@pytest.mark.parametrize("gates", ["mild", "steep", "mixed"])
def test_slot_read_outs_are_the_recurrence(sub, gates, M):
    # both read-outs in both directions against the loop S_t = exp(g_t) S_(t-1) + x_t (x) y_t, for 16- and 32-row
    # sub-chunks. Mild gates fall by less than GENTLE_SPAN in every chunk (one in-chunk product per chunk); steep ones
    # put decays inside one sub-chunk far below exp(-88) (the sub-chunk kernels' split levels); mixed has both kinds of
    # chunk in one launch: one steep gate in one slot (one step, so that the chunk cumsums after it stay near enough
    # to 0 for float32 to resolve the mild gates that follow: at -1600 its rounding alone is ~1e-4, the tolerance).
    # With M = 5 (FUSED_SLOTS) every chunk takes the sub-chunk kernels
    N, E, H, D, chunk = 1, 128, 2, 6, 64
    x = torch.rand(N, E, H, M, device=DEVICE)
    g = -torch.rand(N, E, H, M, device=DEVICE) * (40.0 if gates == "steep" else 1.0)
    if gates == "mixed":
        g[:, 20, :, 1] = -60.0
    y, q = torch.randn(N, E, H, D, device=DEVICE), torch.randn(N, E, H, D, device=DEVICE)
    p = torch.rand(N, E, H, M, device=DEVICE)
    S = torch.zeros(N, H, M, D, device=DEVICE, dtype=torch.float64)
    z_ref, o_ref = [], []
    for t in range(E):  # in float64: the loop's own float32 rounding is as large as the kernels'
        S = torch.exp(g[:, t].double())[..., None] * S + (x[:, t][..., None] * y[:, t][:, :, None, :]).double()
        z_ref.append(torch.einsum("nhmd,nhd->nhm", S, q[:, t].double()))
        o_ref.append(torch.einsum("nhmd,nhm->nhd", S, p[:, t].double()))
    z_ref, o_ref = torch.stack(z_ref, 1).float(), torch.stack(o_ref, 1).float()
    gc = chunk_cumsum(g, chunk)
    h, _ = slot_states(x, gc, y, None, chunk, "ieee")
    close = dict(rtol=1e-4, atol=1e-4)  # float32 rounding of outputs up to ~6 (any version of the kernels: 1.6e-5)
    torch.testing.assert_close(slot_logits(q, x, gc, y, h, chunk, "ieee", sub=sub), z_ref, **close)
    torch.testing.assert_close(slot_read(p, x, gc, y, h, chunk, "ieee", sub=sub), o_ref, **close)
    # reverse: the inputs stored back to front, the gates' cumsums in scan order; outputs come back in storage order
    back = lambda a: a.flip(1).contiguous()  # noqa: E731
    hr, _ = slot_states(back(x), gc, back(y), None, chunk, "ieee", reverse=True)
    z = slot_logits(back(q), back(x), gc, back(y), hr, chunk, "ieee", reverse=True, sub=sub)
    o = slot_read(back(p), back(x), gc, back(y), hr, chunk, "ieee", reverse=True, sub=sub)
    torch.testing.assert_close(z, back(z_ref), **close)
    torch.testing.assert_close(o, back(o_ref), **close)


def _gentle_and_steep_gates(N: int, E: int, H: int, M: int) -> torch.Tensor:
    # mild gates (every chunk gentle), but sequence 1 has one steep gate at row 64, the first of forward chunk 1 and
    # the last of the flipped scan's chunk that pairs with forward chunk 0: both of its chunks are steep
    g = -torch.rand(N, E, H, M, device=DEVICE) * 0.5
    g[1, 64, :, 0] = -3 * float(GENTLE_SPAN.value)
    return g


@pytest.mark.parametrize("reverse_steep", [False, True], ids=["forward-steep", "flipped-steep"])
def test_gentle_chunks_hold_in_both_scan_directions(reverse_steep):
    # a chunk is gentle when its gates fall by less than GENTLE_SPAN in the forward scan and in the flipped one,
    # whose chunks are shifted by a row; one steep gate at a chunk's first row (or last) makes both kinds steep
    N, E, H, M, chunk = 1, 256, 2, 33, 64
    g = -torch.rand(N, E, H, M, device=DEVICE) * 0.5
    g[0, 127 if reverse_steep else 128, 1, 2] = -2 * float(GENTLE_SPAN.value)
    fall_fwd = -chunk_cumsum(g, chunk)[:, chunk - 1::chunk]  # `[N, NT, H, M]`: each slot's fall in each chunk
    fall_rev = -reverse_chunk_cumsum(g, chunk)[:, chunk - 1::chunk].flip(1)
    want = ((fall_fwd.amax(-1) < GENTLE_SPAN.value) & (fall_rev.amax(-1) < GENTLE_SPAN.value)).to(torch.int8)
    got = gentle_chunks(chunk_cumsum(g, chunk), chunk)
    assert torch.equal(got, want)
    steep = [(c, h) for c in range(E // chunk) for h in range(H) if got[0, c, h] == 0]
    # head 1's chunk 1 (the steep gate its last row, or its flipped chunk's last row) and chunk 2 (the gate in it)
    assert steep == ([(1, 1)] if reverse_steep else [(1, 1), (2, 1)])


def test_slot_gates_flags_chunks_as_gentle_chunks_does():
    # slot_gates_kernel's flags take a chunk's first gate and the next chunk's from their own loads, not from
    # gentle_chunks' cumsums: spikes at chunks' first rows put the flipped scan's fall near GENTLE_SPAN, where a wrong
    # row flips the flag (a shift of 3 moves the gates 3 steps later, with a sequence ending early)
    N, S, H, M, chunk, shift = 2, 509, 2, 40, 64, 3
    E = (S + shift + chunk - 1) // chunk * chunk
    gen = torch.Generator().manual_seed(11)
    g = -torch.rand(N, S, H, M, generator=gen) * 0.5
    firsts = torch.arange(chunk - shift, S, chunk)  # rows that reach a chunk's first step
    g[:, firsts, :, 0] -= 10 + torch.rand(N, len(firsts), H, generator=gen) * 30  # one slot: one spike per chunk
    g = g.to(DEVICE)
    valid, ends = torch.ones(N, S, dtype=torch.int8, device=DEVICE), torch.tensor([E, 300], device=DEVICE)
    _, gc, flags = slot_gates(g, valid, ends, shift, 1, E, chunk)
    assert torch.equal(flags, gentle_chunks(gc, chunk))
    assert 0 < int(flags.sum()) < flags.numel()


def test_the_output_read_makes_the_merge_itself():
    # without gradients, NHA's output read-out takes the raw slot logits z and the window path's lse (`WindowMerge`)
    # and makes the merge's slot probabilities p and window share a in registers, in its in-chunk weights of steep
    # chunks too: the same output as from `merge_forward`'s p and a in memory (mixed gates: one steep chunk per head
    # of sequence 1; rows past the layer's S; rows whose slots are not live)
    N, S, H, M, D, chunk, E = 2, 100, 2, 40, 9, 64, 128
    g = _gentle_and_steep_gates(N, E, H, M)
    x, gc = torch.rand(N, E, H, M, device=DEVICE), chunk_cumsum(g, chunk)
    flags = gentle_chunks(gc, chunk)
    assert 0 < int(flags.sum()) < flags.numel()
    y, q = torch.randn(N, E, H, D, device=DEVICE), torch.randn(N, E, H, D, device=DEVICE)
    h, _ = slot_states(x, gc, y, None, chunk, "ieee")
    z = slot_logits(q, x, gc, y, h, chunk, "ieee", gentle=flags)
    lse_win, o_win = torch.randn(N, S, H, device=DEVICE), torch.randn(N, S, H, D, device=DEVICE)
    live = (torch.rand(N, S, device=DEVICE) > 0.2).to(torch.int8)
    p, a = merge_forward(z, lse_win, live, 0.5)
    want = slot_read(p, x, gc, y, h, chunk, "ieee", gentle=flags, a=a, o_win=o_win, out_rows=S)
    merge = WindowMerge(lse_win, live, 0.5)
    got = slot_read(z, x, gc, y, h, chunk, "ieee", gentle=flags, o_win=o_win, out_rows=S, merge=merge)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for wrong in (dict(reverse=True), dict(a=a)):
        with pytest.raises(ValueError, match="forward read-out"):
            slot_read(z, x, gc, y, h, chunk, "ieee", merge=merge, **wrong)


@pytest.mark.parametrize("M", [5, 64])
def test_reverse_reads_take_the_forward_reads_weights_swapped(M):
    # the backward's dk / dv reads (reverse, row input s, state writes r) reuse the forward-direction weights of
    # (row input r, state writes s): every in-chunk pair must land where the reverse read's own weights put it
    N, E, H, D, chunk = 2, 128, 2, 6, 64
    g = _gentle_and_steep_gates(N, E, H, M)
    s, r = torch.rand(N, E, H, M, device=DEVICE), torch.randn(N, E, H, M, device=DEVICE)
    c = torch.randn(N, E, H, D, device=DEVICE)
    gc, gcr = chunk_cumsum(g, chunk), reverse_chunk_cumsum(g, chunk)
    flags = gentle_chunks(gc, chunk)
    hr, _ = slot_states(r, gcr, c, None, chunk, "ieee", reverse=True)
    own = slot_read(s, r, gcr, c, hr, chunk, "ieee", reverse=True)
    w = read_weights(r, s, gc, chunk, "ieee", gentle=flags)
    swapped = slot_read(s, r, gcr, c, hr, chunk, "ieee", reverse=True, swapped_weights=w, gentle=flags.flip(1))
    torch.testing.assert_close(swapped, own, rtol=1e-4, atol=1e-4)  # float32 rounding of sums of 64 products
    with pytest.raises(ValueError, match="swapped_weights"):
        slot_read(s, r, gc, c, hr, chunk, "ieee", swapped_weights=w)
    with pytest.raises(ValueError, match="gentle"):  # weights made for flags that must come with them
        slot_read(s, r, gcr, c, hr, chunk, "ieee", reverse=True, swapped_weights=w)


@pytest.mark.parametrize("paired", [False, True])
def test_reverse_logits_take_the_forward_products_swapped(paired):
    # the backward's reverse logits (q-role k, y-role q) reuse the forward read-out's in-chunk products q . k, the
    # pair swapped (and pass 2's take dp's do . v): every product must land where the reverse read-out's own go
    N, E, H, M, D, chunk = 2, 128, 2, 40, 6, 64
    g = _gentle_and_steep_gates(N, E, H, M)
    gc, gcr = chunk_cumsum(g, chunk), reverse_chunk_cumsum(g, chunk)
    flags = gentle_chunks(gc, chunk)
    reads = []  # (q-role, x, y-role, states) of each reverse read-out
    for _ in range(1 + paired):
        k, x, q = torch.randn(N, E, H, D, device=DEVICE), torch.randn(N, E, H, M, device=DEVICE), \
            torch.randn(N, E, H, D, device=DEVICE)
        reads.append((k, x, q, slot_states(x, gcr, q, None, chunk, "ieee", reverse=True)[0]))
    first, plus = reads[0], (reads[1] if paired else None)
    own = slot_logits(*first[:2], gcr, *first[2:], chunk, "ieee", reverse=True, plus=plus)
    # the forward read-outs of the swapped pairs (q-role q, y-role k); their z is not looked at
    products = tuple(slot_logits(q, x, gc, k, h, chunk, "ieee", keep_products=True, gentle=flags)[1]
                     for k, x, q, h in reads)
    steep = flags.view(N, E // chunk, 1, H, 1).expand(N, E // chunk, chunk, H, 1).reshape(N, E, H, 1) == 0
    kept = chunk_products(first[2], first[0], gc, chunk, "ieee")  # every chunk's: a steep chunk's are the same
    assert torch.equal(torch.where(steep, products[0], 0.0), torch.where(steep, kept, 0.0))
    swapped = slot_logits(*first[:2], gcr, *first[2:], chunk, "ieee", reverse=True, plus=plus,
                          swapped_products=products, gentle=flags.flip(1))
    torch.testing.assert_close(swapped, own, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="swapped_products"):
        slot_logits(*first[:2], gcr, *first[2:], chunk, "ieee", reverse=True, swapped_products=products * 3)
    with pytest.raises(ValueError, match="gentle"):
        slot_logits(*first[:2], gcr, *first[2:], chunk, "ieee", reverse=True, plus=plus, swapped_products=products)


@pytest.mark.parametrize("reverse", [False, True])
def test_paired_logits_are_the_sum_of_two(reverse):
    # the backward's reverse scans run their logits read-outs over the same gates in one in-chunk kernel that shares
    # the decays (slot_logits' `plus`): it must give the sum of the two read-outs taken one at a time, steep gates
    N, E, H, M, D1, D2, chunk = 1, 128, 2, 5, 6, 3, 64
    gc = chunk_cumsum(-torch.rand(N, E, H, M, device=DEVICE) * 40.0, chunk)
    x1, x2 = (torch.rand(N, E, H, M, device=DEVICE) for _ in range(2))
    y1, q1 = torch.randn(N, E, H, D1, device=DEVICE), torch.randn(N, E, H, D1, device=DEVICE)
    y2, q2 = torch.randn(N, E, H, D2, device=DEVICE), torch.randn(N, E, H, D2, device=DEVICE)
    h1, _ = slot_states(x1, gc, y1, None, chunk, "ieee", reverse=reverse)
    h2, _ = slot_states(x2, gc, y2, None, chunk, "ieee", reverse=reverse)
    z = slot_logits(q1, x1, gc, y1, h1, chunk, "ieee", reverse=reverse, plus=(q2, x2, y2, h2))
    z_each = [slot_logits(q, x, gc, y, h, chunk, "ieee", reverse=reverse) for q, x, y, h in ((q1, x1, y1, h1),
                                                                                               (q2, x2, y2, h2))]
    torch.testing.assert_close(z, z_each[0] + z_each[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shift,group", [(0, 1), (5, 2), (200, 1)])
def test_kernels_read_shifted_inputs_in_place(shift, group):
    # keys/values as the scan reads them, rows `shift` late, one head per `group` and zeros outside the input (a
    # Shifted): exactly what the materialized copy gives, as y (states, both read-outs) and as q (the backward's
    # reverse logits), in both scan directions; shift 5 leaves rows empty at both ends, 200 every row
    N, S, M, D, chunk, E = 1, 100, 5, 6, 64, 128
    H = 2 * group
    lazy = shifted(torch.randn(N, S, 2, D, device=DEVICE), shift, E, group)
    dense = lazy.materialize()
    assert dense.shape == lazy.shape == (N, E, H, D)
    x, p = torch.rand(N, E, H, M, device=DEVICE), torch.rand(N, E, H, M, device=DEVICE)
    gc = chunk_cumsum(-torch.rand(N, E, H, M, device=DEVICE), chunk)
    q = torch.randn(N, E, H, D, device=DEVICE)
    exact = dict(rtol=0, atol=0)
    for reverse in (False, True):
        h, ht = slot_states(x, gc, lazy, None, chunk, "ieee", reverse=reverse)
        h_ref, ht_ref = slot_states(x, gc, dense, None, chunk, "ieee", reverse=reverse)
        torch.testing.assert_close((h, ht), (h_ref, ht_ref), **exact)
        for got, want in [(slot_logits(q, x, gc, lazy, h, chunk, "ieee", reverse=reverse),
                           slot_logits(q, x, gc, dense, h, chunk, "ieee", reverse=reverse)),
                          (slot_logits(lazy, x, gc, q, h, chunk, "ieee", reverse=reverse),
                           slot_logits(dense, x, gc, q, h, chunk, "ieee", reverse=reverse)),
                          (slot_read(p, x, gc, lazy, h, chunk, "ieee", reverse=reverse),
                           slot_read(p, x, gc, dense, h, chunk, "ieee", reverse=reverse))]:
            torch.testing.assert_close(got, want, **exact)


@pytest.mark.parametrize("group", [2, 4])
def test_one_state_serves_a_group_of_heads(group):
    # GQA: a group's query heads hold the same gates, so `slot_states(..., group)` makes one state per key/value head
    # (from the group's first head, over the group's shared keys/values) and both read-outs take it for every head
    # of the group: the same states and read-outs, bit for bit, as one state per query head
    N, S, KV, M, D, chunk, E = 1, 100, 2, 5, 6, 64, 128
    H = KV * group
    ys = shifted(torch.randn(N, S, KV, D, device=DEVICE), 3, E, group)
    x = torch.rand(N, E, KV, M, device=DEVICE).repeat_interleave(group, 2)
    gc = chunk_cumsum(-torch.rand(N, E, KV, M, device=DEVICE), chunk).repeat_interleave(group, 2)
    h0 = torch.randn(N, KV, M, D, device=DEVICE)
    q, p = torch.randn(N, E, H, D, device=DEVICE), torch.rand(N, E, H, M, device=DEVICE)
    h, ht = slot_states(x, gc, ys, h0, chunk, "ieee", group=group)
    h_each, ht_each = slot_states(x, gc, ys, h0.repeat_interleave(group, 1), chunk, "ieee")
    assert h.shape == (N, KV, E // chunk, M, D) and ht.shape == (N, KV, M, D)
    assert torch.equal(h, h_each[:, ::group]) and torch.equal(ht, ht_each[:, ::group])
    assert torch.equal(slot_logits(q, x, gc, ys, h, chunk, "ieee"), slot_logits(q, x, gc, ys, h_each, chunk, "ieee"))
    assert torch.equal(slot_read(p, x, gc, ys, h, chunk, "ieee"), slot_read(p, x, gc, ys, h_each, chunk, "ieee"))
    with pytest.raises(ValueError, match="must divide"):
        slot_states(x, gc, ys, h0, chunk, "ieee", group=3)
    with pytest.raises(ValueError, match="heads dividing"):
        slot_read(p, x, gc, ys, h[:, :1].expand(N, 3, *h.shape[2:]), chunk, "ieee")


@pytest.mark.parametrize("prec", ["ieee", "bf16"])
def test_slot_kernels_take_bf16_write_strengths(prec):
    # a bf16 prefill stores the write strengths x in bf16 (`slot_gates(..., s_dtype=...)`): the forward's slot kernels
    # (states in segments, logits, the output read-out with the merge, gentle and steep chunks) read them as the
    # float32 values they hold, so their results equal those from x in float32 bit for bit (under the interpreter
    # every product is "ieee": kernel_precision)
    N, H, M, D, chunk, E = 2, 2, 40, 9, 64, 128
    g = _gentle_and_steep_gates(N, E, H, M)
    x = (-torch.expm1(g)).bfloat16()
    gc = chunk_cumsum(g, chunk)
    q, k, v, o_win = (torch.randn(N, E, H, D, device=DEVICE).bfloat16() for _ in range(4))
    merge = WindowMerge(torch.randn(N, E, H, device=DEVICE), torch.ones(N, E, dtype=torch.int8, device=DEVICE), 0.3)
    flags = gentle_chunks(gc, chunk)
    assert flags.any() and not flags.all()
    outs = []
    for xs in (x, x.float()):
        (h_k, ht_k), (h_v, ht_v) = slot_states_pair(xs, gc, k, v, None, None, chunk, prec)
        z = slot_logits(q, xs, gc, k, h_k, chunk, prec, gentle=flags)
        o = slot_read(z, xs, gc, v, h_v, chunk, prec, gentle=flags, merge=merge, o_win=o_win, dtype=torch.bfloat16)
        outs.append((h_k.materialize(), h_v.materialize(), ht_k, ht_v, z, o))
    for a, b in zip(*outs):
        assert torch.equal(a, b)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_inputs_keep_float32_accuracy(dtype):
    # tf32x3 products of half inputs (bf16: a float32 operand split into two bf16 parts) against float32 products of
    # the same values: one bf16 part alone would be ~2e-3 off, plain tf32 ~5e-4
    N, E, H, M, D, chunk = 1, 4096, 4, 64, 128, 64
    g = F.logsigmoid(torch.randn(N, E, H, M, device="cuda")).div(8)
    s, gc = -torch.expm1(g), chunk_cumsum(g, chunk)
    q, y = (torch.randn(N, E, H, D, device="cuda", dtype=dtype) for _ in range(2))
    p = torch.softmax(torch.randn(N, E, H, M, device="cuda"), -1)
    h32, _ = slot_states(s, gc, y.float(), None, chunk, "ieee")
    h, _ = slot_states(s, gc, y, None, chunk, "tf32x3")
    rel = lambda a, b: ((a - b).norm() / b.norm()).item()  # noqa: E731
    # bf16 inputs get bf16 chunk states, rounded once each (slot_states): one rounding is up to 2^-9 ~ 2e-3 relative
    # per element, hence 4e-3 on the norm for bf16 (fp16 keeps float32 states). The products must then be exact up
    # to float32 on those states, so the float32 reference reads the same rounded states
    assert h.dtype == (torch.bfloat16 if dtype == torch.bfloat16 else torch.float32)
    assert rel(h.float(), h32) < (4e-3 if dtype == torch.bfloat16 else 1e-4)
    h32 = h32.to(h.dtype).float()
    z = slot_logits(q, s, gc, y, h, chunk, "tf32x3")
    z32 = slot_logits(q.float(), s, gc, y.float(), h32, chunk, "ieee")
    o = slot_read(p, s, gc, y, h, chunk, "tf32x3")
    o32 = slot_read(p, s, gc, y.float(), h32, chunk, "ieee")
    errs = {"logits": rel(z, z32), "read": rel(o, o32)}
    assert all(e < 1e-4 for e in errs.values()), errs


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_a_prefill_rounds_its_products_to_half_precision(dtype):
    # without gradients the operator asks for `dot_precision(dtype, grads=False)`: "bf16" rounds every float32
    # operand of bf16 inputs to bf16 once (one product each), "tf32" makes fp16's float32 x float32 products one tf32
    # product. Either stays far inside the half inputs' own rounding (chunk_nha run in bf16 is ~1.7e-3 off on the
    # output: benchmarks/results/emulate_bf16_rounding_cpu.txt), against float32 products of the same values
    prec = dot_precision(dtype, grads=False)
    assert prec == ("bf16" if dtype == torch.bfloat16 else "tf32") and dot_precision(dtype) == "tf32x3"
    N, E, H, M, D, chunk = 1, 4096, 4, 64, 128, 64
    g = F.logsigmoid(torch.randn(N, E, H, M, device="cuda")).div(8)
    s, gc = -torch.expm1(g), chunk_cumsum(g, chunk)
    q, y = (torch.randn(N, E, H, D, device="cuda", dtype=dtype) for _ in range(2))
    p = torch.softmax(torch.randn(N, E, H, M, device="cuda"), -1)
    rel = lambda a, b: ((a.float() - b.float()).norm() / b.float().norm()).item()  # noqa: E731
    h, ht = slot_states(s, gc, y, None, chunk, prec)
    h_ref, ht_ref = slot_states(s, gc, y, None, chunk, "tf32x3")
    assert h.dtype == h_ref.dtype
    errs = {"states": rel(h, h_ref), "final": rel(ht, ht_ref)}
    # the read-outs against float32 products over the same states, gentle and steep chunks
    h32 = h.float()
    steep = torch.zeros(N, E // chunk, H, dtype=torch.int8, device="cuda")
    assert gentle_chunks(gc, chunk).all()
    for name, flags in (("gentle", None), ("steep", steep)):
        z = slot_logits(q, s, gc, y, h, chunk, prec, gentle=flags)
        z32 = slot_logits(q.float(), s, gc, y.float(), h32, chunk, "ieee", gentle=flags)
        o = slot_read(p, s, gc, y, h, chunk, prec, gentle=flags)
        o32 = slot_read(p, s, gc, y.float(), h32, chunk, "ieee", gentle=flags)
        errs.update({f"logits {name}": rel(z, z32), f"read {name}": rel(o, o32)})
    print(dtype, {k: f"{v:.1e}" for k, v in errs.items()})
    # bf16: at most one bf16 unit (2^-8) on the norm, a rounding being at most half of one; fp16: "tf32" rounds both
    # operands of a float32 product to fp16's 10 mantissa bits, held to the operator's fp16 GPU tolerance (2e-3)
    limit = 2.0 ** -8 if dtype == torch.bfloat16 else 2e-3
    assert all(e < limit for e in errs.values()), errs


class _FakeBinary:
    def __init__(self):
        self.calls = []

    def __getitem__(self, grid):
        return lambda *args: self.calls.append((grid, args))


class _FakeKernel:
    """Stands for a `@triton.jit` kernel: `kernel[grid](...)` records the call and returns a fresh binary."""

    def __init__(self):
        self.calls, self.binaries = [], []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.calls.append((grid, args, kwargs))
            self.binaries.append(_FakeBinary())
            return self.binaries[-1]
        return launch


def test_compiled_launch_reuses_a_binary_per_specialization(monkeypatch):
    monkeypatch.setattr(common, "INTERPRETER", False)  # the interpreter never keeps a binary
    kernel = _FakeKernel()
    launch = CompiledLaunch(kernel)
    x, y = torch.zeros(8), torch.zeros(8, dtype=torch.bfloat16)
    consts = dict(A=4, B=2)
    launch((3, 2), (x, y), (0.5, 7), consts, num_warps=4)
    launch((5, 1), (x, y), (0.25, 9), consts, num_warps=4)  # same key: the kept binary, with a 3-D grid
    assert len(kernel.calls) == 1 and kernel.calls[0][1:] == ((x, y, 0.5, 7), dict(A=4, B=2, num_warps=4))
    assert kernel.binaries[0].calls == [((5, 1, 1), (x, y, 0.25, 9, 4, 2))]
    launch((1,), (x, x), (0.5, 7), consts, num_warps=4)  # another dtype
    launch((1,), (x, y), (0.5, 7), dict(A=8, B=2), num_warps=4)  # another constexpr
    launch((1,), (x, y), (0.5, 2**40), consts, num_warps=4)  # an int past int32
    launch((1,), (x, y), (0.5, 7), consts, num_warps=8)  # another option
    assert len(kernel.calls) == 5
    off = torch.zeros(9)[1:]  # 4 bytes off 16-byte alignment: Triton's own launch every time, never kept
    launch((1,), (off, y), (0.5, 7), consts, num_warps=4)
    launch((1,), (off, y), (0.5, 7), consts, num_warps=4)
    assert len(kernel.calls) == 7 and kernel.binaries[0].calls == [((5, 1, 1), (x, y, 0.25, 9, 4, 2))]
