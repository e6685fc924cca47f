import pytest
import torch

from nha.eval.loading import byte_tokenizer, load_model, load_model_and_tokenizer, load_tokenizer


def test_byte_tokenizer_ids_are_utf8_bytes():
    tok = byte_tokenizer()
    text = "Thou art more lovely — and more temperate:\n"
    assert tok(text)["input_ids"] == list(text.encode("utf-8"))
    assert tok.decode(tok(text)["input_ids"]) == text
    assert len(tok) == 256 and tok.eos_token_id == 0


def test_saved_folder_and_preset_load_the_same_weights(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "m")
    model, tok = load_model_and_tokenizer(str(tmp_path / "m"))
    ids = torch.tensor([list(b"hello")])
    torch.testing.assert_close(model(ids).logits, tiny(ids).logits)
    assert len(tok) == 256  # no tokenizer saved, vocab 256: bytes


def test_bad_model_and_tokenizer_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a saved model folder nor a preset"):
        load_model(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_model(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        load_tokenizer(str(tmp_path / "tok.json"))
    with pytest.raises(ValueError, match="comes without a tokenizer"):
        load_tokenizer(None, None, vocab_size=32000)
