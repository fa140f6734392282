"""One-call save and load of a pruned model: safetensors plus a small JSON manifest, no pickle.

    pk.save(model, "lenet.pk")                                   # masked: dense values + masks
    small, record = pk.compact(model, x)
    pk.save(small, "lenet-small.pk", record=record, factory="prunekit.models:lenet300100")
    model = pk.load("lenet-small.pk")                            # factory from the manifest
    model = pk.load("lenet.pk", factory=lambda: MyNet(width=64)) # or your own

A saved model is a folder:
    model.safetensors   every tensor of the state_dict (masked models: '...parametrizations.<t>.original'
                        and the bool '...0.mask'), read back with safetensors — never unpickled
    record.safetensors  for a compacted model: the kept indices of each (tensor, dim)
    prunekit.json       format, what kind of model it is, the factory, the record's shapes and attributes

`load` builds the architecture with the factory (a callable or "package.module:function"), gives
it the compacted shapes from the record, installs the masks, and loads the tensors strictly, so
the outputs are bit-identical to the saved model's. The folder is written next to its final
place and renamed into it: an interrupted save never leaves a half-written model, and an
existing path is never overwritten unless overwrite=True.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from .compaction import CompactionRecord, apply_record
from .errors import PrunekitError
from .masks import MaskSet, get_masks, load_masked_state_dict
from .models import build_model, resolve_factory

FORMAT = "prunekit-model/1"
MANIFEST = "prunekit.json"
WEIGHTS = "model.safetensors"
RECORD = "record.safetensors"


def _safetensors():
    try:
        from safetensors.torch import load_file, save_file
    except ImportError:
        raise PrunekitError("Saving and loading models needs the safetensors package: pip install safetensors.") \
            from None
    return save_file, load_file


def save(model: nn.Module, path, *, record: CompactionRecord | None = None, factory: str | None = None,
         factory_options: dict | None = None, overwrite: bool = False) -> Path:
    """Write `model` (plain, masked, or compacted with its `record`) to the folder `path`.
    `factory` ('package.module:function' or a prunekit model name) and its `factory_options` are
    recorded so that load(path) can rebuild the architecture by itself."""
    if not isinstance(model, nn.Module):
        raise PrunekitError(f"save() takes an nn.Module, not {type(model).__name__}.")
    if factory is not None and not isinstance(factory, str):
        raise PrunekitError("factory= in save() is recorded in the manifest: give it as 'package.module:function'.")
    if factory is not None:
        resolve_factory(factory)  # refuse a factory that would not load later, before writing anything
    path = Path(path)
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise PrunekitError(f"Cannot save to {path}: {parent} is a file, not a folder.")
    if path.exists() and not overwrite:
        raise PrunekitError(f"{path} exists; pass overwrite=True to replace it, or choose another path.")
    save_file, _ = _safetensors()
    masks = get_masks(model)
    # safetensors refuses tensors that share memory (tied weights): each is stored on its own and
    # load_state_dict ties them again through the architecture.
    state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    manifest = {"format": FORMAT, "masked": sorted(masks), "factory": factory,
                "factory_options": dict(factory_options or {}),
                "class": f"{type(model).__module__}.{type(model).__qualname__}",
                "record": None if record is None else {
                    "shapes": {k: list(v) for k, v in record.shapes.items()},
                    "attrs": {m: {a: list(v) if isinstance(v, tuple) else v for a, v in d.items()}
                              for m, d in record.attrs.items()}}}
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        save_file(state, str(staging / WEIGHTS))
        if record is not None:
            save_file({f"{name}|{dim}": index.to(torch.int64).contiguous() for name, dims in record.kept.items()
                       for dim, index in dims.items()}, str(staging / RECORD))
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
        if path.exists():  # overwrite=True: the old folder goes only once the new one is complete
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        os.replace(staging, path)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return path


def read_manifest(path) -> dict:
    path = Path(path)
    manifest = path / MANIFEST
    if not manifest.is_file():
        what = "a file" if path.is_file() else "missing"
        raise PrunekitError(f"{path} is not a model saved by prunekit.save ({what}; expected a folder with "
                            f"{MANIFEST} and {WEIGHTS}).")
    try:
        data = json.loads(manifest.read_text())
    except ValueError:
        raise PrunekitError(f"{manifest} is not valid JSON; the saved model is damaged.") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise PrunekitError(f"{manifest} is not a {FORMAT} manifest.")
    return data


def load(path, factory=None) -> nn.Module:
    """The model saved at `path`, rebuilt by `factory` (default: the factory recorded by save)."""
    path = Path(path)
    manifest = read_manifest(path)
    spec = factory if factory is not None else manifest.get("factory")
    if spec is None:
        raise PrunekitError(f"{path} records no factory: pass load(path, factory=...) — a callable that builds "
                            f"the {manifest['class']} it was saved from, or 'package.module:function'.")
    model = build_model(spec, **(manifest.get("factory_options") or {} if factory is None else {}))
    _, load_file = _safetensors()
    try:
        state = load_file(str(path / WEIGHTS))
    except Exception as e:  # a truncated or foreign file: safetensors' own error names the cause
        raise PrunekitError(f"Cannot read {path / WEIGHTS}: {e}") from None
    if manifest["record"] is not None:
        kept: dict[str, dict[int, torch.Tensor]] = {}
        for key, index in load_file(str(path / RECORD)).items():
            name, _, dim = key.rpartition("|")
            kept.setdefault(name, {})[int(dim)] = index
        record = manifest["record"]
        apply_record(model, CompactionRecord(
            kept, {k: tuple(v) for k, v in record["shapes"].items()},
            {m: {a: tuple(v) if isinstance(v, list) else v for a, v in d.items()} for m, d in record["attrs"].items()}))
    try:
        if manifest["masked"]:
            load_masked_state_dict(model, state)
        else:
            model.load_state_dict(state)
    except RuntimeError as e:
        raise PrunekitError(f"The saved tensors do not fit the model the factory built ({str(e).splitlines()[0]}); "
                            "use the factory of the architecture it was saved from.") from None
    return model


def saved_masks(path) -> MaskSet:
    """The masks of a saved masked model, without building it."""
    _, load_file = _safetensors()
    return MaskSet.from_state_dict(load_file(str(Path(path) / WEIGHTS)))


__all__ = ["load", "read_manifest", "save", "saved_masks"]
