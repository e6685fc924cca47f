"""Inference-time window search: per-layer windows under a decoding-state budget, chosen on calibration loss.

Every NHA layer is the same module whatever its window (NHA_SPEC section 4), so windows can be reassigned after
training with no new weights (the paper's "architectural duality"): a layer with slots can become full attention
(`None`), a wider or narrower hybrid, or pure GSA (`0`); a layer without slots can become sliding-window attention.
The search walks single-layer changes over a candidate set, scoring each layout by its loss on a small calibration
set, and keeps the best layout that fits the budget.
L layers, N calibration rows, T calibration length, S decoding context.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from nha.ops.state import NHAState

Layout = tuple[Optional[int], ...]
DEFAULT_CANDIDATES: tuple[Optional[int], ...] = (0, 16, 64, 256, None)


def _attn(model):
    return [layer.self_attn for layer in model.model.layers]


def current_layout(model) -> Layout:
    """The window of every layer now (`None` = full attention)."""
    return tuple(a.window_size for a in _attn(model))


def _check_layout(model, layout: Sequence[Optional[int]]) -> Layout:
    attns = _attn(model)
    if len(layout) != len(attns):
        raise ValueError(f"a layout needs one window per layer: the model has {len(attns)} layers, got {len(layout)}")
    for i, (w, a) in enumerate(zip(layout, attns)):
        if w is not None and (isinstance(w, bool) or not isinstance(w, int) or w < 0):
            raise ValueError(f"window of layer {i} must be an int >= 0 or None (full attention), got {w!r}")
        if w == 0 and a.num_slots == 0:
            raise ValueError(f"layer {i} has no slots (it was trained without a gate projection): window 0 would "
                             "leave it nothing to attend to")
    return tuple(layout)


def apply_windows(model, layout: Sequence[Optional[int]]) -> None:
    """Set each layer's window in place (no weights change) and record the layout in the config, so `generate`
    builds the matching cache and `save_pretrained` writes it.

    Example:
        >>> apply_windows(model, [64, None, 64, 0])
    """
    layout = _check_layout(model, layout)
    for a, w in zip(_attn(model), layout):
        a.window_size = w
    model.config.window_size = list(layout)
    # per-layer slots as the modules hold them: a layer built without slots stays without them when reloaded
    model.config.num_slots = [a.num_slots for a in _attn(model)]


def layer_state_bytes(model, layer_idx: int, window: Optional[int], context_len: int) -> int:
    """Decoding-state bytes of one layer after `context_len` tokens (batch 1), as `NHACache.memory_bytes` counts:
    a key/value cache of `context_len` tokens for full attention, else the constant NHA state."""
    a = _attn(model)[layer_idx]
    dtype = next(model.parameters()).dtype
    itemsize = torch.empty(0, dtype=dtype).element_size()
    if window is None:
        return 2 * context_len * a.num_kv_heads * a.head_dim * itemsize
    state = NHAState.empty(1, a.num_kv_heads, a.num_slots, a.head_dim, a.head_dim, window, dtype=dtype, device="meta")
    return sum(t.numel() * t.element_size() for t in state.tensors())


def state_bytes(model, layout: Sequence[Optional[int]], context_len: int) -> int:
    """Decoding-state bytes of the whole model under `layout` after `context_len` tokens (batch 1)."""
    return sum(layer_state_bytes(model, i, w, context_len) for i, w in enumerate(layout))


@torch.no_grad()
def measured_state_bytes(model, context_len: int) -> int:
    """Bytes the model's `NHACache` really holds after a prefill of `context_len` random tokens (batch 1)."""
    ids = torch.randint(0, model.config.vocab_size, (1, context_len), device=next(model.parameters()).device)
    return model(ids, use_cache=True).past_key_values.memory_bytes()


