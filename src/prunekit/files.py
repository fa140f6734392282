"""Reading tensor files a user hands us: torch.load(weights_only=True), with a clear error for
every way such a file goes wrong. A file that would need code executed to load is refused."""

from __future__ import annotations

import os
import pickle
import uuid
from contextlib import contextmanager
from pathlib import Path

import torch

from .errors import PrunekitError


def load_tensors(path, what: str = "checkpoint"):
    """The object saved at `path` by torch.save (tensors, dicts, lists, numbers, strings only)."""
    path = Path(path)
    if not path.is_file():
        raise PrunekitError(f"{what.capitalize()} {path} does not exist" + (" (it is a folder)." if path.is_dir() else "."))
    try:
        with open(path, "rb") as f:
            # Given a path, torch picks its reader from the name's suffix, so a torch.save file (a zip:
            # 'PK') named '….safetensors' is read from the handle instead.
            zipped = f.read(2) == b"PK"
            f.seek(0)
            return torch.load(f if zipped else path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "torch.nn.modules" in str(e) or "Module" in str(e):
            raise PrunekitError(f"{path} holds a whole pickled model (torch.save(model)); prunekit never unpickles "
                                "code. Save its weights instead — torch.save(model.state_dict(), path) — or use "
                                "prunekit.save(model, folder).") from None
        raise PrunekitError(f"{path} holds Python objects that would have to be executed to load it; prunekit "
                            f"refuses such files. Save plain tensors (a state_dict) instead.") from None
    except Exception as e:  # torch's loader raises whatever a garbled file provokes (KeyError, EOFError …)
        raise PrunekitError(f"{path} is not a readable {what} (truncated, or another format: "
                            f"{str(e).splitlines()[0][:120] if str(e) else type(e).__name__}).") from None


@contextmanager
def replacing(path):
    """Yields a temporary path beside `path` to write to; when the block succeeds it is renamed
    onto `path` in one step (an interrupted write never leaves half a file), when it fails it is
    deleted. The temporary name is new and hidden, so no file of the user's is ever touched."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.partial")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomically(path, obj) -> Path:
    """torch.save through `replacing`: an interrupted write never leaves half a file."""
    with replacing(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def make_parent(path) -> None:
    """Create the folder `path` goes in; a file standing where a folder must be is a clear error."""
    path = Path(path)
    for folder in path.parents:
        if folder.exists() and not folder.is_dir():
            raise PrunekitError(f"Cannot write {path}: {folder} is a file, not a folder.")
    path.parent.mkdir(parents=True, exist_ok=True)
