"""Recall and long-context suites, generated offline: MQAR, single- and multi-key needle in a haystack
(RULER-style) and passkey retrieval, at lengths from 1k to 32k tokens, scored by exact match.

MQAR and the single needle come from `nha.data.synthetic`; the multi-key needle and the passkey are defined here
(the data module has no generator for them). The token tasks draw ids from the model's vocabulary; the passkey
task is text, encoded with the model's tokenizer. A row counts as solved when the greedy prediction at every answer
position is right (teacher forcing: the same as greedy decoding of the whole answer).
N rows, T length, K needles, L needle length.
"""
from __future__ import annotations

import time
from typing import Optional, Sequence

import torch

from nha.data.synthetic import (HAYSTACK_FIRST_FREE, HAYSTACK_NEEDLE, HAYSTACK_QUERY, IGNORE, SyntheticBatch,
                                haystack, mqar)

SUITE_TASKS = ("mqar", "niah_single", "niah_multikey", "passkey")
DEFAULT_LENGTHS = (1024, 2048, 4096, 8192, 16384, 32768)
_FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "


def multikey_haystack(num_examples: int, *, vocab_size: int = 256, seq_len: int = 1024, num_needles: int = 4,
                      needle_len: int = 4, generator: Optional[torch.Generator] = None) -> SyntheticBatch:
    """RULER's multi-key needle: K needles `NEEDLE key v_1..v_L` at random places in random filler, then
    `QUERY key v_1..v_L` for one of them; scored on `v_1..v_L`. Keys of a row are distinct; needles never overlap.

    Returns:
        `SyntheticBatch` whose `needle_start` `[N]` is the position of the queried needle's NEEDLE marker.
    """
    N, T, K, L, V = num_examples, seq_len, num_needles, needle_len, vocab_size
    span = L + 2  # NEEDLE key v_1..v_L
    if min(N, T, K, L) <= 0:
        raise ValueError("num_examples, seq_len, num_needles and needle_len must be positive")
    if V - HAYSTACK_FIRST_FREE < K:
        raise ValueError(f"{K} distinct keys need vocab_size >= {HAYSTACK_FIRST_FREE + K}, got {V}")
    if T < (K + 1) * span:
        raise ValueError(f"{K} needles of length {L} plus the query need seq_len >= {(K + 1) * span}, got {T}")
    ids = torch.randint(HAYSTACK_FIRST_FREE, V, (N, T), generator=generator)
    keys = torch.rand(N, V - HAYSTACK_FIRST_FREE, generator=generator).argsort(-1)[:, :K] + HAYSTACK_FIRST_FREE
    values = torch.randint(HAYSTACK_FIRST_FREE, V, (N, K, L), generator=generator)
    # non-overlapping slots: choose K of the (T - span) // span blocks before the query, one needle per block
    blocks = (T - span) // span
    chosen = torch.rand(N, blocks, generator=generator).argsort(-1)[:, :K] * span                 # [N, K]
    asked = torch.randint(0, K, (N,), generator=generator)
    rows = torch.arange(N)
    for k in range(K):
        ids[rows, chosen[:, k]] = HAYSTACK_NEEDLE
        ids[rows, chosen[:, k] + 1] = keys[:, k]
        ids[rows[:, None], chosen[:, k, None] + 2 + torch.arange(L)] = values[:, k]
    answer = values[rows, asked]                                                                  # [N, L]
    ids[:, T - span] = HAYSTACK_QUERY
    ids[:, T - span + 1] = keys[rows, asked]
    ids[:, T - L:] = answer
    targets = torch.full((N, T), IGNORE, dtype=torch.long)
    targets[:, T - L - 1:T - 1] = answer  # after the key predict v_1, after v_i predict v_{i+1}
    return SyntheticBatch(ids, targets, chosen[rows, asked])


