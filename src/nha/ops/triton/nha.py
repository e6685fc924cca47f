"""`triton_nha`: the chunkwise NHA operator (NHA_SPEC section 5) with every heavy stage in a Triton kernel.

B batch, T time, HQ query heads, H key/value heads, G = HQ // H, K/V head dims, M slots, w window, N sequences,
E extended time (initial window rows + longest sequence); the slot scan runs over E rounded up to CHUNK.

One autograd Function (function.py's NHAFunction) runs every stage's kernels, forward and backward:
  the window path (window_attn.py) -> o_win, lse_win; the scan gates (gates.py: shifted by w, masked, per query
  head); slot pass 1 over keys shifted right by w -> logits z, final slot keys; the merge (merge.py): one softmax
  over the slot logits and lse_win -> p and the window's share a; slot pass 2 on p, whose epilogue writes
  o = a * o_win + S^T p -> the output, final slot values.
The layout work (varlen packing, the initial state's window rows, padding as identity steps) is chunk.py's `_extend`.
"""
from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace
from typing import Optional

import torch

from nha.ops.checks import check_inputs
from nha.ops.chunk import _extend, _final_state, _to_input_layout, chunk_nha, clamp_gates
from nha.ops.precision import without_autocast
from nha.ops.state import NHAState
from nha.ops.triton.common import MAX_HEAD_DIM, MAX_SLOTS, SUPPORTED_DTYPES
from nha.ops.triton.decode import triton_nha_step
from nha.ops.triton.function import NHAFunction, Plan
from nha.ops.triton.slot_chunk import dot_precision

CHUNK = 64


def supports(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor) -> bool:
    """Whether the kernels cover these inputs (dtype, head dims <= 256, M <= 128); else `triton_nha` falls back."""
    return (q.dtype in SUPPORTED_DTYPES and q.shape[-1] <= MAX_HEAD_DIM and v.shape[-1] <= MAX_HEAD_DIM
            and g.shape[-1] <= MAX_SLOTS and q.shape[1] > 0)


