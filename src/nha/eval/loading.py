"""Models and tokenizers for evaluation: a saved folder or a named preset, and a byte tokenizer for HF tools.

A MODEL argument is a saved model folder (`save_pretrained`, loaded through the Auto classes `import nha`
registers) or a preset spec `name[:size]` (e.g. `nha-h:tiny`, randomly initialized from a seed: for smoke tests
and timing only). The byte tokenizer maps each UTF-8 byte to the id of that byte, as `nha train --tokenizer bytes`
does, so byte-level NHA models can be evaluated with tools that want a `transformers` tokenizer (lm-eval).
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


@lru_cache(maxsize=1)
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table, the alphabet of the byte-level pre-tokenizer."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def byte_tokenizer():
    """A `PreTrainedTokenizerFast` whose ids are the UTF-8 bytes (vocab 256); byte 0 serves as EOS/BOS/pad.

    Example:
        >>> byte_tokenizer()("hi")["input_ids"]
        [104, 105]
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers  # noqa: PLC0415
    from transformers import PreTrainedTokenizerFast  # noqa: PLC0415

    table = _bytes_to_unicode()
    tok = Tokenizer(models.BPE(vocab={table[b]: b for b in range(256)}, merges=[]))
    # no regex split and no prefix space: every byte stays one token, exactly as the training data was encoded
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    special = table[0]
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=special, bos_token=special, pad_token=special)


def load_tokenizer(spec: str | None, model_folder: Path | None = None, vocab_size: int | None = None):
    """`spec`: "bytes", a `tokenizer.json`, a folder with a tokenizer, or None (the model folder's own tokenizer,
    else bytes for a vocab-256 model)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast  # noqa: PLC0415

    if spec is None:
        if model_folder is not None and any((model_folder / f).exists() for f in TOKENIZER_FILES):
            spec = str(model_folder)
        elif vocab_size == 256:
            spec = "bytes"
        else:
            raise ValueError(f"the model (vocab {vocab_size}) comes without a tokenizer: pass --tokenizer with "
                             "'bytes', a tokenizer.json or a folder holding a tokenizer")
    if spec == "bytes":
        tok = byte_tokenizer()
    else:
        path = Path(spec)
        if not path.exists():
            raise FileNotFoundError(f"tokenizer {spec!r} is neither 'bytes' nor an existing tokenizer.json or folder")
        tok = (PreTrainedTokenizerFast(tokenizer_file=str(path)) if path.is_file()
               else AutoTokenizer.from_pretrained(str(path)))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if vocab_size is not None and len(tok) > vocab_size:
        raise ValueError(f"the tokenizer has {len(tok)} tokens but the model's vocabulary only {vocab_size}: "
                         "they do not belong together")
    return tok


def load_model(spec: str, *, seed: int = 0, dtype: torch.dtype = torch.float32):
    """(model, folder or None) from a saved folder or a preset spec `name[:size]`, in eval mode."""
    from nha.models import PRESETS, NHAForCausalLM, preset_config  # noqa: PLC0415
    from transformers import AutoModelForCausalLM  # noqa: PLC0415

    path = Path(spec)
    name, _, size = spec.partition(":")
    if name in PRESETS and not path.exists():
        torch.manual_seed(seed)
        model = NHAForCausalLM(preset_config(name, size or "tiny")).to(dtype)
        return model.eval(), None
    if not path.exists():
        raise FileNotFoundError(f"model {spec!r} is neither a saved model folder nor a preset "
                                f"({', '.join(PRESETS)}, optionally ':size')")
    if not path.is_dir() or not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} is not a saved model folder (no config.json): pass the folder "
                                "save_pretrained wrote")
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    return model.eval(), path


def load_model_and_tokenizer(spec: str, tokenizer: str | None = None, *, seed: int = 0):
    model, folder = load_model(spec, seed=seed)
    return model, load_tokenizer(tokenizer, folder, model.config.vocab_size)
