"""Conversion: w=None reproduces the source (tiny Llama / Mistral / Qwen2 / Qwen3 and the real SmolLM2), the key map
round-trips, hybrids generate with constant-size NHA state, gates start in the paper's regime, bad input fails."""
import json

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

import nha  # noqa: F401  (registers the NHA Auto classes)
from nha.convert import (FROM_HF, convert_model, default_full_attention_layers, from_hf, gate_from_keys,
                         pooling_matrix, save_model, to_hf)
from nha.models import NHACache, NHAStateLayer

from convert_sources import ARCHS, COMMON, tiny_source


def gate_keys(model) -> list[str]:
    return [f"model.layers.{i}.self_attn.f_proj.weight" for i, layer in enumerate(model.model.layers)
            if layer.self_attn.f_proj is not None]


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).norm() / want.norm())


@pytest.mark.parametrize("arch", list(ARCHS))
def test_full_attention_conversion_reproduces_the_source(arch):
    src = tiny_source(arch)
    model, report = convert_model(src, window_size=None)
    assert not report.dropped and len(report.mapped) == len(src.state_dict())
    assert report.new == gate_keys(model)  # the only new weights: gates (kept in full layers for later windows)
    ids = torch.randint(0, 128, (2, 48))
    with torch.no_grad():
        assert rel_err(model(ids).logits, src(ids).logits) <= 1e-4


def test_smollm2_full_attention_conversion_reproduces_the_source(smollm2):
    src, tok = smollm2
    model, report = convert_model(src, window_size=None)
    assert len(report.mapped) == len(src.state_dict()) and report.new == gate_keys(model)
    ids = tok("Shall I compare thee to a summer's day? Thou art more lovely and more temperate:",
              return_tensors="pt").input_ids
    with torch.no_grad():
        assert rel_err(model(ids).logits, src(ids).logits) <= 1e-4


def test_smollm2_hybrid_keeps_the_layout_and_stays_close_on_short_text(smollm2):
    src, tok = smollm2
    model, report = convert_model(src)  # defaults: w=64, M=64, full attention in 7, 15, 23, 29
    assert report.full_attention_layers == [7, 15, 23, 29]
    assert model.config.layer_windows.count(64) == 26 and report.new == gate_keys(model)
    # shorter than the window, no token has reached the slots: the hybrid is still exactly the source
    ids = tok("To be, or not to be, that is the question:", return_tensors="pt").input_ids
    with torch.no_grad():
        assert rel_err(model(ids).logits, src(ids).logits) <= 1e-4


@pytest.mark.parametrize("arch", list(ARCHS))
def test_key_map_round_trips(arch):
    sd = tiny_source(arch).state_dict()
    sd["model.rotary_emb.inv_freq"] = torch.ones(4)  # a RoPE table old checkpoints saved: dropped, not mapped
    mapped_sd, mapped, dropped = from_hf(sd)
    assert dropped == ["model.rotary_emb.inv_freq"] and set(mapped) == set(sd) - set(dropped)
    back, nha_only = to_hf({**mapped_sd, "model.layers.0.self_attn.f_proj.weight": torch.zeros(1)})
    assert nha_only == ["model.layers.0.self_attn.f_proj.weight"]
    assert set(back) == set(mapped) and all(torch.equal(back[k], sd[k]) for k in mapped)


def test_key_map_rejects_a_weight_it_cannot_place():
    with pytest.raises(ValueError, match="no place in an NHA model"):
        from_hf({"model.layers.0.self_attn.o_proj.bias": torch.zeros(4)})
    assert all(k.count("{}") <= 1 for k in FROM_HF)


def test_hybrid_generates_with_constant_state_in_nha_layers():
    model, report = convert_model(tiny_source("llama"), window_size=4, num_slots=8, full_attention_layers=[1])
    assert report.full_attention_layers == [1] and report.new == gate_keys(model)
    ids = torch.randint(0, 128, (1, 12))
    out = model.generate(ids, max_new_tokens=20, do_sample=False, return_dict_in_generate=True)
    assert out.sequences.shape == (1, 32)
    cache = out.past_key_values
    assert isinstance(cache.layers[0], NHAStateLayer) and isinstance(cache.layers[2], NHAStateLayer)
    sizes = []
    for n in (12, 40):
        c = NHACache(model.config.layer_windows)
        with torch.no_grad():
            model(torch.randint(0, 128, (1, n)), past_key_values=c, use_cache=True)
        sizes.append((c.layers[0].state_bytes(), c.layers[2].state_bytes(), c.layers[1].keys.shape[2]))
    assert sizes[0][:2] == sizes[1][:2] and sizes[0][2] == 12 and sizes[1][2] == 40
    # cached decoding of the converted model equals its full forward
    ids = torch.randint(0, 128, (1, 20))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        out = model(ids[:, :9], past_key_values=NHACache(model.config.layer_windows), use_cache=True)
        steps = [out.logits]
        for t in range(9, 20):
            out = model(ids[:, t:t + 1], past_key_values=out.past_key_values, use_cache=True)
            steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_default_layout_is_one_full_layer_in_every_eight():
    assert default_full_attention_layers(30) == [7, 15, 23, 29]
    assert default_full_attention_layers(16) == [7, 15]
    assert default_full_attention_layers(3) == [2]


