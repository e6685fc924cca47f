"""The window path's kernels (window_attn.py) against banded softmax attention written in PyTorch (float64): the
output, the row log-sum-exp and the three gradients, for every query/key tile the launchers may pick.

N sequences, E time, HQ query heads, H key/value heads, K/V head dims, w window.
"""
from __future__ import annotations

import pytest
import torch

from nha.ops.triton import common
from nha.ops.triton.window_attn import window_backward, window_forward

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def _poison_outputs(monkeypatch):
    monkeypatch.setattr(common, "POISON_OUTPUTS", True)


def reference(q, k, v, valid, w, scale, do, dlse):
    """`(o, lse, dq, dk, dv)` in float64: query t attends the valid keys j with t - w < j <= t; a row with no key
    gets o = 0 and lse = -1e30. The gradients are those of `<o, do> + <lse, dlse>` (lse's over rows that see a key)."""
    q, k, v = (x.detach().double().requires_grad_() for x in (q, k, v))
    N, E, HQ, _ = q.shape
    G = HQ // k.shape[2]
    kk, vv = k.repeat_interleave(G, dim=2), v.repeat_interleave(G, dim=2)
    t = torch.arange(E, device=q.device)
    band = (t[None, :] <= t[:, None]) & (t[None, :] > t[:, None] - w)
    allowed = band[None, None] & valid.bool()[:, None, None, :]  # [N, 1, E, E]
    s = torch.einsum("nthk,njhk->nhtj", q, kk) * scale
    s = s.masked_fill(~allowed, float("-inf"))
    seen = allowed.any(-1)  # [N, 1, E]
    lse = torch.where(seen, torch.logsumexp(s.masked_fill(~seen[..., None], 0.0), dim=-1), torch.zeros(()).double())
    pr = torch.where(seen[..., None], torch.exp(s - lse[..., None]), torch.zeros(()).double())
    o = torch.einsum("nhtj,njhv->nthv", pr, vv)
    lse = lse.transpose(1, 2)  # [N, E, HQ]
    (o * do.double()).sum().add((lse * dlse.double() * seen.transpose(1, 2)).sum()).backward()
    lse = torch.where(seen.transpose(1, 2), lse, torch.full_like(lse, -1e30))
    return o.detach(), lse.detach(), q.grad, k.grad, v.grad


def _case(N, E, HQ, H, K, V, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=gen).to(DEVICE, dtype)  # noqa: E731
    valid = torch.rand(N, E, generator=gen) > 0.15
    valid[0, :3] = False  # the first rows see no key
    return rnd(N, E, HQ, K), rnd(N, E, H, K), rnd(N, E, H, V), valid.to(DEVICE), rnd(N, E, HQ, V), rnd(N, E, HQ)


def _check(q, k, v, valid, do, dlse, w, tol, **tiles):
    scale = q.shape[-1] ** -0.5
    o, lse = window_forward(q, k, v, valid.to(torch.int8), w, scale)
    delta = (do.float() * o).sum(-1) - dlse.float()
    dq, dk, dv = window_backward(q, k, v, valid.to(torch.int8), lse, delta, do, w, scale, **tiles)
    want = reference(q, k, v, valid, w, scale, do, dlse)
    seen = want[1] > -1e29
    assert torch.equal(lse > -1e29, seen)
    for name, got, ref in zip(("o", "lse", "dq", "dk", "dv"), (o, torch.where(seen, lse, 0), dq, dk, dv),
                              (want[0], torch.where(seen, want[1], 0), *want[2:])):
        err = ((got.double() - ref).norm() / ref.norm().clamp_min(1e-12)).item()
        assert err < tol, f"{name}: relative error {err:.2e} (limit {tol:.0e}), tiles {tiles}"


@pytest.mark.parametrize("w", [1, 5, 16, 40])
@pytest.mark.parametrize("HQ,H", [(2, 2), (4, 2)])
def test_window_kernels_match_banded_attention(w, HQ, H):
    # float32 under the interpreter (16-row tiles): band edges inside and across tiles, GQA, keys that are padding
    _check(*_case(2, 45, HQ, H, 8, 6, torch.float32), w, 1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_window_kernels_take_half_inputs(dtype):
    # half inputs (the operator's own): under the interpreter their products run on float32 copies (window_attn._dot),
    # on a GPU natively; the limit 1e-2 as the GPU tile grid's below (probabilities and dS rounded to the input dtype
    # before their products, which the float64 reference does not do)
    _check(*_case(2, 45, 4, 2, 8, 6, dtype), 5, 1e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("w", [1, 64, 100, 512])
@pytest.mark.parametrize("BM,BN,warps", [(64, 64, 4), (32, 64, 4), (16, 64, 4), (16, 64, 2)])
def test_gpu_dkdv_tiles(BM, BN, warps, w, dtype):
    # every dk/dv tile the sweep (tune_window_kernels.py) may pick, at D = 128 and GQA, against float64: query blocks
    # of 16 rows once gave wrong dk on an H200 when the kernel transposed its computed probabilities (wrong blocks
    # were 3e-2 to 1e-1 off). The limit 1e-2: the kernels round probabilities and dS to the input dtype before their
    # products, as FlashAttention does, up to 2^-8 relative per element in bf16; the float64 reference does not
    tiles = dict(dkdv_tiles=dict(BM=BM, BN=BN, num_warps=warps))
    _check(*_case(1, 1500, 4, 2, 128, 128, dtype), w, 1e-2, **tiles)
