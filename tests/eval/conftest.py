import os

# set before lm-eval / datasets are imported: without them any hub access waits 20-50 s before failing
for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_var, "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from nha.models import NHAForCausalLM, preset_config  # noqa: E402


@pytest.fixture
def tiny():
    """The tiny NHA-H preset (layers [8, full, 8, full]; full layers built without slots), seeded weights."""
    torch.manual_seed(0)
    return NHAForCausalLM(preset_config("nha-h", "tiny")).eval()
