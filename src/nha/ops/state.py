"""The state an NHA layer hands from one call to the next (chunked prefill, decoding).

N sequences, H key/value heads, M slots, K/V head dims, L window rows (w, or the tokens seen when w is None).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch


@dataclass
class NHAState:
    """Slots plus the window, per sequence. The window is a ring buffer: token ``p`` sits in row ``p % L``.

    Attributes:
        slot_k: `[N, H, M, K]` float32 slot keys.
        slot_v: `[N, H, M, V]` float32 slot values.
        window_k: `[N, L, H, K]` keys of the tokens still in the window (the ones absorbed into slots next).
        window_v: `[N, L, H, V]` their values.
        window_g: `[N, L, H, M]` their log forget gates, used when they leave the window.
        window_k_win: `[N, L, H, K]` their window-path keys (RoPE-rotated by the layer).
        seen: `[N]` int64, tokens consumed so far; rows ``seen - min(seen, L) .. seen - 1`` (mod L) are live.
        slots_live: `[N]` bool, slot logits take part in the softmax (something was absorbed or given).
    """

    slot_k: torch.Tensor
    slot_v: torch.Tensor
    window_k: torch.Tensor
    window_v: torch.Tensor
    window_g: torch.Tensor
    window_k_win: torch.Tensor
    seen: torch.Tensor
    slots_live: torch.Tensor

    @classmethod
    def empty(
        cls,
        num_seqs: int,
        num_heads: int,
        num_slots: int,
        head_k_dim: int,
        head_v_dim: int,
        window_size: Optional[int],
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> "NHAState":
        """The state before the first token: empty slots (masked) and an empty window of ``w`` rows (0 if ``w is
        None``)."""
        rows = 0 if window_size is None else window_size
        n, h, m = num_seqs, num_heads, num_slots
        z = lambda *shape, dt=dtype: torch.zeros(*shape, dtype=dt, device=device)  # noqa: E731
        return cls(
            slot_k=z(n, h, m, head_k_dim, dt=torch.float32),
            slot_v=z(n, h, m, head_v_dim, dt=torch.float32),
            window_k=z(n, rows, h, head_k_dim),
            window_v=z(n, rows, h, head_v_dim),
            window_g=z(n, rows, h, m),
            window_k_win=z(n, rows, h, head_k_dim),
            seen=torch.zeros(n, dtype=torch.long, device=device),
            slots_live=torch.zeros(n, dtype=torch.bool, device=device),
        )

    @classmethod
    def from_slots(cls, slot_k: torch.Tensor, slot_v: torch.Tensor, window_size: Optional[int]) -> "NHAState":
        """A state whose slots hold given content (live from the first token) and whose window is empty.

        Args:
            slot_k: `[N, H, M, K]`.
            slot_v: `[N, H, M, V]`.
        """
        n, h, m, k = slot_k.shape
        state = cls.empty(n, h, m, k, slot_v.shape[-1], window_size, dtype=slot_k.dtype, device=slot_k.device)
        return replace(state, slot_k=slot_k, slot_v=slot_v, slots_live=torch.ones_like(state.slots_live))

    @property
    def window_rows(self) -> int:
        return self.window_k.shape[1]

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """Every tensor, in field order (a decoding step calls this a few times: no `dataclasses.fields` walk)."""
        return (self.slot_k, self.slot_v, self.window_k, self.window_v, self.window_g, self.window_k_win, self.seen,
                self.slots_live)

    def map(self, fn) -> "NHAState":
        """Apply ``fn`` to every tensor (``state.map(lambda t: t.detach())``, ``.map(lambda t: t[idx])``)."""
        return NHAState(*(fn(t) for t in self.tensors()))

    def ordered_window(self) -> tuple[torch.Tensor, ...]:
        """The window rows oldest first and right-aligned: `(k, v, g, k_win, valid)`, each `[N, L, ...]`.

        Row ``r`` holds token ``seen - L + r``; ``valid[n, r]`` is False for rows before the sequence's first token.
        """
        rows = self.window_rows
        r = torch.arange(rows, device=self.seen.device)
        index = (r[None, :] + self.seen[:, None]) % max(rows, 1)  # [N, L]
        valid = r[None, :] >= rows - torch.clamp(self.seen[:, None], max=rows)

        def gather(t: torch.Tensor) -> torch.Tensor:
            idx = index.view(*index.shape, 1, 1).expand(-1, -1, *t.shape[2:])
            return torch.gather(t, 1, idx)

        return (*(gather(t) for t in (self.window_k, self.window_v, self.window_g, self.window_k_win)), valid)
