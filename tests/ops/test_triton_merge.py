"""The merge kernel of the Triton path against the same softmax written in PyTorch: values and gradients.

N sequences, E time, Ep padded time, HQ query heads, M slots.
"""
from __future__ import annotations

import torch

from nha.ops.triton.merge import MASKED, MergeFunction

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
    N, E, Ep, HQ, M, scale = 2, 21, 32, 3, 5, 0.7
    z = torch.randn(N, Ep, HQ, M, generator=gen).to(DEVICE).requires_grad_()
    lse_win = torch.randn(N, E, HQ, generator=gen).to(DEVICE)
    lse_win[0, :4] = MASKED.value  # rows with an empty window: with no live slot either they see nothing
    lse_win.requires_grad_()
    live = (torch.rand(N, E, generator=gen) > 0.3).to(DEVICE)
    dp, da = torch.randn(N, Ep, HQ, M, generator=gen).to(DEVICE), torch.randn(N, Ep, HQ, generator=gen).to(DEVICE)

    p, a = MergeFunction.apply(z, lse_win, live, scale)
    grads = torch.autograd.grad((p * dp).sum() + (a * da).sum(), (z, lse_win))
    rp, ra = reference(z, lse_win, live, scale)
    ref_grads = torch.autograd.grad((rp * dp).sum() + (ra * da).sum(), (z, lse_win))

    torch.testing.assert_close(p, rp, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a, ra, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert torch.all(p[:, E:] == 0) and torch.all(a[:, E:] == 0)
