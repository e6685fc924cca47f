"""How far would fla-style bf16 rounding move NHA from float32? Emulations for the Triton kernels' next step (fla's
gated slot attention keeps its chunk states, slot probabilities and in-chunk gated values in bf16).

Part 1, the PyTorch chunk path: the chunk states (forward, and their gradient in the backward), the in-chunk key
weights `exp(-G_j) s_j` and the slot probabilities p are rounded to bf16 (`Round`: forward and backward) inside
`chunk.SlotChunks`, everything else float32, on bf16 inputs; then each rounding point alone at the worst case.
Part 2, the Triton kernels themselves (under the interpreter on CPU, for real on a GPU), float32 throughout except
the chunk states of `slot_states` (which then makes the forward's pair too: `rounded_states_pair`), rounded to bf16
by torch between its two kernels (the interpreter's own bf16 conversion truncates instead of rounding to nearest):
the forward scans' states only; forward and reverse; forward with each chunk's sum rounded before the walk too.
Each row: the relative RMS error of the output and of every gradient against float32 `chunk_nha` on the same values;
part 1 also shows `chunk_nha` run on the bf16 inputs (the GPU tests' `half` baseline, which rounds its outputs to
bf16 too). The GPU tests' limit is max(2 x that baseline, 5e-3).

    PYTHONPATH=src python benchmarks/emulate_bf16_rounding.py [--part 1|2]   # part 1 ~1 min on CPU, part 2 ~20
"""
from __future__ import annotations

import argparse
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

import nha.ops.chunk as chunk  # noqa: E402
from nha.ops import chunk_nha  # noqa: E402
from nha.ops.testing import make_inputs, rel_rmse  # noqa: E402

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


def outputs_and_grads(x: dict, w, points: tuple[str, ...] = (), fn=None) -> dict[str, torch.Tensor]:
    """`o` and the gradients of a fixed random loss on o and the final slots, float32: `fn` (default `chunk_nha` with
    `points` rounded)."""
    RoundedSlotChunks.points = points
    original, chunk.SlotChunks = chunk.SlotChunks, RoundedSlotChunks
    try:
        o, state = (fn or chunk_nha)(x["q"], x["k"], x["v"], x["g"], w, q_win=x["q_win"], k_win=x["k_win"],
                                     output_final_state=True)
    finally:
        chunk.SlotChunks = original
    gen = torch.Generator().manual_seed(1)
    loss = sum((t.float().cpu() * torch.randn(t.shape, generator=gen)).sum()
               for t in (o, state.slot_k, state.slot_v))
    names = [n for n in ("q", "k", "v", "g", "q_win", "k_win") if x[n] is not None]
    grads = torch.autograd.grad(loss, [x[n] for n in names], allow_unused=True)
    return {"o": o.float(), **{f"d{n}": torch.zeros_like(x[n]) if g is None else g.float()
                               for n, g in zip(names, grads)}}


