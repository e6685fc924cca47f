"""Atomic training checkpoints: a new one appears whole or not at all, and a damaged one says so.

Layout under `<out>/checkpoints/`: `step-00000100/` holding `state.pt` and `meta.json` (its size and SHA-256),
plus `latest`, a one-line file naming the newest complete checkpoint. A save writes everything into a
temporary folder, syncs it, renames it into place (`os.replace`) and only then rewrites `latest` (again through
a temporary file and `os.replace`), so a save interrupted at any point leaves the previous checkpoint as
`latest`, and a reader never sees a half-written one.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

import torch

STATE, META, LATEST = "state.pt", "meta.json", "latest"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(root: str | Path, step: int, state: dict, *, keep: int = 2) -> Path:
    """Write `state` (anything `torch.save` takes) as checkpoint `step` under `root`, atomically.

    Returns the checkpoint folder. Older complete checkpoints beyond the newest `keep` are removed afterwards.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        torch.save(state, tmp / STATE)
        _fsync(tmp / STATE)
        meta = {"step": step, "bytes": (tmp / STATE).stat().st_size, "sha256": _sha256(tmp / STATE)}
        (tmp / META).write_text(json.dumps(meta))
        _fsync(tmp / META)
        if final.exists():  # a re-save of the same step (e.g. after a resume): move the old one out of the way
            old = root / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
            os.replace(final, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, final)
        _fsync(root)
        pointer = root / f".{LATEST}-{uuid.uuid4().hex[:8]}"
        pointer.write_text(final.name + "\n")
        _fsync(pointer)
        os.replace(pointer, root / LATEST)
        _fsync(root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    _prune(root, keep)
    return final


def _prune(root: Path, keep: int) -> None:
    latest = resolve_checkpoint(root)
    done = sorted(p for p in root.glob("step-*") if p.is_dir() and (p / META).exists())
    for p in done[:-keep] if keep > 0 else []:
        if p != latest:
            shutil.rmtree(p, ignore_errors=True)
    # temporary folders of saves that were killed midway (this function only runs after a complete save)
    for p in root.glob(".tmp-step-*"):
        shutil.rmtree(p, ignore_errors=True)


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint folder meant by `path`: a run's output folder, its `checkpoints/` folder, or a `step-*`
    folder. Raises FileNotFoundError naming what is missing."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}: the path does not exist")
    if (path / STATE).exists() or (path / META).exists():
        return path
    for root in (path, path / "checkpoints"):
        if (root / LATEST).exists():
            name = (root / LATEST).read_text().strip()
            target = root / name
            if not name or not target.is_dir():
                raise FileNotFoundError(f"{root / LATEST} names checkpoint {name!r}, which does not exist")
            return target
    raise FileNotFoundError(f"no checkpoint at {path}: expected a folder with {STATE} and {META}, or a "
                            f"checkpoints folder with a '{LATEST}' file (was a checkpoint ever saved there?)")


def load_checkpoint(path: str | Path) -> dict:
    """Load the state saved by `save_checkpoint` (see `resolve_checkpoint` for what `path` may be).

    Raises FileNotFoundError when there is none, ValueError when its files are truncated or damaged.
    """
    ckpt = resolve_checkpoint(path)
    if not (ckpt / STATE).exists() or not (ckpt / META).exists():
        raise FileNotFoundError(f"checkpoint {ckpt} is incomplete: it needs both {STATE} and {META}")
    try:
        meta = json.loads((ckpt / META).read_text())
        expected_bytes, expected_sha = int(meta["bytes"]), str(meta["sha256"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"checkpoint {ckpt} is corrupt: {META} is unreadable ({err})") from None
    size = (ckpt / STATE).stat().st_size
    if size != expected_bytes:
        raise ValueError(f"checkpoint {ckpt} is corrupt: {STATE} has {size} bytes, {META} records {expected_bytes}")
    if _sha256(ckpt / STATE) != expected_sha:
        raise ValueError(f"checkpoint {ckpt} is corrupt: the SHA-256 of {STATE} does not match {META}")
    try:
        return torch.load(ckpt / STATE, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for unreadable pickles
        raise ValueError(f"checkpoint {ckpt} is corrupt: {STATE} cannot be read ({err})") from None
