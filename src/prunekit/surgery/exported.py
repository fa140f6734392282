"""A model as a `torch.export` program file (.pt2): a graph and its weights that run without
the Python class that defined them, and without prunekit.

The program is traced in eval mode with the batch dimension left free (any batch size runs),
or at the example's exact shapes when the model does not allow that. After writing, the file
is loaded back and its outputs are compared with the model's: a file that does not reproduce
the model is never left behind.

Read it with torch's own loader, `torch.export.load(path).module()`: the module it returns is
already in inference form (it has no train/eval switch). torch reads plain tensors with
weights_only=True but may fall back to full unpickling for custom objects, so, unlike
prunekit's own formats, load only .pt2 files you trust.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from ..errors import PrunekitError
from ..masks import get_masks
from ..modes import evaluation_mode
from ..nested import ExampleInputs
from .common import relative_error


def _trace(model: nn.Module, args: tuple) -> tuple[torch.export.ExportedProgram, str]:
    """(program, "dynamic" | "static"): batch dimension free if the model allows it."""
    batch = torch.export.Dim("batch", min=1)
    dynamic = tuple({0: batch} if isinstance(a, torch.Tensor) and a.dim() > 0 else None for a in args)
    try:
        return torch.export.export(model, args, dynamic_shapes=dynamic), "dynamic"
    except Exception:  # noqa: BLE001  (any tracing failure with a free batch: retry at fixed shapes)
        pass
    try:
        return torch.export.export(model, args), "static"
    except Exception as e:  # noqa: BLE001  (torch.export raises many kinds; all mean "cannot trace")
        raise PrunekitError(f"torch.export cannot trace this model ({type(e).__name__}: {e}). Export it as "
                            "--format compact or onnx instead.") from None


def save_exported(model: nn.Module, example_inputs, path, *, overwrite: bool = False,
                  rtol: float = 1e-5) -> dict:
    """Write `model` (unmasked, run in eval mode) with torch.export.save to `path` (a .pt2 file).

    `example_inputs`: positional inputs (a tensor or a tuple of tensors). Returns {"path",
    "bytes", "batch": "dynamic" | "static", "error": the reloaded program's relative output
    error on the example}. The file is loaded back before this returns; if its outputs differ
    from the model's by more than `rtol` it is removed and PrunekitError raised. An existing
    file is replaced only with overwrite=True; `model` is not changed.
    """
    path = Path(path)
    if path.suffix != ".pt2":
        raise PrunekitError(f"torch.export program files end in .pt2 (torch reads no other name); got {path}.")
    if path.exists() and not overwrite:
        raise PrunekitError(f"{path} exists; pass overwrite=True to replace it or choose another path.")
    if len(get_masks(model)):
        raise PrunekitError("The model carries masks; compact it or bake them (prunekit.remove_masks on a copy) "
                            "before exporting a program.")
    example = ExampleInputs.of(example_inputs)
    if example.kwargs:
        raise PrunekitError("save_exported takes positional example inputs (a tensor or a tuple of tensors).")
    with evaluation_mode(model), torch.no_grad():
        program, batch = _trace(model, tuple(example.args))
        expected = example(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A fresh name beside the target (torch reads only names ending in .pt2): no file of the user's is touched.
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".pt2")
    os.close(handle)
    tmp = Path(name)
    try:
        torch.export.save(program, str(tmp))
        with torch.no_grad():
            error = relative_error(expected, torch.export.load(str(tmp)).module()(*example.args))
        if not error <= rtol:
            raise PrunekitError(f"The exported program's outputs differ from the model's (relative error "
                                f"{error:.2e} > {rtol:g}); nothing was written. Please report this model.")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return {"path": str(path), "bytes": path.stat().st_size, "batch": batch, "error": error}
