"""save_pretrained -> from_pretrained (safetensors) and the Auto classes after `import nha.models`."""
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

import nha.models  # noqa: F401  (registers model_type "nha")
from nha.models import NHAConfig, NHAForCausalLM, NHAModel


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