def test_gates_derive_from_keys_at_the_from_scratch_spread():
    assert torch.equal(pooling_matrix(8, 8), torch.eye(8))
    P = pooling_matrix(4, 8)
    assert torch.equal(P[0], torch.tensor([0.5, 0.5, 0, 0, 0, 0, 0, 0]))
    wide = pooling_matrix(12, 8)
    assert torch.linalg.matrix_rank(wide[8:] - wide[8:].mean(0)) > 0 and len({tuple(r.tolist()) for r in wide}) == 12
    k = torch.randn(2 * 8, 32) * 3.0
    w = gate_from_keys(k, num_kv_heads=2, num_slots=4, target_std=0.5)
    assert w.shape == (8, 32)
    # head 1's gate rows are (scaled) pooled rows of head 1's keys only
    torch.testing.assert_close(w[4] / w[4].norm(), (k[8] + k[9]) / (k[8] + k[9]).norm())
    f = torch.randn(20000, 32) @ w.T
    assert abs(float(f.std()) - 0.5) < 0.05
    model, _ = convert_model(tiny_source("llama"), window_size=4, num_slots=8, full_attention_layers=[1])
    with torch.no_grad():
        g = F.logsigmoid(model.model.layers[0].self_attn.f_proj(torch.randn(1000, 64))) / 8
    assert -0.2 < float(g.mean()) < -0.04  # decays around exp(log(1/2) / 8) = 0.92 per token


def test_gates_derive_on_the_keys_device():
    # a source already on a GPU converts there: the pooling rows (drawn on the CPU) follow the keys. "meta" stands in
    # for another device here; it fails the same way (CPU rows against the keys' device) when they do not follow
    w = gate_from_keys(torch.empty(2 * 8, 32, device="meta"), num_kv_heads=2, num_slots=4, target_std=0.5)
    assert w.device.type == "meta" and w.shape == (8, 32)
    w = gate_from_keys(torch.empty(2 * 8, 32, device="meta"), num_kv_heads=2, num_slots=4, target_std=0.5,
                       norm_weight=torch.empty(32, device="meta"))
    assert w.device.type == "meta"


def test_unsupported_models_and_bad_layouts_fail_clearly():
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(ValueError, match="supported architectures are LlamaForCausalLM, MistralForCausalLM"):
        convert_model(gpt2)
    src = tiny_source("llama")
    with pytest.raises(ValueError, match="layer 3 is not a layer index .* 3 layers, 0..2"):
        convert_model(src, full_attention_layers=[0, 3])
    with pytest.raises(ValueError, match="listed twice"):
        convert_model(src, full_attention_layers=[1, 1])
    with pytest.raises(ValueError, match="window_size must be an int >= 0"):
        convert_model(src, window_size=-2)
    biased = LlamaForCausalLM(LlamaConfig(**COMMON, attention_bias=True))
    with pytest.raises(ValueError, match="output-projection bias"):
        convert_model(biased)


def test_saved_conversion_loads_with_auto_classes(tmp_path):
    model, _ = convert_model(tiny_source("qwen3"), window_size=4, num_slots=8, full_attention_layers=[2])
    out = save_model(model, None, tmp_path / "out")
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.randint(0, 128, (1, 30))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)
    with pytest.raises(ValueError, match="already exists"):
        save_model(model, None, out)
    save_model(model, None, out, overwrite=True)
    assert not [p for p in tmp_path.iterdir() if p.name != "out"]  # no temporary or old folders left behind


def test_cli_convert_writes_a_loadable_folder(tmp_path, capsys):
    from nha.cli import main

    src = tiny_source("qwen2")
    src.save_pretrained(tmp_path / "src")
    out = tmp_path / "out"
    assert main(["convert", str(tmp_path / "src"), str(out), "--window", "4", "--slots", "8",
                 "--full-attention-layers", "0,2"]) == 0
    record = json.loads((out / "conversion.json").read_text())
    assert record["full_attention_layers"] == [0, 2] and not record["dropped"]
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert loaded.config.layer_windows == [None, 4, None]
    assert main(["convert", str(tmp_path / "src"), str(tmp_path / "bad"), "--full-attention-layers", "7"]) == 2
    assert "not a layer index" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert main(["convert", str(tmp_path / "nowhere"), str(tmp_path / "o")]) == 2
