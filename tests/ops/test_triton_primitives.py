"""The Triton building blocks of the slot path, each against a PyTorch formula: the gate kernels (gates.py), the
chunk-start states and the slot read-outs' half-precision products (slot_chunk.py).

N sequences, E time, H heads, M slots, D head dim.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nha.ops.triton.common import chunk_cumsum
from nha.ops.triton.gates import gate_grad, reverse_chunk_cumsum
from nha.ops.triton.slot_chunk import slot_logits, slot_read, slot_states

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("M", [5, 16])
def test_reverse_chunk_cumsum_is_the_flipped_scans_cumsum(M):
    N, E, H, chunk = 2, 128, 3, 64
    g = torch.randn(N, E, H, M, device=DEVICE)
    flipped = torch.flip(g, dims=[1])
    g_rev = torch.cat([torch.zeros_like(flipped[:, :1]), flipped[:, :-1]], dim=1)  # g'_u = g_(E-u), g'_0 = 0
    torch.testing.assert_close(reverse_chunk_cumsum(g, chunk), chunk_cumsum(g_rev, chunk), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("with_final", [False, True])
def test_gate_grad_is_the_reverse_cumsum_of_the_gate_terms(with_final):
    N, E, H, M, chunk = 2, 192, 2, 7, 64
    a, b, s, ds = (torch.randn(N, E, H, M, device=DEVICE) for _ in range(4))
    final = torch.randn(N, H, M, device=DEVICE) if with_final else None
    dG = a * b - s * ds
    if with_final:
        dG[:, -1] += final
    expected = torch.flip(torch.cumsum(torch.flip(dG, dims=[1]), dim=1), dims=[1])
    torch.testing.assert_close(gate_grad(a, b, s, ds, chunk, final), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("with_h0", [False, True])
def test_slot_states_are_the_recurrence_at_every_chunk_start(with_h0):
    # 40 chunks of 4: the walk's blocks of 16 chunks, a partial last block, the carried state between blocks
    N, E, H, M, D, chunk = 1, 160, 2, 3, 5, 4
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
    h, ht = slot_states(x, chunk_cumsum(g, chunk), y, h0, chunk, "ieee", scan_block=16)
    torch.testing.assert_close(h, torch.stack(starts, 2), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ht, S, rtol=1e-5, atol=1e-5)


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
    z = slot_logits(q, s, gc, y, h, chunk, "tf32x3")
    z32 = slot_logits(q.float(), s, gc, y.float(), h32, chunk, "ieee")
    o = slot_read(p, s, gc, y, h, chunk, "tf32x3")
    o32 = slot_read(p, s, gc, y.float(), h32, chunk, "ieee")
    errs = {"states": rel(h, h32), "logits": rel(z, z32), "read": rel(o, o32)}
    assert all(e < 1e-4 for e in errs.values()), errs
