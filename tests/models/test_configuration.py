"""NHAConfig: per-layer layouts, the full-attention helpers, rope fields, presets, and clear errors."""
import pytest

from nha.models import PRESETS, NHAConfig, preset_config


def test_full_attention_helpers_fold_into_the_window_list():
    cfg = NHAConfig(num_hidden_layers=8, window_size=64, full_attention_every=4)
    assert cfg.layer_windows == [64, 64, 64, None, 64, 64, 64, None]
    cfg = NHAConfig(num_hidden_layers=4, window_size=16, num_slots=32, full_attention_layers=[0, -1])
    assert cfg.layer_windows == [None, 16, 16, None]
    assert cfg.layer_slots == [0, 32, 32, 0]
    assert NHAConfig.from_dict(cfg.to_dict()).layer_windows == cfg.layer_windows


def test_rope_fields_as_in_transformers():
    assert NHAConfig(rope_theta=5e5).rope_parameters == {"rope_theta": 5e5, "rope_type": "default"}
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}
    cfg = NHAConfig(rope_scaling=dict(scaling), rope_theta=5e5)
    assert cfg.rope_parameters == {**scaling, "rope_theta": 5e5}
    assert cfg.rope_scaling == cfg.rope_parameters


def test_presets_are_layouts_of_one_module():
    layouts = {name: preset_config(name) for name in PRESETS}
    assert layouts["transformer"].layer_windows == [None] * 4
    assert layouts["swa"].layer_slots == [0] * 4 and layouts["swa"].layer_windows == [8] * 4
    assert layouts["gsa"].layer_windows == [0] * 4 and layouts["gsa"].layer_slots == [8] * 4
    assert layouts["gsa-h"].layer_windows == [0, None, 0, None]
    assert layouts["nha"].layer_windows == [8] * 4 and layouts["nha"].layer_slots == [8] * 4
    assert layouts["nha-h"].layer_windows == [8, None, 8, None]
    big = preset_config("nha-h", "340m")
    assert big.layer_windows.count(None) == 4 and big.hidden_size == 1024 and big.num_hidden_layers == 24
    assert preset_config("nha", "1.3b", window_size=64).window_size == 64


@pytest.mark.parametrize("kwargs, message", [
    (dict(window_size=-1), "window_size of layer 0"),
    (dict(num_hidden_layers=3, window_size=[4, None]), "has 2 entries but num_hidden_layers is 3"),
    (dict(num_hidden_layers=2, num_slots=[4, 4, 4]), "num_slots has 3 entries"),
    (dict(hidden_size=100, num_attention_heads=3), "must be divisible by num_attention_heads"),
    (dict(num_attention_heads=4, num_key_value_heads=3), "multiple of num_key_value_heads"),
    (dict(window_size=0, num_slots=0), "attend to nothing"),
    (dict(num_slots=-2), "num_slots of layer 0"),
    (dict(full_attention_every=0), "full_attention_every"),
    (dict(num_hidden_layers=4, full_attention_layers=[4]), "not a layer index"),
    (dict(gate_normalizer=0), "gate_normalizer"),
    (dict(slot_feature_map="relu"), "slot_feature_map"),
    (dict(hidden_size=0), "hidden_size must be a positive int"),
    (dict(hidden_act="swishy"), "hidden_act"),
])
def test_bad_values_raise_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        NHAConfig(**kwargs)


def test_unknown_preset_or_size():
    with pytest.raises(ValueError, match="unknown preset"):
        preset_config("mamba")
    with pytest.raises(ValueError, match="unknown size"):
        preset_config("nha", "7b")
