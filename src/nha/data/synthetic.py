"""Synthetic recall tasks with exact-match evaluators: MQAR (multi-query associative recall) and needle-in-a-haystack.

Both generators return a `SyntheticBatch`: `input_ids` `[N, T]` and aligned `targets` `[N, T]`, where
`targets[:, t]` is the token the model must predict after reading `input_ids[:, :t + 1]` and -100 marks positions
that are not scored. Generation is vectorized and driven by a `torch.Generator`, so a seed fixes every example.
N examples, T sequence length, P key-value pairs, L needle length.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

IGNORE = -100

# reserved ids of the haystack task; its values and filler use the ids above these
HAYSTACK_NEEDLE, HAYSTACK_QUERY, HAYSTACK_FIRST_FREE = 1, 2, 3


@dataclass
class SyntheticBatch:
    """`input_ids` `[N, T]`; `targets` `[N, T]` (-100 = not scored); `needle_start` `[N]` (haystack only)."""

    input_ids: torch.Tensor
    targets: torch.Tensor
    needle_start: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def slice(self, start: int, stop: int) -> "SyntheticBatch":
        ns = None if self.needle_start is None else self.needle_start[start:stop]
        return SyntheticBatch(self.input_ids[start:stop], self.targets[start:stop], ns)


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def mqar(num_examples: int, *, vocab_size: int = 64, num_pairs: int = 8, seq_len: int = 64,
         num_queries: int | None = None, pair_tokens: bool = False,
         generator: torch.Generator | None = None) -> SyntheticBatch:
    """Multi-query associative recall (Zoology's MQAR, with all queries after a gap and answers never shown).

    Layout of each row: `k_1 v_1 ... k_P v_P`, filler token 0 up to position `T - Q`, then `Q` query keys drawn
    uniformly with replacement from the row's pairs. The model is scored on predicting, at each query key, that
    key's value. The answers are never part of the input: were they (as in Zoology), a repeated key would be
    answered from the previous query inside any sliding window, and with distinct keys the last answers would
    follow by elimination. The pairs end `T - 2P - Q` positions before the first query, so a sliding window
    shorter than that cannot see them.
    Keys come from ids `1 .. vocab_size // 2 - 1`, values from `vocab_size // 2 .. vocab_size - 1`; the keys of a
    row are distinct, values may repeat.

    With `pair_tokens=True` each pair is ONE token standing for (key, value): the pairs take `P` positions and a
    lookup is one attention hop instead of the two-token induction step, which tiny models learn in hundreds of
    steps instead of many thousands (used by the CPU demo). Then `n = isqrt(vocab_size) - 1` keys and as many
    values: ids `1..n` keys, `n+1..2n` values, `2n+1 .. 2n+n*n` pair tokens.

    Args:
        num_examples: N rows.
        vocab_size: ids `0 .. vocab_size - 1`; needs `vocab_size // 2 - 1 >= num_pairs`.
        num_pairs: P key-value pairs per row.
        seq_len: T, at least `2 * num_pairs + num_queries`.
        num_queries: Q queries per row (default P).
        pair_tokens: one token per pair (see above).
        generator: a seeded `torch.Generator` (CPU) for reproducible data.

    Returns:
        `SyntheticBatch` with `input_ids`, `targets` `[N, T]` (`Q` scored positions per row, the last `Q`).

    Example:
        >>> batch = mqar(1000, vocab_size=64, num_pairs=8, seq_len=64, generator=torch.Generator().manual_seed(0))
        >>> int((batch.targets != -100).sum(1)[0])
        8
    """
    Q = num_pairs if num_queries is None else num_queries
    N, V, P, T, Q = (_positive_int(n, x) for n, x in
                     (("num_examples", num_examples), ("vocab_size", vocab_size), ("num_pairs", num_pairs),
                      ("seq_len", seq_len), ("num_queries", Q)))
    width = 1 if pair_tokens else 2  # positions per pair
    num_keys = math.isqrt(V) - 1 if pair_tokens else V // 2 - 1
    if num_keys < P:
        need = (P + 1) ** 2 if pair_tokens else 2 * (P + 1)
        raise ValueError(f"MQAR with {P} pairs{' as pair tokens' if pair_tokens else ''} needs {P} distinct keys: "
                         f"vocab_size must be at least {need}, got {V}")
    if T < width * P + Q:
        raise ValueError(f"MQAR with {P} pairs and {Q} queries needs seq_len >= {width * P + Q}, got {T}")
    if pair_tokens:
        n = num_keys
        keys = torch.rand(N, n, generator=generator).argsort(-1)[:, :P]                    # [N, P] in 0..n-1
        values = torch.randint(0, n, (N, P), generator=generator)
        order = torch.randint(0, P, (N, Q), generator=generator)
        input_ids = torch.zeros(N, T, dtype=torch.long)
        input_ids[:, :P] = 1 + 2 * n + keys * n + values
        input_ids[:, T - Q:] = 1 + keys.gather(1, order)
        targets = torch.full((N, T), IGNORE, dtype=torch.long)
        targets[:, T - Q:] = 1 + n + values.gather(1, order)
        return SyntheticBatch(input_ids, targets)
    keys = torch.rand(N, num_keys, generator=generator).argsort(-1)[:, :P] + 1               # [N, P] distinct
    values = torch.randint(V // 2, V, (N, P), generator=generator)                          # [N, P]
    order = torch.randint(0, P, (N, Q), generator=generator)                               # [N, Q]
    input_ids = torch.zeros(N, T, dtype=torch.long)
    input_ids[:, 0:2 * P:2], input_ids[:, 1:2 * P:2] = keys, values
    input_ids[:, T - Q:] = keys.gather(1, order)
    targets = torch.full((N, T), IGNORE, dtype=torch.long)
    targets[:, T - Q:] = values.gather(1, order)
    return SyntheticBatch(input_ids, targets)


def haystack(num_examples: int, *, vocab_size: int = 64, seq_len: int = 256, needle_len: int = 4,
             depth: float | None = None, generator: torch.Generator | None = None) -> SyntheticBatch:
    """Needle in a haystack: random filler, one needle `NEEDLE v_1..v_L` at a chosen depth, then `QUERY v_1..v_L`.

    The model is scored on reproducing `v_1..v_L` after the final `QUERY` token (the last `L` predictions).
    Ids 1 and 2 are the NEEDLE and QUERY markers; needle values and filler are drawn from ids `3 .. vocab_size-1`.

    Args:
        num_examples: N rows.
        vocab_size: at least 4.
        seq_len: T, at least `2 * (needle_len + 1) + 1`.
        needle_len: L value tokens in the needle.
        depth: where the needle starts, as a fraction in [0, 1] of the filler before the query (0 = first token,
            1 = right before the query); None draws it uniformly per row.
        generator: a seeded `torch.Generator` (CPU).

    Returns:
        `SyntheticBatch` whose `needle_start` `[N]` is the position of each row's NEEDLE marker.

    Example:
        >>> b = haystack(4, seq_len=128, depth=0.5, generator=torch.Generator().manual_seed(0))
        >>> b.input_ids[0, b.needle_start[0]].item()
        1
    """
    N, V, T, L = (_positive_int(n, x) for n, x in
                  (("num_examples", num_examples), ("vocab_size", vocab_size), ("seq_len", seq_len),
                   ("needle_len", needle_len)))
    if V <= HAYSTACK_FIRST_FREE:
        raise ValueError(f"haystack needs vocab_size >= {HAYSTACK_FIRST_FREE + 1} (two markers plus data), got {V}")
    span = L + 1  # NEEDLE + values, and QUERY + values
    if T < 2 * span + 1:
        raise ValueError(f"haystack with needle_len {L} needs seq_len >= {2 * span + 1}, got {T}")
    if depth is not None and not 0.0 <= float(depth) <= 1.0:
        raise ValueError(f"depth must be a fraction in [0, 1] or None, got {depth!r}")
    last_start = T - 2 * span  # the needle ends right before the query at depth 1
    if depth is None:
        start = torch.randint(0, last_start + 1, (N,), generator=generator)
    else:
        start = torch.full((N,), round(float(depth) * last_start), dtype=torch.long)
    input_ids = torch.randint(HAYSTACK_FIRST_FREE, V, (N, T), generator=generator)
    values = torch.randint(HAYSTACK_FIRST_FREE, V, (N, L), generator=generator)
    rows = torch.arange(N)[:, None]
    needle_pos = start[:, None] + torch.arange(1, span)                                    # [N, L]
    input_ids[rows[:, 0], start] = HAYSTACK_NEEDLE
    input_ids[rows, needle_pos] = values
    input_ids[:, T - span] = HAYSTACK_QUERY
    input_ids[:, T - L:] = values
    targets = torch.full((N, T), IGNORE, dtype=torch.long)
    # after QUERY predict v_1, after v_i predict v_{i+1}: the last L predictions before the end
    targets[:, T - span:T - 1] = values
    return SyntheticBatch(input_ids, targets, start)


@dataclass
class RecallScore:
    """Exact match over scored tokens (`token_accuracy`) and over whole rows (`row_accuracy`)."""

    token_accuracy: float
    row_accuracy: float
    tokens: int
    rows: int


@torch.no_grad()
def exact_match(model: torch.nn.Module, batch: SyntheticBatch, *, batch_size: int = 256) -> RecallScore:
    """Score a causal LM on a synthetic batch: argmax at every scored position must equal the target.

    With teacher forcing, a row is all-correct exactly when greedy decoding from its prompt reproduces every
    answer, so `row_accuracy` is the greedy exact-match rate.

    Args:
        model: maps `input_ids` `[n, T]` to an output with `.logits` `[n, T, vocab]` (e.g. `NHAForCausalLM`).
        batch: from `mqar` or `haystack`.
        batch_size: rows per forward.

    Returns:
        `RecallScore`.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    hits = scored = rows_ok = 0
    try:
        for i in range(0, len(batch), batch_size):
            part = batch.slice(i, i + batch_size)
            logits = model(part.input_ids.to(device), use_cache=False).logits
            pred = logits.argmax(-1).cpu()
            mask = part.targets != IGNORE
            correct = (pred == part.targets) & mask
            hits += int(correct.sum())
            scored += int(mask.sum())
            rows_ok += int((correct.sum(1) == mask.sum(1)).sum())
    finally:
        model.train(was_training)
    return RecallScore(hits / max(scored, 1), rows_ok / max(len(batch), 1), scored, len(batch))


TASKS = {"mqar": mqar, "haystack": haystack}
