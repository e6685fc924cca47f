"""save_pretrained -> from_pretrained (safetensors) and the Auto classes after `import nha.models`."""
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

import nha.models  # noqa: F401  (registers model_type "nha")
from nha.models import NHAConfig, NHAForCausalLM, NHAModel, preset_config


def test_save_load_round_trip(tmp_path, make_model):
    model = make_model("nha-h", tie_word_embeddings=True)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    ids = torch.randint(0, 256, (2, 15))
    want = model(ids).logits
    for loaded in (NHAForCausalLM.from_pretrained(tmp_path), AutoModelForCausalLM.from_pretrained(tmp_path)):
        assert type(loaded) is NHAForCausalLM
        assert loaded.config.layer_windows == model.config.layer_windows
        torch.testing.assert_close(loaded.eval()(ids).logits, want, atol=0, rtol=0)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), NHAConfig)
    assert type(AutoModel.from_pretrained(tmp_path)) is NHAModel
def test_layer_switched_to_full_attention_keeps_its_gates_through_save_and_load(tmp_path):
    """Windows can be reassigned after training (issue 7's window search): a layer set to full attention keeps
    its trained gate projection, so it can be switched back after a reload."""
    model = NHAForCausalLM(preset_config("nha", "tiny")).eval()
    gate = model.model.layers[1].self_attn.f_proj.weight.detach().clone()
    windows = model.config.layer_windows
    windows[1] = None
    model.config.window_size = windows
    model.model.layers[1].self_attn.window_size = None
    model.save_pretrained(tmp_path)
    loaded = NHAForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.config.layer_windows[1] is None
    assert torch.equal(loaded.model.layers[1].self_attn.f_proj.weight, gate)
    ids = torch.randint(0, 256, (1, 12))
    assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_low_memory_backward_is_a_saved_config_field_every_layer_takes(tmp_path):
    config = preset_config("nha", "tiny", vocab_size=64, num_hidden_layers=2, low_memory_backward=True)
    NHAForCausalLM(config).save_pretrained(tmp_path)
    loaded = NHAForCausalLM.from_pretrained(tmp_path)
    assert loaded.config.low_memory_backward
    assert all(layer.self_attn.low_memory_backward for layer in loaded.model.layers)
    assert not NHAForCausalLM(preset_config("nha", "tiny", vocab_size=64, num_hidden_layers=2)).model.layers[0] \
        .self_attn.low_memory_backward
