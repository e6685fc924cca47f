"""MQAR and haystack generators: answers recoverable from the prompt, needles where they say, clear errors."""
import pytest
import torch

from nha.data.synthetic import HAYSTACK_NEEDLE, HAYSTACK_QUERY, IGNORE, exact_match, haystack, mqar
from nha.models import NHAForCausalLM, preset_config


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("V,P,T,Q", [(16, 2, 8, None), (64, 8, 64, None), (40, 19, 100, None), (32, 4, 64, 16)])
def test_mqar_answers_are_recoverable_from_the_prompt(V, P, T, Q):
    b = mqar(50, vocab_size=V, num_pairs=P, seq_len=T, num_queries=Q, generator=gen())
    Q = P if Q is None else Q
    assert b.input_ids.shape == b.targets.shape == (50, T)
    for ids, tgt in zip(b.input_ids.tolist(), b.targets.tolist()):
        pairs = dict(zip(ids[0:2 * P:2], ids[1:2 * P:2]))
        assert len(pairs) == P, "keys of a row must be distinct"
        assert all(1 <= k < V // 2 <= v < V for k, v in pairs.items())
        scored = [t for t in range(T) if tgt[t] != IGNORE]
        assert scored == list(range(T - Q, T))
        for t in scored:
            # the answer at a queried key is the value that followed that key among the pairs
            assert tgt[t] == pairs[ids[t]]
        assert all(x == 0 for x in ids[2 * P:T - Q])
        # answers are never in the input after the pairs (no window could read them there)
        assert not set(ids[2 * P:]) & set(range(V // 2, V))


def test_mqar_is_seeded():
    a, b, c = (mqar(4, generator=gen(s)) for s in (1, 1, 2))
    assert torch.equal(a.input_ids, b.input_ids) and not torch.equal(a.input_ids, c.input_ids)


@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 1.0, None])
def test_haystack_puts_the_needle_where_it_says(depth):
    T, L = 64, 3
    b = haystack(20, vocab_size=32, seq_len=T, needle_len=L, depth=depth, generator=gen())
    last = T - 2 * (L + 1)
    if depth is not None:
        assert (b.needle_start == round(depth * last)).all()
    for ids, tgt, s in zip(b.input_ids.tolist(), b.targets.tolist(), b.needle_start.tolist()):
        assert 0 <= s <= last
        assert ids[s] == HAYSTACK_NEEDLE and ids.count(HAYSTACK_NEEDLE) == 1
        assert ids[T - L - 1] == HAYSTACK_QUERY and ids.count(HAYSTACK_QUERY) == 1
        needle = ids[s + 1:s + 1 + L]
        assert ids[T - L:] == needle
        assert [t for t in tgt if t != IGNORE] == needle
        assert tgt[T - L - 1:T - 1] == needle


@pytest.mark.parametrize("fn,kwargs,match", [
    (mqar, dict(vocab_size=8, num_pairs=4), "vocab_size must be at least 10"),
    (mqar, dict(num_pairs=8, seq_len=20), "seq_len >= 24"),
    (mqar, dict(num_pairs=8, num_queries=10, seq_len=20), "8 pairs and 10 queries needs seq_len >= 26"),
    (mqar, dict(num_pairs=0), "num_pairs must be a positive int"),
    (haystack, dict(depth=1.5), "depth must be a fraction"),
    (haystack, dict(seq_len=8, needle_len=4), "seq_len >= 11"),
    (haystack, dict(vocab_size=3), "vocab_size >= 4"),
])
def test_bad_task_arguments_are_clear(fn, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fn(2, **kwargs)


def test_exact_match_scores_an_oracle_and_a_real_model():
    b = mqar(16, vocab_size=16, num_pairs=2, seq_len=12, generator=gen())

    class Oracle(torch.nn.Module):
        """Looks every token up among the row's first two pairs: every scored answer is right."""

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, use_cache=False):
            keys, values = input_ids[:, 0:4:2], input_ids[:, 1:4:2]                      # [n, 2]
            hit = input_ids[:, :, None] == keys[:, None, :]                               # [n, T, 2]
            answer = (hit.long() * values[:, None, :]).sum(-1)
            return type("Out", (), {"logits": torch.nn.functional.one_hot(answer, 16).float()})

    score = exact_match(Oracle(), b)
    assert score.token_accuracy == score.row_accuracy == 1.0 and score.tokens == 32
    model = NHAForCausalLM(preset_config("nha", "tiny", vocab_size=16, num_hidden_layers=1))
    score = exact_match(model, b)
    assert 0.0 <= score.row_accuracy <= score.token_accuracy <= 1.0 and model.training


def test_mqar_pair_tokens_answers_are_recoverable():
    V, P, Q, T = 81, 4, 16, 40  # n = 8 keys and 8 values
    b = mqar(50, vocab_size=V, num_pairs=P, num_queries=Q, seq_len=T, pair_tokens=True, generator=gen())
    n = 8
    assert int(b.input_ids.max()) < V
    for ids, tgt in zip(b.input_ids.tolist(), b.targets.tolist()):
        # decode each pair token back into (key id, value id)
        pairs = {1 + (t - 1 - 2 * n) // n: 1 + n + (t - 1 - 2 * n) % n for t in ids[:P]}
        assert len(pairs) == P and all(t > 2 * n for t in ids[:P])
        assert all(x == 0 for x in ids[P:T - Q])
        for t in range(T - Q, T):
            assert 1 <= ids[t] <= n and tgt[t] == pairs[ids[t]]
    with pytest.raises(ValueError, match="vocab_size must be at least 25"):
        mqar(2, vocab_size=24, num_pairs=4, pair_tokens=True)
