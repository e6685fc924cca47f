"""Before/after evaluation of a conversion: held-out perplexity, a passkey recall probe, and decoding speed and
cache memory at a given context, for NHA models and transformers source models alike.

B batch, T tokens, V vocabulary.
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from nha.data.synthetic import IGNORE
from nha.models import NHACache, NHAForCausalLM


def _is_nha(model) -> bool:
    return isinstance(model, NHAForCausalLM)


@torch.no_grad()
def heldout_loss(model, source, num_batches: int) -> dict:
    """Mean next-token cross-entropy over `num_batches` held-out batches of a `nha.data.TextSource`.

    NHA models take the packed batch at once (`cu_seqlens` keeps documents apart); other models (the transformers
    source) run each packed document piece alone, which is the same computation.

    Returns:
        `{"loss": mean nats per token, "ppl": exp(loss), "tokens": count}`.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for j in range(num_batches):
        batch = source.eval_batch(j)
        ids, targets = batch["input_ids"].to(device), batch["targets"].to(device)
        if _is_nha(model):
            logits = model(ids, position_ids=batch["position_ids"].to(device),
                           cu_seqlens=batch["cu_seqlens"].to(device), use_cache=False).logits
        else:
            cu = batch["cu_seqlens"].tolist()
            logits = torch.cat([model(ids[:, a:b], use_cache=False).logits for a, b in zip(cu[:-1], cu[1:])], 1)
        total += float(F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE,
                                       reduction="sum"))
        count += int((targets != IGNORE).sum())
    model.train(was_training)
    loss = total / max(count, 1)
    return {"loss": loss, "ppl": math.exp(loss), "tokens": count}


@torch.no_grad()
def passkey_accuracy(model, tokenizer, *, length: int, num_examples: int = 10, seed: int = 0) -> float:
    """Fraction of passkey prompts (`nha.eval.longctx.passkey`, 5-digit key at a random depth in `length` tokens of
    filler) whose whole key the model predicts greedily."""
    from nha.eval.longctx import passkey, score  # noqa: PLC0415

    batch = passkey(num_examples, tokenizer, seq_len=length, generator=torch.Generator().manual_seed(seed))
    model.eval()
    return score(model, batch)[1]


def _sync(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock times cover the kernels and not only their launches."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cache_bytes(cache) -> int:
    """Bytes held by a generation cache: `NHACache.memory_bytes`, or the key/value tensors of a transformers cache."""
    if isinstance(cache, NHACache):
        return cache.memory_bytes()
    total = 0
    for layer in cache.layers:
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


@torch.no_grad()
def decode_speed(model, *, context: int, new_tokens: int = 32, prefill_chunk: int = 2048, seed: int = 0) -> dict:
    """Prefill `context` random tokens (in chunks of `prefill_chunk`, so long contexts fit), then decode
    `new_tokens` greedy tokens one at a time through the cache.

    Returns:
        `{"context", "prefill_s", "decode_tok_s", "cache_mib"}`; the cache is measured after the last token.
    """
    from transformers import DynamicCache  # noqa: PLC0415

    model.eval()
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (1, context), generator=g).to(device)
    cache = NHACache(model.config.layer_windows) if _is_nha(model) else DynamicCache()
    _sync(device)
    t0 = time.perf_counter()
    for start in range(0, context, prefill_chunk):
        out = model(ids[:, start:start + prefill_chunk], past_key_values=cache, use_cache=True, logits_to_keep=1)
    nxt = out.logits[:, -1:].argmax(-1)
    _sync(device)
    prefill = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(new_tokens):
        out = model(nxt, past_key_values=cache, use_cache=True)
        nxt = out.logits[:, -1:].argmax(-1)
    _sync(device)
    decode = time.perf_counter() - t0
    return {"context": context, "prefill_s": prefill, "decode_tok_s": new_tokens / decode,
            "cache_mib": cache_bytes(cache) / 2**20}
