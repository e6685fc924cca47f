"""The training loop end to end on CPU: loss falls, resume is bitwise, DDP under torchrun matches one process."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nha.cli import main
from nha.train.config import TrainConfig
from nha.train.loop import train

# a 2-layer hybrid: layer 0 NHA (window 4, 4 slots), layer 1 full attention
TINY = dict(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=2,
            window_size=4, num_slots=4)
MQAR = dict(vocab_size=16, num_pairs=2)


def config(tmp_path, name="run", **kw):
    base = dict(model="nha-h", overrides=dict(TINY), task="mqar", task_args=dict(MQAR), seq_len=12,
                micro_batch_size=8, steps=12, lr=1e-2, warmup_steps=2, eval_every=6, eval_batches=2, log_every=1,
                save_every=4, out_dir=str(tmp_path / name), progress=False, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def losses(out: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "loss" in r]


def weights(out: Path) -> dict:
    return load_file(str(out / "model" / "model.safetensors"))


def test_loss_falls_on_text(tmp_path):
    (tmp_path / "a.txt").write_text("the quick brown fox jumps over the lazy dog. " * 60)
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps({"text": "a b c d e f g " * 20}) for _ in range(5)))
    cfg = config(tmp_path, task=None, task_args={}, data=[str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl")],
                 seq_len=32, micro_batch_size=4, steps=30, lr=1e-2, eval_every=30)
    result = train(cfg)
    curve = losses(tmp_path / "run")
    assert len(curve) == 30 and sum(curve[-5:]) / 5 < sum(curve[:5]) / 5 - 1.0
    assert result.eval["eval_loss"] < curve[0]
    assert (tmp_path / "run" / "model" / "config.json").exists()


def test_resume_is_bitwise(tmp_path):
    train(config(tmp_path, "straight"))
    train(config(tmp_path, "stopped", stop_after=5))
    assert len(losses(tmp_path / "stopped")) == 5
    train(config(tmp_path, "stopped", resume="auto"))
    assert losses(tmp_path / "stopped") == losses(tmp_path / "straight")
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "stopped")
    assert all(torch.equal(a[k], b[k]) for k in a)


def _torchrun(args, nproc, env):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "nha.cli", "train", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)


@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp2"])
def test_two_process_gloo_matches_one_process(tmp_path, fsdp):
    # layer 1 is full attention that keeps its (unused) gate: DDP must be told, and the optimizer skips it
    common = ["--model", "nha", "--task", "mqar", "--task-arg", "vocab_size=16", "--task-arg", "num_pairs=2",
              "--seq-len", "12", "--steps", "4", "--lr", "1e-2", "--warmup-steps", "1", "--log-every", "1",
              "--eval-every", "4", "--eval-batches", "2", "--device", "cpu", "--no-progress", "--micro-batch-size", "4"]
    common += [x for k, v in {**TINY, "window_size": "[4, null]"}.items() for x in ("--set", f"{k}={v}")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    one = _torchrun(common + ["--grad-accum", "2", "--out", str(tmp_path / "one")], 1, env)
    assert one.returncode == 0, one.stderr[-3000:]
    two = _torchrun(common + ["--out", str(tmp_path / "two")] + (["--fsdp"] if fsdp else []), 2, env)
    assert two.returncode == 0, two.stderr[-3000:]
    torch.testing.assert_close(losses(tmp_path / "two"), losses(tmp_path / "one"), rtol=1e-5, atol=1e-6)
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert a.keys() == b.keys() and "model.layers.1.self_attn.f_proj.weight" in a
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kwargs,match", [
    (dict(steps=0), "steps must be a positive int"),
    (dict(lr=0.0), "lr must be > 0"),
    (dict(data=["x.txt"]), "either --task"),
    (dict(task=None, task_args={"num_pairs": 2}), "need --task"),
    (dict(min_lr_ratio=2.0), "min_lr_ratio must be in"),
])
def test_bad_config_is_clear(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        config(tmp_path, **kwargs)


def test_bad_arguments_through_the_cli(tmp_path, capsys):
    out = str(tmp_path / "cli")
    assert main(["train", "--model", "mamba", "--task", "mqar", "--out", out]) == 2
    assert "neither a preset" in capsys.readouterr().err
    assert main(["train", "--set", "window_size", "--out", out]) == 2
    assert "--set takes key=value" in capsys.readouterr().err
    assert main(["train", "--task", "mqar", "--task-arg", "num_pairs=40", "--seq-len", "16", "--out", out]) == 2
    assert "vocab_size must be at least 82" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "none"), "--out", out]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
    assert main(["train", "--model", "transformer", "--set", "vocab_size=10", "--task", "mqar", "--out", out]) == 2
    assert "smaller than the data's vocabulary" in capsys.readouterr().err


def test_refuses_to_overwrite_a_run(tmp_path):
    train(config(tmp_path, "r", steps=2))
    with pytest.raises(ValueError, match="already holds checkpoints"):
        train(config(tmp_path, "r", steps=2))
    with pytest.raises(ValueError, match="nothing left to do"):
        train(config(tmp_path, "r", steps=2, resume="auto"))
