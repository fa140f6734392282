"""Save and load a sparse model without pickle: one safetensors file.

File layout (format "prunekit.sparse/1"):
  * every dense entry of the model's state_dict under its own key;
  * for each SparseLinear / SparseConv2d at module path p, its weight as three tensors
    p.weight.crow_indices, p.weight.col_indices, p.weight.values (BSR values are
    (blocks, b, b)), and its bias as p.bias;
  * the safetensors metadata "prunekit" holds JSON: the format name, per sparse layer its
    class, layout, matrix size and convolution attributes, and `extra` (e.g. the thread count
    and latency table to_sparse measured).

Loading rebuilds the sparse layers inside a copy of a dense template of the architecture
(the model the sparse one was converted from, freshly built), so no code is read from the file.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from torch import nn

from ..errors import PrunekitError
from ..files import replacing
from ..masks import get_masks
from .sparse_layers import SparseConv2d, SparseLinear, components, from_components

FORMAT = "prunekit.sparse/1"
_PARTS = ("crow_indices", "col_indices", "values")


def _layer_info(module: nn.Module) -> dict:
    info = {"class": type(module).__name__, "layout": module.layout, "size": list(module.weight.shape)}
    if isinstance(module, SparseConv2d):
        info.update(in_channels=module.in_channels, kernel_size=list(module.kernel_size),
                    stride=list(module.stride), padding=list(module.padding), dilation=list(module.dilation))
    return info


def save_sparse(model: nn.Module, path, *, extra: dict | None = None, overwrite: bool = False) -> Path:
    """Write `model` (typically from to_sparse) to `path` as safetensors; returns the path.

    `extra` is any JSON-serialisable dict stored with it (e.g. SparseReport.to_dict()).
    An existing file is only replaced with overwrite=True; the write is atomic.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.exists() and not overwrite:
        raise PrunekitError(f"{path} exists; pass overwrite=True to replace it or choose another path.")
    if len(get_masks(model)):
        raise PrunekitError("The model still carries masks; convert it with to_sparse() (or bake the masks with "
                            "prunekit.remove_masks) before saving it as a sparse file.")
    sparse = {n: m for n, m in model.named_modules() if isinstance(m, (SparseLinear, SparseConv2d))}
    tensors = {}
    for key, value in model.state_dict().items():
        module, _, attr = key.rpartition(".")
        if module in sparse and attr == "weight":
            for part, t in components(value).items():
                tensors[f"{key}.{part}"] = t.contiguous().clone()
        else:
            tensors[key] = value.contiguous().clone()  # clone: safetensors refuses tensors sharing storage
    header = {"format": FORMAT, "layers": {n: _layer_info(m) for n, m in sparse.items()}, "extra": extra or {}}
    try:
        text = json.dumps(header)
    except TypeError as e:
        raise PrunekitError(f"extra must be JSON-serialisable ({e}).") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        save_file(tensors, str(tmp), metadata={"prunekit": text})
    return path


def read_sparse_header(path) -> dict:
    """The JSON header of a sparse file: format, sparse layers, and the `extra` dict saved with it."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise PrunekitError(f"Sparse model file {path} does not exist.")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # not a safetensors file at all
        raise PrunekitError(f"{path} is not a safetensors file ({e}).") from None
    header = json.loads(meta.get("prunekit", "{}"))
    if header.get("format") != FORMAT:
        raise PrunekitError(f"{path} is not a prunekit sparse model ({FORMAT}); was it written by save_sparse?")
    return header


def _rebuild(info: dict, parts: dict, dense: nn.Module, name: str) -> nn.Module:
    weight = from_components(info["layout"], parts, info["size"])
    bias = parts.get("bias")
    if info["class"] == "SparseLinear":
        if not isinstance(dense, nn.Linear) or list(dense.weight.shape) != info["size"]:
            raise PrunekitError(f"Layer '{name}' of the template is {dense}, not a Linear of size {info['size']}; "
                                "pass a fresh instance of the architecture the sparse model came from.")
        return SparseLinear(weight, bias)
    if info["class"] == "SparseConv2d":
        if not isinstance(dense, nn.Conv2d) or dense.out_channels != info["size"][0]:
            raise PrunekitError(f"Layer '{name}' of the template is {dense}, not the Conv2d the file describes; "
                                "pass a fresh instance of the architecture the sparse model came from.")
        return SparseConv2d(weight, bias, info["in_channels"], info["kernel_size"], info["stride"], info["padding"],
                            info["dilation"])
    raise PrunekitError(f"Unknown sparse layer class {info['class']!r} in the file.")


def load_sparse(path, template: nn.Module) -> nn.Module:
    """The sparse model stored at `path`, rebuilt in a copy of `template` (a fresh, unmasked instance of
    the architecture it was converted from, e.g. factory()). `template` itself is not changed."""
    from safetensors.torch import load_file

    header = read_sparse_header(path)
    if len(get_masks(template)):
        raise PrunekitError("The template carries masks; pass a fresh instance of the architecture.")
    tensors = load_file(str(path))
    model = copy.deepcopy(template)
    replaced = set()
    for name, info in header["layers"].items():
        try:
            dense = model.get_submodule(name)
            parts = {p: tensors.pop(f"{name}.weight.{p}") for p in _PARTS}
        except (AttributeError, KeyError):
            raise PrunekitError(f"The file's sparse layer '{name}' is missing from the template or the file; pass "
                                "a fresh instance of the architecture the sparse model came from.") from None
        if f"{name}.bias" in tensors:
            parts["bias"] = tensors.pop(f"{name}.bias")
        model.set_submodule(name, _rebuild(info, parts, dense, name))
        replaced |= {f"{name}.weight", f"{name}.bias"}
    try:
        result = model.load_state_dict(tensors, strict=False)
    except RuntimeError as e:
        raise PrunekitError(f"The file does not fit the template ({e}).") from None
    missing = [k for k in result.missing_keys if k not in replaced]
    if missing or result.unexpected_keys:
        raise PrunekitError(f"The file does not fit the template (missing {missing[:5]}, unexpected "
                            f"{result.unexpected_keys[:5]}); pass the architecture the sparse model came from.")
    return model.eval()
