"""Fine-tuning a converted tiny model on CPU: the next-token recipe lowers held-out loss with MLPs frozen, and
attention transfer lowers its own loss; the CLI entry points run end to end, under torchrun too."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from nha.cli import main
from nha.convert import convert_model, save_model
from nha.convert.finetune import AttentionTransfer, FinetuneConfig, finetune, full_attention_twin, set_trainable
from nha.data.sources import TextSource
from nha.models import NHAForCausalLM
from nha.train.loop import next_token_loss

TEXT = "".join(f"line {i % 17}: the quick brown fox jumps over the lazy dog {i % 5}.\n" for i in range(400))


@pytest.fixture
def converted(tmp_path):
    """A converted tiny byte-level Llama (vocab 256) saved without a tokenizer, and a text file."""
    torch.manual_seed(0)
    src = LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                                       num_attention_heads=4, num_key_value_heads=2)).eval()
    model, _ = convert_model(src, window_size=8, num_slots=8, full_attention_layers=[1])
    folder = save_model(model, None, tmp_path / "nha")
    data = tmp_path / "text.txt"
    data.write_text(TEXT)
    return folder, data


def test_next_token_recipe_lowers_heldout_loss_with_mlps_frozen(converted, tmp_path):
    folder, data = converted
    cfg = FinetuneConfig(model=str(folder), out_dir=str(tmp_path / "ft"), steps=25, lr=3e-3, warmup_steps=2,
                         data=[str(data)], tokenizer="bytes", seq_len=64, micro_batch_size=4, val_fraction=0.1,
                         eval_batches=2, progress=False)
    summary = finetune(cfg)
    assert summary["after"]["loss"] < summary["before"]["loss"] - 0.3
    before = NHAForCausalLM.from_pretrained(str(folder)).state_dict()
    after = NHAForCausalLM.from_pretrained(summary["out"]).state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".self_attn." in k for k in changed)  # MLPs, norms and embeddings untouched
    assert "model.layers.1.self_attn.q_proj.weight" in changed  # full-attention layers train too by default
    assert "model.layers.1.self_attn.f_proj.weight" not in changed  # ... but never their unused gate
    with pytest.raises(ValueError, match="already exists"):
        finetune(cfg)


@pytest.mark.parametrize("how", ["caller-autocast", "bf16-option"])
def test_each_bf16_step_sees_the_weights_the_last_step_wrote(converted, tmp_path, how):
    """Step 2's logged loss must be the loss of the weights after step 1. Autocast keeps its bf16 cast of every
    trainable weight until the outermost autocast context exits: the GPU conversion report wrapped `finetune` in one
    such context, every forward read the step-1 weights while AdamW moved the float32 ones blind, and held-out
    perplexity went 218 -> 1925. Both ways of asking for bf16 (a caller's context, `bf16=True`) must see the update."""
    folder, data = converted
    rows = dict(tokenizer="bytes", seq_len=64, micro_batch_size=4, val_fraction=0.1)

    def run(steps: int) -> tuple[dict, dict]:
        cfg = FinetuneConfig(model=str(folder), out_dir=str(tmp_path / f"ft{steps}"), steps=steps, lr=3e-2,
                             warmup_steps=1, data=[str(data)], eval_batches=1, log_every=1, progress=False, **rows,
                             **({"bf16": True} if how == "bf16-option" else {}))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=how == "caller-autocast"):
            summary = finetune(cfg)
        log = [json.loads(line) for line in (Path(summary["out"]) / "finetune_log.jsonl").read_text().splitlines()]
        return summary, {r["step"]: r["loss"] for r in log if r["stage"] == "next-token"}

    one, _ = run(1)  # the same first step as the next run's (lr factor 1 at step 0 in both)
    _, losses = run(2)
    batch = TextSource([str(data)], seed=0, **rows).batch(1, 0)  # step 2's batch

    def replay(model_folder) -> float:
        model = NHAForCausalLM.from_pretrained(str(model_folder)).eval()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            loss, count = next_token_loss(model, batch, torch.device("cpu"))
        return float(loss) / count

    updated, original = replay(one["out"]), replay(folder)
    assert abs(updated - original) > 0.05  # step 1 moved the weights enough to tell the two apart
    assert losses[2] == pytest.approx(updated, abs=1e-4)


