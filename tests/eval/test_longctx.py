import pytest
import torch

from nha.data.synthetic import HAYSTACK_NEEDLE, HAYSTACK_QUERY, IGNORE, exact_match, haystack
from nha.eval.loading import byte_tokenizer
from nha.eval.longctx import make_task, multikey_haystack, passkey, run_suite, score


@pytest.mark.parametrize("depth", [0.0, 0.37, 1.0])
def test_single_needle_sits_where_it_says(depth):
    b = haystack(5, vocab_size=64, seq_len=200, needle_len=4, depth=depth, generator=torch.Generator().manual_seed(1))
    expected = round(depth * (200 - 2 * 5))
    for row, start in zip(b.input_ids, b.needle_start.tolist()):
        assert start == expected and row[start] == HAYSTACK_NEEDLE
        assert row[-5] == HAYSTACK_QUERY and torch.equal(row[start + 1:start + 5], row[-4:])


def test_multikey_needle_answer_follows_the_queried_key():
    b = multikey_haystack(8, vocab_size=64, seq_len=300, num_needles=5, needle_len=3,
                          generator=torch.Generator().manual_seed(2))
    for row, tgt, start in zip(b.input_ids, b.targets, b.needle_start.tolist()):
        assert (row == HAYSTACK_NEEDLE).sum() >= 5 and row[start] == HAYSTACK_NEEDLE
        assert row[-5] == HAYSTACK_QUERY and row[start + 1] == row[-4]  # the queried key
        assert torch.equal(row[start + 2:start + 5], row[-3:])  # its values are the answer
        assert torch.equal(tgt[tgt != IGNORE], row[-3:])


def test_passkey_is_at_its_depth_and_scored():
    tok = byte_tokenizer()
    b = passkey(3, tok, seq_len=500, depth=0.5, generator=torch.Generator().manual_seed(3))
    assert b.input_ids.shape == (3, 500)
    for row, tgt, start in zip(b.input_ids, b.targets, b.needle_start.tolist()):
        text = tok.decode(row.tolist())
        key = tok.decode(tgt[tgt != IGNORE].tolist()).strip()
        assert len(key) == 5 and tok.decode(row[start:].tolist()).startswith(f" The pass key is {key}.")
        assert text.endswith(f"The pass key is {key}")


def test_score_matches_full_logits_exact_match(tiny):
    b = make_task("mqar", 64, 6, vocab_size=256, num_pairs=4)
    tok_acc, acc = score(tiny, b, batch_size=4)
    ref = exact_match(tiny, b)
    assert (tok_acc, acc) == (ref.token_accuracy, ref.row_accuracy)


def test_suite_rows_and_errors(tiny):
    rows = run_suite(tiny, tasks=["niah_single", "passkey"], lengths=[128, 256], num_examples=2,
                     tokenizer=byte_tokenizer())
    assert [(r["task"], r["length"]) for r in rows] == [("niah_single", 128), ("niah_single", 256),
                                                        ("passkey", 128), ("passkey", 256)]
    with pytest.raises(ValueError, match="unknown suite task"):
        run_suite(tiny, tasks=["ruler"], lengths=[128])
    with pytest.raises(ValueError, match="needs the model's tokenizer"):
        run_suite(tiny, tasks=["passkey"], lengths=[128])
