"""The operator sets its own precision: float32 accumulation whatever the input dtype (NHA_SPEC section 5).

Inside a model trained under `torch.autocast`, the matrix products of the PyTorch paths would otherwise drop to
bf16 / fp16 (and fp16 cannot hold the -1e30 of a masked logit), so every public operator runs with autocast off;
its inputs keep the dtype they arrived in and its output comes back in that dtype.
"""
from __future__ import annotations

import functools

import torch


def without_autocast(fn):
    """Decorator for an operator whose first argument is `q`: run it with autocast disabled on q's device."""

    @functools.wraps(fn)
    def wrapper(q: torch.Tensor, *args, **kwargs):
        device = q.device.type if isinstance(q, torch.Tensor) else "cpu"
        if not (torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)):
            return fn(q, *args, **kwargs)  # nothing to turn off (entering the context costs ~10 us a call)
        with torch.autocast(device, enabled=False):
            return fn(q, *args, **kwargs)

    return wrapper