@torch.no_grad()
def calibration_loss(model, input_ids: torch.Tensor, *, batch_size: int = 8) -> float:
    """Mean next-token cross-entropy (nats) of the model over `input_ids` `[N, T]`."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for i in range(0, input_ids.shape[0], batch_size):
            ids = input_ids[i:i + batch_size].to(device)
            logits = model(ids, use_cache=False).logits[:, :-1].float()
            total += float(F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="sum"))
            count += ids[:, 1:].numel()
    finally:
        model.train(was_training)
    return total / count


@dataclass
class Point:
    """One evaluated layout."""

    layout: Layout
    loss: float
    state_bytes: int
    full_layers: int
    fits: bool


@dataclass
class SearchResult:
    """The start and the chosen layout, and every layout the search evaluated (the trade-off cloud)."""

    start: Point
    best: Point
    evaluated: list[Point] = field(default_factory=list)
    max_state_bytes: Optional[int] = None
    max_full_layers: Optional[int] = None
    context_len: int = 0

    def frontier(self) -> list[Point]:
        """Pareto front of the evaluated layouts: no other layout has both fewer state bytes and lower loss."""
        front, best_loss = [], math.inf
        for p in sorted(self.evaluated, key=lambda p: (p.state_bytes, p.loss)):
            if p.loss < best_loss:
                front.append(p)
                best_loss = p.loss
        return front


def search_windows(model, calib_ids: torch.Tensor, *, max_state_bytes: Optional[int] = None,
                   max_full_layers: Optional[int] = None, candidates: Sequence[Optional[int]] = DEFAULT_CANDIDATES,
                   context_len: int = 4096, beam_width: int = 1, max_evals: int = 400, batch_size: int = 8,
                   apply: bool = True) -> SearchResult:
    """Find per-layer windows with the lowest calibration loss whose decoding state fits a budget.

    Phase 1 (only when the starting layout is over budget): from the start, take the single-layer changes that
    shrink the excess over the budget at the least loss increase per unit of excess removed, keeping the
    `beam_width` best layouts, until one fits. Phase 2: local search among layouts that fit: every single-layer
    change is scored, the `beam_width` lowest-loss layouts are kept, until the beam stops changing. The result is
    the lowest-loss fitting layout evaluated, so when the start fits it is never worse than the start.

    Args:
        model: an `NHAForCausalLM`; its windows are changed in place during the search.
        calib_ids: `[N, T]` calibration tokens (T longer than the windows, or the windows cannot matter).
        max_state_bytes: budget on `state_bytes(..., context_len)` (batch 1); None = no byte budget.
        max_full_layers: budget on the number of full-attention layers; None = no such budget.
        candidates: windows a layer may take (each layer's own current window is always added; 0 is skipped
            for layers without slots).
        context_len: S, the decoding context at which state bytes are counted (full layers grow with it).
        beam_width: layouts kept per step (1 = greedy).
        max_evals: stop after this many loss evaluations (distinct layouts).
        batch_size: calibration rows per forward.
        apply: leave the chosen layout on the model (else restore the start).

    Returns:
        `SearchResult`; `result.best.layout` is the chosen layout.

    Example:
        >>> res = search_windows(model, ids, max_full_layers=1, candidates=(0, 32, 128, None))
        >>> res.best.layout, res.best.loss, res.start.loss
    """
    if max_state_bytes is None and max_full_layers is None:
        raise ValueError("give a budget: max_state_bytes, max_full_layers, or both")
    if max_state_bytes is not None and max_state_bytes <= 0:
        raise ValueError(f"max_state_bytes must be positive, got {max_state_bytes}")
    if max_full_layers is not None and max_full_layers < 0:
        raise ValueError(f"max_full_layers must be >= 0, got {max_full_layers}")
    if beam_width < 1 or max_evals < 1 or context_len < 1:
        raise ValueError("beam_width, max_evals and context_len must be positive")
    if calib_ids.dim() != 2 or calib_ids.shape[1] < 2:
        raise ValueError(f"calib_ids must be [rows, tokens] with at least 2 tokens, got {tuple(calib_ids.shape)}")
    for w in candidates:
        if w is not None and (isinstance(w, bool) or not isinstance(w, int) or w < 0):
            raise ValueError(f"candidate windows must be ints >= 0 or None, got {w!r}")
    start_layout = current_layout(model)
    attns = _attn(model)
    options = [sorted({w for w in (*candidates, start_layout[i]) if not (w == 0 and a.num_slots == 0)},
                      key=lambda w: math.inf if w is None else w) for i, a in enumerate(attns)]
    layer_bytes = [{w: layer_state_bytes(model, i, w, context_len) for w in opts} for i, opts in enumerate(options)]

    def nbytes(layout):
        return sum(layer_bytes[i][w] for i, w in enumerate(layout))

    def excess(layout):
        b = 0.0 if max_state_bytes is None else max(0, nbytes(layout) - max_state_bytes) / max_state_bytes
        f = 0 if max_full_layers is None else max(0, sum(w is None for w in layout) - max_full_layers)
        return b + f

    smallest = tuple(min(opts, key=lambda w, i=i: (layer_bytes[i][w], w is None)) for i, opts in enumerate(options))
    fewest_full = tuple(next((w for w in opts if w is not None), None) for opts in options)
    if max_state_bytes is not None and nbytes(smallest) > max_state_bytes:
        raise ValueError(f"budget of {max_state_bytes} state bytes is below the smallest layout the candidates allow "
                         f"({nbytes(smallest)} bytes at context {context_len}): raise it or add smaller windows")
    if max_full_layers is not None and sum(w is None for w in fewest_full) > max_full_layers:
        raise ValueError(f"at most {max_full_layers} full-attention layers asked, but the candidates leave "
                         f"{sum(w is None for w in fewest_full)} layers no finite window: add finite candidates")

    cache: dict[Layout, Point] = {}

    def evaluate(layout: Layout) -> Point:
        if layout not in cache:
            apply_windows(model, layout)
            loss = calibration_loss(model, calib_ids, batch_size=batch_size)
            cache[layout] = Point(layout, loss, nbytes(layout), sum(w is None for w in layout), excess(layout) == 0)
        return cache[layout]

    def neighbours(layout: Layout):
        for i, opts in enumerate(options):
            for w in opts:
                if w != layout[i]:
                    yield layout[:i] + (w,) + layout[i + 1:]

    try:
        start = evaluate(start_layout)
        beam = [start]
        # phase 1: shrink the excess at the least loss per unit removed
        while not any(p.fits for p in beam) and len(cache) < max_evals:
            scored = []
            for p in beam:
                for nb in neighbours(p.layout):
                    gain = excess(p.layout) - excess(nb)
                    if gain > 0 and len(cache) < max_evals:
                        q = evaluate(nb)
                        scored.append(((q.loss - p.loss) / gain, q.loss, q))
            if not scored:
                break
            scored.sort(key=lambda s: (s[0], s[1]))
            beam = list({s[2].layout: s[2] for s in scored[:beam_width]}.values())
        fitting = [p for p in beam if p.fits]
        if not fitting:
            # the evaluation cap ran out first: finish with the smallest layout, which fits (checked above)
            fitting = [evaluate(smallest if excess(smallest) == 0 else fewest_full)]
            if not fitting[0].fits:
                raise ValueError("no layout from the candidates meets both budgets at once: loosen one of them")
        # phase 2: local search among fitting layouts
        beam = sorted(fitting, key=lambda p: p.loss)[:beam_width]
        while len(cache) < max_evals:
            pool = {p.layout: p for p in beam}
            for p in beam:
                for nb in neighbours(p.layout):
                    if len(cache) >= max_evals:
                        break
                    if excess(nb) == 0:
                        pool[nb] = evaluate(nb)
            new_beam = sorted(pool.values(), key=lambda p: p.loss)[:beam_width]
            if [p.layout for p in new_beam] == [p.layout for p in beam]:
                break
            beam = new_beam
        best = min((p for p in cache.values() if p.fits), key=lambda p: p.loss)
    finally:
        apply_windows(model, start_layout)
    if apply:
        apply_windows(model, best.layout)
    return SearchResult(start, best, list(cache.values()), max_state_bytes, max_full_layers, context_len)


def plot_tradeoff(result: SearchResult, path: str) -> None:
    """Scatter of every evaluated layout (state MiB vs calibration loss), its Pareto front, start, choice, budget."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    mib = 1 / 2 ** 20
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    pts = result.evaluated
    ax.scatter([p.state_bytes * mib for p in pts], [p.loss for p in pts], s=12, c="0.7", label="evaluated layouts")
    front = result.frontier()
    ax.plot([p.state_bytes * mib for p in front], [p.loss for p in front], "-o", ms=4, c="C0", label="Pareto front")
    ax.scatter([result.start.state_bytes * mib], [result.start.loss], marker="s", s=60, c="C1", label="start", zorder=3)
    ax.scatter([result.best.state_bytes * mib], [result.best.loss], marker="*", s=140, c="C3", label="chosen",
               zorder=4)
    if result.max_state_bytes is not None:
        ax.axvline(result.max_state_bytes * mib, ls="--", c="C3", lw=1, label="byte budget")
    ax.set_xlabel(f"decoding state at {result.context_len} tokens (MiB, batch 1)")
    ax.set_ylabel("calibration loss (nats/token)")
    ax.set_title("per-layer window search: quality vs state")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def format_layout(layout: Sequence[Optional[int]]) -> str:
    return "[" + ", ".join("full" if w is None else str(w) for w in layout) + "]"
