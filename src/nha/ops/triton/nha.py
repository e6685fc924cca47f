"""`triton_nha`: the chunkwise NHA operator (NHA_SPEC section 5) with every heavy stage in a Triton kernel.

B batch, T time, HQ query heads, H key/value heads, G = HQ // H, K/V head dims, M slots, w window, N sequences,
E extended time (initial window rows + longest sequence), Ep = E rounded up to the chunk BT.

Stages, each its own autograd.Function chained by PyTorch autograd:
  (a) slot pass 1 (slot_scan.SlotLogitsFunction) over the inputs shifted right by w -> logits z, final slot keys;
  (b) window path (window_attn.WindowAttentionFunction) -> o_win, lse_win;
  (c) merge (merge.MergeFunction): one softmax over the slot logits and lse_win -> p and the window's share a;
  (d) slot pass 2 (slot_scan.SlotReadFunction) on p -> the slot read-out, final slot values.
The layout work (varlen packing, the initial state's window rows, padding as identity steps) is chunk.py's `_extend`.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Optional

import torch

from nha.ops.checks import check_inputs
from nha.ops.chunk import MASKED, _extend, _final_state, _to_input_layout, chunk_nha
from nha.ops.precision import without_autocast
from nha.ops.state import NHAState
from nha.ops.triton.common import MAX_HEAD_DIM, MAX_SLOTS, SUPPORTED_DTYPES, chunk_cumsum, pad_time
from nha.ops.triton.decode import triton_nha_step
from nha.ops.triton.merge import MergeFunction
from nha.ops.triton.slot_chunk import dot_precision
from nha.ops.triton.slot_scan import SlotLogitsFunction, SlotReadFunction
from nha.ops.triton.window_attn import window_attention

CHUNK = 64


def supports(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor) -> bool:
    """Whether the kernels cover these inputs (dtype, head dims <= 256, M <= 128); else `triton_nha` falls back."""
    return (q.dtype in SUPPORTED_DTYPES and q.shape[-1] <= MAX_HEAD_DIM and v.shape[-1] <= MAX_HEAD_DIM
            and g.shape[-1] <= MAX_SLOTS and q.shape[1] > 0)


def _expand_heads(x: torch.Tensor, group: int, dim: int = 2) -> torch.Tensor:
    # GQA: the slot scan runs per query head, so key/value-head tensors are repeated G times (autograd sums back)
    return x if group == 1 else x.repeat_interleave(group, dim=dim)


def _shifted(x: torch.Tensor, by: int, length: int, group: int) -> torch.Tensor:
    """`[N, E, H, D]` -> `[N, length, H * group, D]`: rows moved `by` later (zeros in front and at the end), key/value
    heads repeated for GQA, in one contiguous copy."""
    N, E, H, D = x.shape
    out = x.new_zeros(N, length, H * group, D)
    if by < E:
        out[:, by:E] = _expand_heads(x[:, : E - by], group)
    return out


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
    q_win = q if q_win is None else q_win
    k_win = k if k_win is None else k_win
    acc = torch.float32
    w, M, G, K = window_size, shapes.num_slots, shapes.group, shapes.k_dim

    ext = _extend(q, k, v, g, q_win, k_win, shapes, cu_seqlens, initial_state, acc)
    N, E = ext.valid.shape
    row = torch.arange(E, device=q.device)
    if w is None or initial_state is None and w >= E:
        slots_live = ext.slots_live[:, None].expand(N, E)  # nothing ever leaves the window
    else:
        slots_live = ext.slots_live[:, None] | (row[None, :] - w >= ext.first_valid[:, None])
    use_slots = M > 0 and bool(slots_live.any())

    window = E if w is None else min(w, E)
    if window > 0:
        o_win, lse_win = window_attention(ext.q_win, ext.k_win, ext.v, ext.valid, window, scale)
    else:
        o_win = ext.q.new_zeros(N, E, shapes.q_heads, shapes.v_dim, dtype=acc)
        lse_win = ext.q.new_full((N, E, shapes.q_heads), MASKED, dtype=acc)

    slots = None
    if use_slots:
        Ep = -(-E // CHUNK) * CHUNK
        # token t - w enters the slots at step t (an unbounded window absorbs nothing: a shift past the end);
        # rows past a sequence's end stay identity steps
        by = E if w is None else w
        inside = torch.arange(Ep, device=q.device)[None, :] < (ext.prefix + ext.lengths)[:, None]
        k_in, v_in = _shifted(ext.k, by, Ep, G), _shifted(ext.v, by, Ep, G)
        g_in = _shifted(ext.g, by, Ep, G) * inside[:, :, None, None]
        s_in = -torch.expm1(g_in)  # write strength 1 - exp(g)
        no_state = initial_state is None
        h0_k = None if no_state else _expand_heads(ext.slot_k, G, dim=1).contiguous()
        h0_v = None if no_state else _expand_heads(ext.slot_v, G, dim=1).contiguous()
        # without gradients, one tf32 product instead of three (the forward's outputs stay well inside half
        # precision; the gradients, the gate's above all, need the tf32x3 products)
        prec = "tf32" if not grads and q.dtype != torch.float32 else dot_precision(q.dtype)

        gc = chunk_cumsum(g_in.detach(), CHUNK)  # both passes scan the same gates
        z, slot_k = SlotLogitsFunction.apply(pad_time(ext.q, Ep).contiguous(), s_in, g_in, k_in, h0_k, gc, CHUNK,
                                             prec)
        p, a = MergeFunction.apply(z, lse_win, slots_live, scale)
        o_slots, slot_v = SlotReadFunction.apply(p, s_in, g_in, v_in, h0_v, gc, CHUNK, prec)
        o_ext = a[:, :E, :, None] * o_win + o_slots[:, :E]
        if output_final_state:  # every query head of a group holds the same slots: keep the group's first
            final = torch.cat([slot_k, slot_v], dim=-1)
            final = final.view(N, shapes.kv_heads, G, *final.shape[2:])[:, :, 0]
            slots = SimpleNamespace(final_state=final)
    else:
        o_ext = o_win
    o = _to_input_layout(o_ext[:, ext.prefix:], shapes, cu_seqlens, ext.lengths).to(q.dtype)
    if not output_final_state:
        return o, None
    return o, _final_state(ext, w, shapes, slots, acc)