def test_attention_transfer_trains_only_nha_layers_and_learns(converted):
    folder, _ = converted
    model = NHAForCausalLM.from_pretrained(str(folder))
    teacher = full_attention_twin(model)
    transfer = AttentionTransfer(model, teacher)
    assert transfer.layers == [0, 2]
    names = set_trainable(model, "distill")
    assert names and all(k.startswith(("model.layers.0.self_attn", "model.layers.2.self_attn")) for k in names)
    ids = torch.randint(0, 256, (1, 96))
    pos, cu = torch.arange(96)[None], torch.tensor([0, 96], dtype=torch.int32)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(15):
        loss = transfer(ids, pos, cu)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0]


def test_cli_convert_then_finetune_distill(converted, tmp_path, capsys):
    folder, data = converted
    rc = main(["finetune", str(folder), "--out", str(tmp_path / "at"), "--recipe", "distill", "--distill-steps", "3",
               "--steps", "2", "--data", str(data), "--tokenizer", "bytes", "--seq-len", "32", "--micro-batch-size",
               "2", "--eval-batches", "1", "--no-progress"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"before", "after_distill", "after", "distill", "next_token"} <= set(summary)
    assert (tmp_path / "at" / "model" / "finetune_log.jsonl").is_file()
    assert main(["finetune", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    assert main(["finetune", str(folder), "--out", str(tmp_path / "y"), "--data", str(data)]) == 2  # no tokenizer


def test_two_process_ddp_matches_one_process(converted, tmp_path):
    """Both stages run on the training loop under torchrun: 2 processes x 1 micro-batch (gloo, DDP) take the same
    steps as 1 process x 2 accumulated micro-batches."""
    folder, data = converted
    common = ["finetune", str(folder), "--recipe", "distill", "--distill-steps", "2", "--distill-lr", "3e-3",
              "--steps", "2", "--lr", "3e-3", "--warmup-steps", "1", "--data", str(data), "--tokenizer", "bytes",
              "--seq-len", "32", "--micro-batch-size", "2", "--log-every", "1", "--eval-batches", "1",
              "--device", "cpu", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2] / "src")}

    def torchrun(nproc: int, name: str, *extra: str) -> tuple[list, dict, str]:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "nha.cli", *common, "--out", str(tmp_path / name), *extra]
        run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
        assert run.returncode == 0, run.stderr[-3000:]
        model = tmp_path / name / "model"
        log = [json.loads(line) for line in (model / "finetune_log.jsonl").read_text().splitlines()]
        curve = [(r["stage"], r["step"], r["loss"]) for r in log if r["stage"] in ("distill", "next-token")]
        return curve, NHAForCausalLM.from_pretrained(str(model)).state_dict(), run.stdout

    one, w1, _ = torchrun(1, "one", "--grad-accum", "2")
    two, w2, printed = torchrun(2, "two")
    summaries = [line for line in printed.splitlines() if line.startswith("{")]
    assert len(summaries) == 1 and json.loads(summaries[0])["out"].endswith("model")  # rank 0 prints, once
    assert [r[:2] for r in one] == [("distill", 1), ("distill", 2), ("next-token", 1), ("next-token", 2)]
    assert [r[:2] for r in two] == [r[:2] for r in one]
    torch.testing.assert_close([r[2] for r in two], [r[2] for r in one], rtol=1e-5, atol=1e-6)
    original = NHAForCausalLM.from_pretrained(str(folder)).state_dict()
    assert any(not torch.equal(w1[k], original[k]) for k in w1)
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-6)
