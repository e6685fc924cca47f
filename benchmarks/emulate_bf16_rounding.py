"""How far would fla-style precision move NHA from float32? A CPU emulation on `chunk_nha`, for the Triton kernels' next
step (fla's gated slot attention keeps its chunk states, slot probabilities and in-chunk gated values in bf16).

The chunk states (forward, and their gradient in the backward), the in-chunk key weights `exp(-G_j) s_j` and the slot
probabilities p are rounded to bf16 (`Round`: forward and backward) inside `chunk.SlotChunks`, everything else stays
float32, on bf16 inputs. Prints the relative RMS error of the output and of every gradient against float32
`chunk_nha` on the same inputs, next to `chunk_nha` run on the bf16 inputs (the GPU tests' `half` baseline, which
also rounds its outputs to bf16); the GPU tests' limit is max(2 x that, 5e-3). Then each rounding point alone at the
worst case. Not a kernel measurement: the kernels' own rounding points differ in detail.

    PYTHONPATH=src python benchmarks/emulate_bf16_rounding.py
"""
from __future__ import annotations

import torch

import nha.ops.chunk as chunk
from nha.ops import chunk_nha
from nha.ops.testing import make_inputs, rel_rmse

CASES = [(2048, 128, 64, 64), (2048, 64, 16, 0), (3000, 128, 64, 512), (4096, 128, 128, 1), (2048, 256, 64, 100)]
POINTS = ("states", "key_weight", "p")  # the rounding points


class Round(torch.autograd.Function):
    """bf16 rounding of a float32 tensor in the forward and of its gradient in the backward."""

    @staticmethod
    def forward(ctx, x):
        return x.bfloat16().float()

    @staticmethod
    def backward(ctx, grad):
        return grad.bfloat16().float()


class RoundedSlotChunks(chunk.SlotChunks):
    """`SlotChunks` with the chosen rounding points (class attribute `points`) rounded to bf16."""

    points: tuple[str, ...] = ()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if "states" in self.points:
            self.start_states = Round.apply(self.start_states)
        if "key_weight" in self.points and not self.exact:
            self.key_weight = Round.apply(self.key_weight)

    def read(self, p):
        return super().read(Round.apply(p) if "p" in self.points else p)


def outputs_and_grads(x: dict, w, points: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """`o` and the gradients of a fixed random loss on o and the final slots, float32, with `points` rounded."""
    RoundedSlotChunks.points = points
    original, chunk.SlotChunks = chunk.SlotChunks, RoundedSlotChunks
    try:
        o, state = chunk_nha(x["q"], x["k"], x["v"], x["g"], w, q_win=x["q_win"], k_win=x["k_win"],
                             output_final_state=True)
    finally:
        chunk.SlotChunks = original
    gen = torch.Generator().manual_seed(1)
    loss = sum((t.float() * torch.randn(t.shape, generator=gen)).sum() for t in (o, state.slot_k, state.slot_v))
    names = [n for n in ("q", "k", "v", "g", "q_win", "k_win") if x[n] is not None]
    grads = torch.autograd.grad(loss, [x[n] for n in names], allow_unused=True)
    return {"o": o.float(), **{f"d{n}": torch.zeros_like(x[n]) if g is None else g.float()
                               for n, g in zip(names, grads)}}


def inputs(T: int, D: int, M: int, dtype: torch.dtype) -> dict:
    """bf16-valued inputs (B = 1, 4 query heads, 2 key/value heads) held in `dtype`, requiring gradients."""
    x = make_inputs(1, T, 4, 2, D, D, M, device="cpu", dtype=torch.bfloat16, seed=0)
    return {n: None if t is None else t.detach().to(dtype).requires_grad_() for n, t in x.items()}


def main() -> None:
    for T, D, M, w in CASES:
        ref = outputs_and_grads(inputs(T, D, M, torch.float32), w, ())
        half = outputs_and_grads(inputs(T, D, M, torch.bfloat16), w, ())
        rounded = outputs_and_grads(inputs(T, D, M, torch.float32), w, POINTS)
        print(f"T={T} K=V={D} M={M} w={w}")
        for n in ref:
            e_half, e_round = rel_rmse(half[n], ref[n]), rel_rmse(rounded[n], ref[n])
            print(f"  {n:7s} chunk_nha-in-bf16 {e_half:.2e}   bf16-states/p/weights {e_round:.2e}   "
                  f"limit {max(2 * e_half, 5e-3):.1e}")
    T, D, M, w = CASES[1]
    print(f"one rounding point at a time, T={T} K=V={D} M={M} w={w}:")
    ref = outputs_and_grads(inputs(T, D, M, torch.float32), w, ())
    for point in POINTS:
        rounded = outputs_and_grads(inputs(T, D, M, torch.float32), w, (point,))
        err = {n: rel_rmse(t, ref[n]) for n, t in rounded.items()}
        print(f"  {point:10s} dg {err['dg']:.2e}  dq {err['dq']:.2e}  o {err['o']:.2e}")


if __name__ == "__main__":
    main()