@without_autocast
def triton_nha(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    window_size: Optional[int],
    *,
    q_win: Optional[torch.Tensor] = None,
    k_win: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
    initial_state: Optional[NHAState] = None,
    output_final_state: bool = False,
    cu_seqlens: Optional[torch.Tensor] = None,
    check_gates: bool = True,
    save_states: bool = True,
) -> tuple[torch.Tensor, Optional[NHAState]]:
    """Native Hybrid Attention with Triton kernels; same arguments, results and gradients as `chunk_nha`.

    Float32 inputs are computed in float32 throughout; float16/bfloat16 inputs accumulate in float32. Inputs the
    kernels do not cover (float64, head dims > 256, M > 128, T == 0) run `chunk_nha` instead. One token per
    sequence over an initial state with no `cu_seqlens` and no gradients is a decoding step: `triton_nha_step`.

    Args:
        q: `[B, T, HQ, K]` slot-path queries; k: `[B, T, H, K]`; v: `[B, T, H, V]`; g: `[B, T, H, M]` (`<= 0`).
        window_size: `w >= 0`, or None (unbounded: causal attention, the slots only hold an initial state).
        q_win: `[B, T, HQ, K]`, k_win: `[B, T, H, K]` window-path queries/keys (default q, k).
        scale: logit scale of both paths (default `K ** -0.5`).
        initial_state: `NHAState` with one entry per sequence; output_final_state: return the final `NHAState`.
        cu_seqlens: `[N + 1]` offsets of N sequences packed in a `B == 1` batch.
        check_gates: check that g holds no NaN and nothing > 0 (on CUDA that reads g back: a host sync).
        save_states: with gradients, keep for the backward the slot scans' chunk-start states (`[N, H, T / 64, M,
            K + V]`, one per key/value head, bf16 for half inputs), two in-chunk tensors of the forward (the output
            read's weights and the logits' q . k products, `[N, T, HQ, 64]` float32 each, written for steep chunks
            only: `slot_chunk.gentle_chunks`), the scan's gates (three
            `[N, T, HQ, M]` float32) and the slot probabilities (one more): faster. False recomputes them all in the
            backward (the same results, bit for bit): the low-memory mode.

    Returns:
        `o` `[B, T, HQ, V]` in the input dtype, and the final `NHAState` (or None).

    Example:
        >>> q, k, v = (torch.randn(1, 4096, 16, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        >>> g = torch.nn.functional.logsigmoid(torch.randn(1, 4096, 16, 64, device="cuda")).div(8).bfloat16()
        >>> o, state = triton_nha(q, k, v, g, window_size=64, output_final_state=True)
    """
    shapes = check_inputs(q, k, v, g, window_size, q_win, k_win, initial_state, cu_seqlens, check_gates)
    if not supports(q, k, v, g):
        return chunk_nha(q, k, v, g, window_size, q_win=q_win, k_win=k_win, scale=scale, initial_state=initial_state,
                         output_final_state=output_final_state, cu_seqlens=cu_seqlens, check_gates=False)
    grads = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v, g, q_win, k_win))
    if shapes.time == 1 and initial_state is not None and cu_seqlens is None and not grads:
        o, state = triton_nha_step(q, k, v, g, window_size, initial_state, q_win=q_win, k_win=k_win, scale=scale,
                                   check_gates=False)
        return o, state if output_final_state else None
    scale = shapes.k_dim ** -0.5 if scale is None else scale
    w, M, G = window_size, shapes.num_slots, shapes.group
    ext = _extend(q, k, v, g, q if q_win is None else q_win, k if k_win is None else k_win, shapes, cu_seqlens,
                  initial_state, torch.float32, raw_gates=True)
    N, E = ext.valid.shape
    row = torch.arange(E, device=q.device)
    if w is None or initial_state is None and w >= E:
        slots_live = ext.slots_live[:, None].expand(N, E)  # nothing ever leaves the window
    else:
        slots_live = ext.slots_live[:, None] | (row[None, :] - w >= ext.first_valid[:, None])
    # whether the slot path runs, from shapes alone (reading slots_live back would be a host sync per call): an
    # initial state may hold slots; without one, a token reaches them w steps after it came. When this says yes and
    # no row turns out live (packed sequences all within the window), every slot logit is masked: same result.
    use_slots = M > 0 and (initial_state is not None or (w is not None and shapes.time > w))
    plan = Plan(
        valid_i8=ext.valid.to(torch.int8).contiguous(),
        live_i8=slots_live.to(torch.int8).contiguous(),
        ends=(ext.prefix + ext.lengths).contiguous(),
        window=E if w is None else min(w, E),
        # token t - w enters the slots at step t (an unbounded window absorbs nothing: a shift past the end)
        shift=E if w is None else w,
        use_slots=use_slots,
        group=G,
        length=-(-E // CHUNK) * CHUNK,
        chunk=CHUNK,
        scale=scale,
        # without gradients, one half-precision product where a backward needs tf32x3's near-float32 ones
        prec=dot_precision(q.dtype, grads),
        save_states=save_states and grads,
        backward=grads,
    )
    h0_k, h0_v = (None, None) if initial_state is None else (ext.slot_k, ext.slot_v)
    # the window path shares q (and k, unless the state's window rows hold separate window keys): one gradient each
    share_k = k_win is None and ext.prefix == 0
    o_ext, final_k, final_v = NHAFunction.apply(
        ext.q.contiguous(), ext.k.contiguous(), ext.v.contiguous(), ext.g.contiguous(),
        None if q_win is None else ext.q_win.contiguous(), None if share_k else ext.k_win.contiguous(),
        h0_k, h0_v, plan)
    o = _to_input_layout(o_ext[:, ext.prefix:], shapes, cu_seqlens, ext.lengths)
    if not output_final_state:
        return o, None
    slots = None
    if final_k is not None:  # one per key/value head (a group's query heads share their slots)
        slots = SimpleNamespace(final_state=torch.cat([final_k, final_v], dim=-1))
    ext = replace(ext, g=clamp_gates(ext.g, ext.valid, torch.float32))  # the window rows keep clamped gates
    return o, _final_state(ext, w, shapes, slots, torch.float32)
