"""`nha_attention`: the entry point layers call; it picks the fastest correct implementation for the inputs.

B batch, T time, HQ query heads, H key/value heads, K/V head dims, M slots.
"""
from __future__ import annotations

import importlib.util
from functools import lru_cache, partial
from typing import Optional

import torch

from nha.ops.chunk import chunk_nha
from nha.ops.naive import naive_recurrent_nha
from nha.ops.recurrent import recurrent_nha_step
from nha.ops.state import NHAState

BACKENDS = ("auto", "naive", "chunk", "recurrent", "triton")


@lru_cache(maxsize=None)
def triton_available() -> bool:
    """Triton kernels run on CUDA tensors when triton imports and a GPU is present."""
    return importlib.util.find_spec("triton") is not None and torch.cuda.is_available()


def pick_backend(q: torch.Tensor, initial_state: Optional[NHAState], cu_seqlens) -> str:
    if q.is_cuda and triton_available():
        from nha.ops import triton as triton_ops  # noqa: PLC0415  (imports triton only when a GPU is used)

        if triton_ops.available():
            return "triton"
    if q.shape[1] == 1 and initial_state is not None and cu_seqlens is None:
        return "recurrent"
    return "chunk"


def nha_attention(
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
    backend: str = "auto",
    check_gates: bool = True,
    save_states: bool = True,
) -> tuple[torch.Tensor, Optional[NHAState]]:
    """Native Hybrid Attention with the fastest correct implementation for these inputs.

    Args:
        q: `[B, T, HQ, K]`, k: `[B, T, H, K]`, v: `[B, T, H, V]`, g: `[B, T, H, M]` log forget gates (`<= 0`).
        window_size: `w >= 0`, or None for an unbounded window (full causal attention).
        q_win, k_win, scale, initial_state, output_final_state, cu_seqlens: as in `naive_recurrent_nha`.
        backend: "auto" (Triton kernels on CUDA, the decoding step for one token over a state, else the chunk
            path), or one of "naive", "chunk", "recurrent", "triton" to force it.
        check_gates: check that g holds no NaN and nothing > 0. On CUDA that reads g back to the host (a sync per
            call); callers whose gates are `<= 0` by construction (the layer) pass False.
        save_states: Triton backend with gradients: keep the slot path's intermediates for the backward (False:
            recompute them there, bit-identical: a third of the memory kept between forward and backward, a slower
            backward; `triton_nha`'s argument). The other backends keep what PyTorch's autograd keeps.

    Returns:
        `o` `[B, T, HQ, V]` and the final `NHAState` (None unless `output_final_state`).

    Example:
        >>> o, state = nha_attention(q, k, v, g, window_size=64, output_final_state=True)
        >>> o_next, state = nha_attention(q1, k1, v1, g1, 64, initial_state=state, output_final_state=True)
    """
    if backend not in BACKENDS:
        raise ValueError(f"`backend` must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend = pick_backend(q, initial_state, cu_seqlens)
    kwargs = dict(q_win=q_win, k_win=k_win, scale=scale, check_gates=check_gates)
    if backend == "recurrent":
        if initial_state is None:
            shapes = (q.shape[0], k.shape[2], g.shape[-1], k.shape[-1], v.shape[-1])
            initial_state = NHAState.empty(*shapes, window_size, dtype=k.dtype, device=q.device)
        if cu_seqlens is not None:
            raise ValueError("the recurrent backend takes a dense batch of one token per sequence, not `cu_seqlens`")
        o, state = recurrent_nha_step(q, k, v, g, window_size, initial_state, **kwargs)
        return o, state if output_final_state else None
    fn = {"naive": naive_recurrent_nha, "chunk": chunk_nha}.get(backend)
    if fn is None:
        if not (q.is_cuda and triton_available()):
            raise ValueError("the triton backend needs CUDA tensors and an installed triton")
        from nha.ops.triton import triton_nha  # noqa: PLC0415

        fn = partial(triton_nha, save_states=save_states)
    return fn(q, k, v, g, window_size, initial_state=initial_state, output_final_state=output_final_state,
              cu_seqlens=cu_seqlens, **kwargs)
