"""NHAModel / NHAForCausalLM: cached decoding equals the full forward, w=None equals Llama, packed equals separate."""
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from nha.models import PRESETS, NHACache, NHAConfig, NHAForCausalLM, NHAModel


@pytest.mark.parametrize("name", PRESETS)
def test_step_by_step_decoding_equals_full_forward(name, make_model):
    model = make_model(name)
    ids = torch.randint(0, 256, (2, 21))
    full = model(ids, use_cache=False).logits
    # prefill shorter and longer than the window (8), then one token at a time
    out = model(ids[:, :11], past_key_values=NHACache(model.config.layer_windows), use_cache=True)
    steps = [out.logits]
    for t in range(11, ids.shape[1]):
        out = model(ids[:, t:t + 1], past_key_values=out.past_key_values, use_cache=True)
        steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("tie", [False, True])
def test_all_full_attention_equals_llama(tie):
    kw = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, rms_norm_eps=1e-5, max_position_embeddings=256, tie_word_embeddings=tie,
              rope_parameters={"rope_type": "llama3", "rope_theta": 50000.0, "factor": 8.0, "low_freq_factor": 1.0,
                               "high_freq_factor": 4.0, "original_max_position_embeddings": 32})
    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(**kw)).eval()
    nha = NHAForCausalLM(NHAConfig(window_size=None, num_slots=0, **kw)).eval()
    missing, unexpected = nha.load_state_dict(llama.state_dict(), strict=False)
    assert not missing and not unexpected
    ids = torch.randint(0, 128, (2, 40))
    mask = torch.ones_like(ids)
    mask[1, :7] = 0  # left padding
    for m in (None, mask):
        want = llama(ids, attention_mask=m).logits
        got = nha(ids, attention_mask=m).logits
        keep = slice(None) if m is None else m.bool()
        torch.testing.assert_close(got[keep], want[keep], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["nha-h", "gsa", "swa", "transformer"])
def test_packed_documents_equal_separate_forwards(name, make_model):
    model = make_model(name)
    docs = [torch.randint(0, 256, (1, n)) for n in (13, 5, 20)]
    separate = torch.cat([model(d, use_cache=False).logits for d in docs], 1)
    packed_ids = torch.cat(docs, 1)
    cu = torch.tensor([0, 13, 18, 38], dtype=torch.int32)
    by_cu = model(packed_ids, cu_seqlens=cu).logits
    positions = torch.cat([torch.arange(d.shape[1]) for d in docs])[None]
    by_positions = model(packed_ids, position_ids=positions).logits
    torch.testing.assert_close(by_cu, separate, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(by_positions, separate, atol=1e-5, rtol=1e-5)


def test_a_mask_without_padding_reaches_no_layer(make_model, monkeypatch):
    # an all-ones mask over an empty cache (what HF training and a first prefill pass) is dropped once by the model:
    # same logits, and no layer syncs on it or builds a dense mask; padding or a filled cache keeps it
    model = make_model("nha-h")
    ids = torch.randint(0, 256, (2, 21))
    seen = []
    for layer in model.model.layers:
        forward = layer.self_attn.forward
        monkeypatch.setattr(layer.self_attn, "forward", lambda *a, f=forward, **kw: seen.append(kw.get(
            "attention_mask")) or f(*a, **kw))
    ones = torch.ones_like(ids)
    torch.testing.assert_close(model(ids, attention_mask=ones).logits, model(ids).logits, atol=0, rtol=0)
    assert seen and all(m is None for m in seen)
    seen.clear()
    padded = ones.clone()
    padded[1, :3] = 0
    model(ids, attention_mask=padded)
    assert seen and all(m is padded for m in seen)
    seen.clear()
    out = model(ids[:, :11], past_key_values=NHACache(model.config.layer_windows), use_cache=True)
    model(ids[:, 11:12], attention_mask=torch.ones(2, 12, dtype=torch.long), past_key_values=out.past_key_values,
          use_cache=True)
    assert seen[-1] is not None


def test_packed_documents_reject_a_batch_or_a_cache(model):
    cu = torch.tensor([0, 3, 6], dtype=torch.int32)
    with pytest.raises(ValueError, match="batch size must be 1"):
        model(torch.randint(0, 256, (2, 6)), cu_seqlens=cu)
    with pytest.raises(ValueError, match="without attention_mask or past_key_values"):
        model(torch.randint(0, 256, (1, 6)), cu_seqlens=cu, past_key_values=NHACache(model.config.layer_windows))


def test_loss_and_gradients_with_gradient_checkpointing(make_model):
    model = make_model("nha-h").train()
    ids = torch.randint(0, 256, (2, 24))
    loss = model(ids, labels=ids).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    model.zero_grad()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    loss_ckpt = model(ids, labels=ids).loss
    loss_ckpt.backward()
    torch.testing.assert_close(loss_ckpt, loss)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], atol=1e-6, rtol=1e-5)


def test_base_model_outputs_and_hidden_states(make_model):
    torch.manual_seed(0)
    config = make_model().config
    base = NHAModel(config).eval()
    out = base(torch.randint(0, 256, (2, 9)), output_hidden_states=True, use_cache=False)
    assert out.last_hidden_state.shape == (2, 9, config.hidden_size)
    assert len(out.hidden_states) == config.num_hidden_layers + 1
    assert out.past_key_values is None


def test_inputs_are_checked(model):
    with pytest.raises(ValueError, match="exactly one"):
        model()
    with pytest.raises(ValueError, match="2-D"):
        model(torch.tensor([[1, 2]]), attention_mask=torch.ones(1, 1, 2, 2))


def test_only_slot_layers_have_gates(model):
    names = {n for n, _ in model.named_parameters() if "f_proj" in n}
    want = {f"model.layers.{i}.self_attn.f_proj.weight" for i, w in enumerate(model.config.layer_windows)
            if w is not None}
    assert names == want


@pytest.mark.slow
def test_torch_compile_of_a_forward_matches_eager(make_model):
    # not fullgraph: the operator's input checks and the padding branch read tensor values (graph breaks)
    model = make_model("nha-h")
    ids = torch.randint(0, 256, (2, 32))
    want = model(ids, use_cache=False).logits
    got = torch.compile(model)(ids, use_cache=False).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
