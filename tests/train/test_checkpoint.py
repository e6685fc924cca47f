"""Atomic checkpoints: an interrupted save leaves the previous one loadable; damage is reported clearly."""
import json

import pytest
import torch

from nha.train.checkpoint import load_checkpoint, resolve_checkpoint, save_checkpoint


class FailsWhilePickled:
    """Pickling this raises, so torch.save stops with part of the file already written."""

    def __reduce__(self):
        raise RuntimeError("simulated crash in the middle of a checkpoint write")


def test_save_and_load_round_trip(tmp_path):
    state = {"w": torch.arange(5.0), "step": 3, "rng": (1, (2, 3), None)}
    path = save_checkpoint(tmp_path, 3, state)
    assert path.name == "step-00000003" and resolve_checkpoint(tmp_path) == path
    loaded = load_checkpoint(tmp_path)
    assert torch.equal(loaded["w"], state["w"]) and loaded["step"] == 3 and loaded["rng"] == (1, (2, 3), None)


def test_interrupted_write_leaves_the_previous_checkpoint(tmp_path):
    save_checkpoint(tmp_path, 1, {"w": torch.ones(3)})
    big = torch.randn(1 << 16)  # written to the file before the failing object is reached
    with pytest.raises(RuntimeError, match="simulated crash"):
        save_checkpoint(tmp_path, 2, {"a": big, "z": FailsWhilePickled()})
    assert not (tmp_path / "step-00000002").exists()
    assert not list(tmp_path.glob(".tmp-*")), "the half-written temporary folder is removed"
    assert torch.equal(load_checkpoint(tmp_path)["w"], torch.ones(3))


def test_a_killed_save_is_ignored_then_cleaned(tmp_path):
    save_checkpoint(tmp_path, 1, {"w": torch.ones(3)})
    # what a process killed mid-save leaves behind: a temporary folder with a truncated file
    stale = tmp_path / ".tmp-step-00000002-deadbeef"
    stale.mkdir()
    (stale / "state.pt").write_bytes(b"PK\x03\x04 truncated")
    assert torch.equal(load_checkpoint(tmp_path)["w"], torch.ones(3))
    save_checkpoint(tmp_path, 2, {"w": torch.zeros(3)})
    assert not stale.exists() and torch.equal(load_checkpoint(tmp_path)["w"], torch.zeros(3))


def test_keeps_the_newest(tmp_path):
    for step in range(1, 5):
        save_checkpoint(tmp_path, step, {"step": step}, keep=2)
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-00000003", "step-00000004"]


def test_missing_checkpoint_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="was a checkpoint ever saved"):
        load_checkpoint(tmp_path)
    save_checkpoint(tmp_path, 1, {"w": 1})
    (tmp_path / "latest").write_text("step-00000009\n")
    with pytest.raises(FileNotFoundError, match="names checkpoint 'step-00000009', which does not exist"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "flip", "meta"])
def test_corrupt_checkpoint_is_clear(tmp_path, damage):
    path = save_checkpoint(tmp_path, 1, {"w": torch.randn(100)})
    data = (path / "state.pt").read_bytes()
    if damage == "truncate":
        (path / "state.pt").write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        (path / "state.pt").write_bytes(data[:200] + bytes([data[200] ^ 0xFF]) + data[201:])
    else:
        (path / "meta.json").write_text("{not json")
    with pytest.raises(ValueError, match="is corrupt"):
        load_checkpoint(tmp_path)


def test_meta_records_size_and_hash(tmp_path):
    path = save_checkpoint(tmp_path, 7, {"x": 1})
    meta = json.loads((path / "meta.json").read_text())
    assert meta["step"] == 7 and meta["bytes"] == (path / "state.pt").stat().st_size and len(meta["sha256"]) == 64
