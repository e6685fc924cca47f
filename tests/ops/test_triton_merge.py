"""The merge kernels of the Triton path against the same softmax written in PyTorch: values, and the gradients of
the merge followed by the output `o = a * o_win + o_slots`.

N sequences, E time, Ep padded time, HQ query heads, M slots, V value dim.
"""
from __future__ import annotations

import torch

from nha.ops.triton.merge import MASKED, merge_backward, merge_forward

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def reference(z, lse_win, live, scale):
    """p `[N, Ep, HQ, M]` and the window's share a `[N, Ep, HQ]`, rows past E zero (the PyTorch formulation)."""
    E = lse_win.shape[1]
    zz = (scale * z[:, :E]).masked_fill(~live[:, :, None, None], MASKED.value)
    lse = torch.logaddexp(torch.logsumexp(zz, dim=-1), lse_win)
    sees = (live[..., None] | (lse_win > MASKED.value / 2)).float()  # rows that see nothing give p = a = 0
    p = torch.exp(zz - lse[..., None]) * sees[..., None]
    a = torch.exp(lse_win - lse) * sees
    pad = z.shape[1] - E
    return torch.nn.functional.pad(p, (0, 0, 0, 0, 0, pad)), torch.nn.functional.pad(a, (0, 0, 0, pad))


def test_merge_matches_pytorch_softmax():
    gen = torch.Generator().manual_seed(0)
    N, E, Ep, HQ, M, V, scale = 2, 21, 32, 3, 5, 7, 0.7
    z = torch.randn(N, Ep, HQ, M, generator=gen).to(DEVICE).requires_grad_()
    lse_win = torch.randn(N, E, HQ, generator=gen).to(DEVICE)
    lse_win[0, :4] = MASKED.value  # rows with an empty window: with no live slot either they see nothing
    lse_win.requires_grad_()
    live = (torch.rand(N, E, generator=gen) > 0.3).to(DEVICE)
    o_win = torch.randn(N, E, HQ, V, generator=gen).to(DEVICE)
    dp, do = torch.randn(N, Ep, HQ, M, generator=gen).to(DEVICE), torch.randn(N, E, HQ, V, generator=gen).to(DEVICE)
    live_i8 = live.to(torch.int8)

    p, a = merge_forward(z.detach(), lse_win.detach(), live_i8, scale)
    rp, ra = reference(z, lse_win, live, scale)
    torch.testing.assert_close(p, rp, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a, ra, rtol=1e-5, atol=1e-6)
    assert torch.all(p[:, E:] == 0) and torch.all(a[:, E:] == 0)

    # dp: what the slot read-out passes back to p; do: the output's gradient, reaching a through a * o_win
    loss = (rp * dp).sum() + (ra[:, :E, :, None] * o_win * do).sum()
    dz_ref, dlse_ref = torch.autograd.grad(loss, (z, lse_win))
    dz, delta, do_win, gate_term = merge_backward(p, dp.clone(), z.detach(), a, do, o_win, live_i8, scale)
    torch.testing.assert_close(dz, dz_ref, rtol=1e-4, atol=1e-6)
    # what the slot gates get back through z and p (rows past E included: p and dz are 0 there)
    torch.testing.assert_close(gate_term, dz_ref * z.detach() + p * dp, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(do_win, ra[:, :E, :, None] * do, rtol=1e-5, atol=1e-6)
    # the window path's backward takes rowsum(do_win * o_win) - dlse_win
    torch.testing.assert_close(delta, (do_win * o_win).sum(-1) - dlse_ref, rtol=1e-4, atol=1e-5)


def test_merge_backward_without_window():
    gen = torch.Generator().manual_seed(1)
    N, E, Ep, HQ, M, scale = 1, 10, 16, 2, 4, 1.3
    z = torch.randn(N, Ep, HQ, M, generator=gen).to(DEVICE).requires_grad_()
    lse_win = torch.full((N, E, HQ), MASKED.value, device=DEVICE)
    live = torch.ones(N, E, dtype=torch.bool, device=DEVICE)
    dp = torch.randn(N, Ep, HQ, M, generator=gen).to(DEVICE)
    p, a = merge_forward(z.detach(), lse_win, live.to(torch.int8), scale)
    rp, _ = reference(z, lse_win, live, scale)
    (dz_ref,) = torch.autograd.grad((rp * dp).sum(), (z,))
    dz, delta, do_win, gate_term = merge_backward(p, dp.clone(), z.detach(), a, torch.zeros(N, E, HQ, 3, device=DEVICE),
                                                  None, live.to(torch.int8), scale)
    torch.testing.assert_close(dz, dz_ref, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gate_term, dz_ref * z.detach() + p * dp, rtol=1e-4, atol=1e-6)
    assert delta is None and do_win is None
