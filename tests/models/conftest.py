"""Shared helpers of the model tests: tiny seeded models of every preset."""
import pytest
import torch

from nha.models import NHAForCausalLM, preset_config


def tiny_model(name: str = "nha-h", seed: int = 0, **overrides) -> NHAForCausalLM:
    """A tiny float32 model in eval mode; weights depend only on the seed."""
    torch.manual_seed(seed)
    return NHAForCausalLM(preset_config(name, "tiny", **overrides)).eval()


@pytest.fixture
def make_model():
    """`make_model(name="nha-h", seed=0, **overrides)`: a tiny seeded model (see `tiny_model`)."""
    return tiny_model


@pytest.fixture
def model():
    return tiny_model()
