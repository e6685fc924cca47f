

def test_layer_switched_to_full_attention_keeps_its_gates_through_save_and_load(tmp_path):
    """Windows can be reassigned after training (issue 7's window search): a layer set to full attention keeps
    its trained gate projection, so it can be switched back after a reload."""
    import torch

    from nha.models import NHAForCausalLM, preset_config

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
