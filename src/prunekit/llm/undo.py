"""Undo for in-place edits of a model's parameters, kept on disk instead of in memory.

A method that reconstructs weights (SparseGPT) rewrites the kept weights of every decoder
block. Holding the new weights until the end would cost a second copy of the decoder's
Linear layers in memory (0.4 GB for a 135M-parameter model); instead each block is written
in place as soon as it is pruned, after its original tensors went to a temporary file. An
exception anywhere inside the `with` restores every saved tensor, so the caller's model is
either completely pruned or exactly as it was:

    with DiskUndo() as undo:
        undo.save(block_parameters)     # before changing them
        ...change them in place...
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch


class DiskUndo:
    def __init__(self):
        self._folder: tempfile.TemporaryDirectory | None = None
        self._saved: list[tuple[Path, dict[str, torch.Tensor]]] = []

    def __enter__(self) -> DiskUndo:
        self._folder = tempfile.TemporaryDirectory(prefix="prunekit-undo-")
        return self

    def save(self, tensors: dict[str, torch.Tensor]) -> None:
        """Write the current values of `tensors` (name → the live parameter) to disk; they are
        put back into the same tensor objects if the block of code fails later."""
        path = Path(self._folder.name) / f"{len(self._saved)}.pt"
        torch.save({name: t.detach().cpu() for name, t in tensors.items()}, path)
        self._saved.append((path, tensors))

    def __exit__(self, exc_type, exc, traceback) -> bool:
        try:
            if exc_type is not None:
                with torch.no_grad():
                    for path, tensors in reversed(self._saved):
                        originals = torch.load(path, weights_only=True)
                        for name, tensor in tensors.items():
                            tensor.copy_(originals[name])
        finally:
            self._folder.cleanup()
            self._saved.clear()
        return False  # the exception goes on to the caller