def rounded_slot_states(forward: bool, backward: bool, sums: bool):
    """`slot_states` with its chunk-start states rounded to bf16 (round to nearest, by torch) in the chosen scans
    (`forward`, `backward`: the reverse ones), and with `sums` each chunk's sum rounded before the walk too."""
    import triton  # noqa: PLC0415

    from nha.ops.triton import scan_states as ss  # noqa: PLC0415
    from nha.ops.triton import slot_chunk as sc  # noqa: PLC0415
    from nha.ops.triton.common import block, kernel_precision, new_output  # noqa: PLC0415

    def slot_states(x, gc, y, h0, chunk_len, prec, reverse=False, group=1, **_):
        chosen = backward if reverse else forward  # the backward's scans run in reverse
        if not (chosen and sums):  # the kernels' own scan (float32 here), its states rounded afterwards if chosen
            h, ht = ss.slot_states(x, gc, y, h0, chunk_len, prec, reverse=reverse, group=group)
            return (h.bfloat16().float() if chosen else h), ht
        N, E, HX, M = x.shape
        H, D = HX // group, y.shape[-1]
        BM, BD = sc._tiles(M, D)
        h = new_output(N, H, E // chunk_len, M, D, device=x.device)
        ht = new_output(N, H, M, D, device=x.device)
        y, y_rows, y_heads, y_shift, y_group = sc.source_rows(y, E, H)
        ss.chunk_sums_kernel[(triton.cdiv(D, BD), E // chunk_len, N * H)](
            x, gc, y, h, E, H, M, D, y_rows, y_heads, y_shift, y_group // group, BT=chunk_len, BM=BM, BD=BD,
            REVERSE=reverse, DOT_PREC=kernel_precision(prec), X_GROUP=group)
        h.copy_(h.bfloat16())  # each chunk's sum rounded before the walk
        width = min(512, block(M * D, least=1))
        ss.state_scan_kernel[(triton.cdiv(M * D, width), N * H)](gc, h0 if h0 is not None else ht, h, h, ht, E, H, M,
                                                                D, BT=chunk_len, BLOCK=width, HAS_H0=h0 is not None,
                                                                X_GROUP=group)
        return h.bfloat16().float(), ht

    return slot_states


def rounded_states_pair(rounded_slot_states):
    """`slot_states_pair` as two calls of a (rounded) `slot_states`, each's states as `ChunkStates` of one-chunk
    segments with empty start states (the read-outs then take every chunk's state as it is)."""
    from nha.ops.triton.slot_chunk import ChunkStates  # noqa: PLC0415

    def slot_states_pair(x, gc, y1, y2, h0_1, h0_2, chunk_len, prec, group=1, **_):
        pairs = []
        for y, h0 in ((y1, h0_1), (y2, h0_2)):
            h, ht = rounded_slot_states(x, gc, y, h0, chunk_len, prec, group=group)
            pairs.append((ChunkStates(h, torch.zeros_like(h), torch.zeros_like(h[..., 0]), 1), ht))
        return tuple(pairs)

    return slot_states_pair


def part2(device: str) -> None:
    from nha.ops.triton import slot_scan, triton_nha  # noqa: PLC0415

    variants = {"float32 kernels": None, "forward states": (True, False, False),
                "forward + reverse states": (True, True, False), "forward states and sums": (True, False, True)}
    for T, D, M, w in [(1024, 64, 16, 0), (1024, 64, 16, 64)]:
        print(f"Triton kernels, T={T} K=V={D} M={M} w={w} ({device}):")
        ref = outputs_and_grads(inputs(T, D, M, torch.float32, device), w)
        for name, rounding in variants.items():
            original = slot_scan.slot_states, slot_scan.slot_states_pair  # the reverse scans', the forward's
            if rounding is not None:
                slot_scan.slot_states = rounded_slot_states(*rounding)
                slot_scan.slot_states_pair = rounded_states_pair(slot_scan.slot_states)
            try:
                out = outputs_and_grads(inputs(T, D, M, torch.float32, device), w, fn=triton_nha)
            finally:
                slot_scan.slot_states, slot_scan.slot_states_pair = original
            errs = "  ".join(f"{n} {rel_rmse(out[n], ref[n]):.1e}" for n in ("o", "dq", "dk", "dv", "dg"))
            print(f"  {name:26s} {errs}", flush=True)


def inputs(T: int, D: int, M: int, dtype: torch.dtype, device: str = "cpu") -> dict:
    """bf16-valued inputs (B = 1, 4 query heads, 2 key/value heads) held in `dtype`, requiring gradients."""
    x = make_inputs(1, T, 4, 2, D, D, M, device=device, dtype=torch.bfloat16, seed=0)
    return {n: None if t is None else t.detach().to(dtype).requires_grad_() for n, t in x.items()}


def part1() -> None:
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", type=int, choices=(1, 2), help="run one part only")
    args = ap.parse_args()
    if args.part in (None, 1):
        part1()
    if args.part in (None, 2):
        part2("cuda" if torch.cuda.is_available() else "cpu")


if __name__ == "__main__":
    main()