def passkey(num_examples: int, tokenizer, *, seq_len: int = 1024, depth: Optional[float] = None,
            generator: Optional[torch.Generator] = None) -> SyntheticBatch:
    """Passkey retrieval (Mohtashami & Jaggi 2023): a 5-digit key hidden in repeated filler text at `depth`
    (fraction of the filler; None = uniform), then "What is the pass key? The pass key is"; scored on the key.

    Rows are exactly `seq_len` tokens (the filler is cut to fit). `needle_start` is the token where the key's
    sentence starts.
    """
    enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    filler = enc(_FILLER * 4)
    rows, targets, starts = [], [], []
    for _ in range(num_examples):
        key = str(int(torch.randint(10000, 100000, (1,), generator=generator)))
        needle = enc(f" The pass key is {key}. Remember it. {key} is the pass key. ")
        question, answer = enc(" What is the pass key? The pass key is"), enc(f" {key}")
        room = seq_len - len(needle) - len(question) - len(answer)
        if room < 1:
            raise ValueError(f"passkey rows need seq_len > {seq_len - room + 1} tokens, got {seq_len}")
        hay = (filler * (room // len(filler) + 1))[:room]
        d = float(torch.rand(1, generator=generator)) if depth is None else depth
        at = round(d * room)
        ids = hay[:at] + needle + hay[at:] + question + answer
        tgt = [IGNORE] * seq_len
        tgt[seq_len - len(answer) - 1:seq_len - 1] = answer
        rows.append(ids)
        targets.append(tgt)
        starts.append(at)
    return SyntheticBatch(torch.tensor(rows), torch.tensor(targets), torch.tensor(starts))


def make_task(task: str, length: int, num_examples: int, *, vocab_size: int, tokenizer=None, seed: int = 0,
              num_pairs: int = 16, needle_len: int = 4, num_needles: int = 4) -> SyntheticBatch:
    """One suite task's examples at one length."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + length)
    if task == "mqar":
        return mqar(num_examples, vocab_size=vocab_size, num_pairs=num_pairs, seq_len=length, generator=gen)
    if task == "niah_single":
        return haystack(num_examples, vocab_size=vocab_size, seq_len=length, needle_len=needle_len, generator=gen)
    if task == "niah_multikey":
        return multikey_haystack(num_examples, vocab_size=vocab_size, seq_len=length, num_needles=num_needles,
                                 needle_len=needle_len, generator=gen)
    if task == "passkey":
        if tokenizer is None:
            raise ValueError("the passkey task is text: it needs the model's tokenizer")
        return passkey(num_examples, tokenizer, seq_len=length, generator=gen)
    raise ValueError(f"unknown suite task {task!r}: choose from {', '.join(SUITE_TASKS)}")


@torch.no_grad()
def score(model, batch: SyntheticBatch, *, batch_size: int = 1) -> tuple[float, float]:
    """(token accuracy, row accuracy) of greedy predictions at the scored positions. Only those positions go
    through the LM head, so a 32k row with a 32k vocabulary needs no `[T, vocab]` logits."""
    device = next(model.parameters()).device
    hits = scored = solved = 0
    for i in range(0, len(batch), batch_size):
        part = batch.slice(i, i + batch_size)
        mask = part.targets != IGNORE
        keep = mask.any(0).nonzero().squeeze(-1)
        logits = model(part.input_ids.to(device), use_cache=False, logits_to_keep=keep.to(device)).logits
        pred = logits.argmax(-1).cpu()
        ok = (pred == part.targets[:, keep]) & mask[:, keep]
        hits += int(ok.sum())
        scored += int(mask.sum())
        solved += int((ok.sum(1) == mask.sum(1)).sum())
    return hits / max(scored, 1), solved / max(len(batch), 1)


def run_suite(model, *, tasks: Sequence[str] = SUITE_TASKS, lengths: Sequence[int] = DEFAULT_LENGTHS,
              num_examples: int = 20, tokenizer=None, seed: int = 0, batch_size: int = 1, **task_kwargs) -> list[dict]:
    """Score every task at every length.

    Returns:
        One dict per (task, length): `task`, `length`, `token_accuracy`, `accuracy` (rows solved), `n`, `seconds`.

    Example:
        >>> rows = run_suite(model, tasks=["niah_single"], lengths=[1024, 4096], num_examples=10)
    """
    for t in tasks:
        if t not in SUITE_TASKS:
            raise ValueError(f"unknown suite task {t!r}: choose from {', '.join(SUITE_TASKS)}")
    for n in lengths:
        if not isinstance(n, int) or n <= 0:
            raise ValueError(f"lengths must be positive ints, got {n!r}")
    was_training = model.training
    model.eval()
    out = []
    try:
        for task in tasks:
            for length in lengths:
                batch = make_task(task, length, num_examples, vocab_size=model.config.vocab_size,
                                  tokenizer=tokenizer, seed=seed, **task_kwargs)
                start = time.perf_counter()
                tok_acc, acc = score(model, batch, batch_size=batch_size)
                out.append({"task": task, "length": length, "token_accuracy": tok_acc, "accuracy": acc,
                            "n": len(batch), "seconds": time.perf_counter() - start})
    finally:
        model.train(was_training)
    return out


def suite_table(rows: list[dict]) -> str:
    """Markdown: one row per task, one column per length, row accuracy (token accuracy)."""
    lengths = sorted({r["length"] for r in rows})
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    cell = {(r["task"], r["length"]): f"{r['accuracy']:.2f} ({r['token_accuracy']:.2f})" for r in rows}
    lines = ["| task | " + " | ".join(f"{n}" for n in lengths) + " |", "| --- |" + " ---: |" * len(lengths)]
    lines += [f"| {t} | " + " | ".join(cell.get((t, n), "") for n in lengths) + " |" for t in tasks]
    return "\n".join(lines)


def plot_suite(rows: list[dict], path: str, title: str = "recall vs context length") -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(6, 4))
    for task in dict.fromkeys(r["task"] for r in rows):
        pts = sorted((r["length"], r["accuracy"]) for r in rows if r["task"] == task)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "-o", ms=4, label=task)
    ax.set_xscale("log", base=2)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("exact match (rows solved)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
