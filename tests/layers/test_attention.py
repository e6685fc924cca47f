"""The NHA layer: cached decoding equals one forward, padding is an identity step, options and bad arguments."""
import pytest
import torch

from nha.layers import NativeHybridAttention
from nha.models import NHACache


def make_layer(w, **kw):
    torch.manual_seed(0)
    opts = dict(num_kv_heads=2, num_slots=8, window_size=w)
    opts.update(kw)
    return NativeHybridAttention(64, 4, **opts).eval()


@pytest.mark.parametrize("w", [0, 3, 16, None])
def test_prefill_then_decode_equals_one_forward(w):
    layer = make_layer(w)
    x = torch.randn(2, 13, 64)
    full, _ = layer(x)
    cache = NHACache([w])
    outs = [layer(x[:, :6], past_key_values=cache)[0]]
    for t in range(6, 13):
        outs.append(layer(x[:, t : t + 1], past_key_values=cache)[0])
    assert (torch.cat(outs, 1) - full).abs().max() < 1e-5
    assert cache.get_seq_length() == 13


@pytest.mark.parametrize("w", [0, 3, None])
def test_left_padding_is_an_identity_step(w):
    layer = make_layer(w)
    x = torch.randn(2, 10, 64)
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[0, :4] = 0
    y, _ = layer(x, attention_mask=mask)
    alone, _ = layer(x[:1, 4:])
    assert (y[0, 4:] - alone[0]).abs().max() < 1e-5
    assert y[0, :4].abs().max() == 0
    assert (y[1] - layer(x[1:])[0][0]).abs().max() < 1e-5


@pytest.mark.parametrize("w", [0, 2, 5])
def test_padding_inside_a_sequence_takes_no_window_place_and_decays_nothing(w):
    layer = make_layer(w)
    x = torch.randn(1, 12, 64)
    mask = torch.ones(1, 12, dtype=torch.long)
    mask[0, [3, 4, 8]] = 0
    keep = mask[0].bool()
    y, _ = layer(x, attention_mask=mask)
    dense, _ = layer(x[:, keep])
    assert (y[0, keep] - dense[0]).abs().max() < 1e-5


def test_padded_decode_matches_unpadded():
    layer = make_layer(4)
    x = torch.randn(2, 9, 64)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, :3] = 0
    cache = NHACache([4])
    y0, _ = layer(x[:, :7], attention_mask=mask[:, :7], past_key_values=cache)
    y1, _ = layer(x[:, 7:8], attention_mask=mask[:, :8], past_key_values=cache)
    y2, _ = layer(x[:, 8:9], attention_mask=mask, past_key_values=cache)
    alone, _ = layer(x[1:, 3:])
    got = torch.cat([y0[1, 3:], y1[1], y2[1]])
    assert (got - alone[0]).abs().max() < 1e-5


def test_nha_cache_is_constant_size_while_full_attention_grows():
    layers = [make_layer(4, layer_idx=0), make_layer(None, layer_idx=1)]
    cache = NHACache([4, None])
    x = torch.randn(1, 6, 64)
    for layer in layers:
        layer(x, past_key_values=cache)
    sizes = []
    for _ in range(5):
        for layer in layers:
            layer(torch.randn(1, 1, 64), past_key_values=cache)
        sizes.append((cache.layers[0].state_bytes(), cache.layers[1].keys.shape[2]))
    assert len({s[0] for s in sizes}) == 1
    assert [s[1] for s in sizes] == [7, 8, 9, 10, 11]


@pytest.mark.parametrize("opts", [dict(qk_norm=True), dict(attention_bias=True), dict(v_silu=True),
                                  dict(slot_feature_map="swish", output_norm=True),
                                  dict(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                     "high_freq_factor": 4.0,
                                                     "original_max_position_embeddings": 64})])
def test_layer_options_run_and_decode_consistently(opts):
    layer = make_layer(3, **opts)
    x = torch.randn(1, 8, 64)
    full, _ = layer(x)
    cache = NHACache([3])
    outs = [layer(x[:, :5], past_key_values=cache)[0]] + [layer(x[:, t : t + 1], past_key_values=cache)[0]
                                                           for t in range(5, 8)]
    assert torch.isfinite(full).all()
    assert (torch.cat(outs, 1) - full).abs().max() < 1e-5


def test_packed_documents_equal_separate_calls():
    layer = make_layer(3)
    x = torch.randn(1, 11, 64)
    cu = torch.tensor([0, 4, 11])
    pos = torch.cat([torch.arange(4), torch.arange(7)])[None]
    y, _ = layer(x, cu_seqlens=cu, position_ids=pos)
    assert (y[:, :4] - layer(x[:, :4])[0]).abs().max() < 1e-5
    assert (y[:, 4:] - layer(x[:, 4:])[0]).abs().max() < 1e-5


def test_gradients_reach_every_parameter():
    layer = make_layer(2, output_norm=True).train()
    layer(torch.randn(2, 9, 64))[0].square().mean().backward()
    missing = [n for n, p in layer.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


@pytest.mark.parametrize("kw,match", [
    (dict(window_size=-2), "window_size must be"),
    (dict(num_slots=0, window_size=0), "need num_slots > 0 or a window"),
    (dict(num_kv_heads=3), "multiple of num_kv_heads"),
    (dict(gate_normalizer=0.0), "gate_normalizer"),
    (dict(slot_feature_map="tanh"), "slot_feature_map"),
])
def test_bad_layer_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        NativeHybridAttention(64, 4, **kw)


def test_hidden_size_must_divide_without_head_dim():
    with pytest.raises(ValueError, match="must divide by num_heads"):
        NativeHybridAttention(66, 4)
    assert NativeHybridAttention(66, 4, head_dim=16).head_dim == 16


@pytest.mark.parametrize("w", [4, None])
def test_bf16_autocast_forward_and_backward(w):
    """Under autocast the projections are bf16 and RoPE's cos/sin float32; the layer keeps one dtype."""
    layer = make_layer(w).train()
    x = torch.randn(2, 12, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, _ = layer(x)
    y.float().square().mean().backward()
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    # a full-attention layer keeps its gate projection unused (for reassigning its window later)
    used = [p for n, p in layer.named_parameters() if not (w is None and n.startswith("f_proj"))]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in used)
    packed, _ = layer(x.view(1, 24, 64), cu_seqlens=torch.tensor([0, 12, 24]))
    assert (packed.view(2, 12, 64) - layer(x)[0]).abs().max() < 1e-5


@pytest.mark.parametrize("low_memory", [False, True])
def test_low_memory_backward_reaches_the_operator(low_memory, monkeypatch):
    # the layer asks the operator to recompute its slot path's intermediates in the backward (Triton path) or not
    import nha.layers.attention as attention

    seen = []

    def recording(*args, **kwargs):
        seen.append(kwargs["save_states"])
        return real(*args, **kwargs)

    real = attention.nha_attention
    monkeypatch.setattr(attention, "nha_attention", recording)
    make_layer(3, low_memory_backward=low_memory)(torch.randn(2, 9, 64))
    assert seen == [not low_memory]


@pytest.mark.gpu
def test_gpu_low_memory_backward_gives_the_same_gradients():
    # on CUDA the layer runs the Triton operator; recomputing in the backward changes no bit of any gradient
    x = torch.randn(2, 300, 64, device="cuda", dtype=torch.bfloat16)
    grads = []
    for low_memory in (False, True):
        layer = make_layer(64, low_memory_backward=low_memory).cuda().bfloat16().train()
        layer(x)[0].float().square().mean().backward()
        grads.append([p.grad for p in layer.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*grads))
