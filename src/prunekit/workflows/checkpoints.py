"""Reading a user's checkpoint files, with a clear error for every way they go wrong.

Checkpoints are read with torch.load(weights_only=True): a file that holds code (a whole
pickled model, or anything malicious) is refused, never executed. The errors say what to do.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import PrunekitError
from ..files import load_tensors
from ..masks import MaskSet, load_masked_state_dict


def read_state_dict(path) -> dict:
    """The state_dict stored in `path` (a file written by torch.save(model.state_dict(), path))."""
    state = load_tensors(path, "checkpoint")
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise PrunekitError(f"{path} does not hold a state_dict (a mapping of names to tensors).")
    return state


def load_into(model: nn.Module, state: dict, source="the checkpoint") -> nn.Module:
    """Load a plain or masked state_dict into a fresh `model`; a mismatch is a clear error."""
    try:
        if len(MaskSet.from_state_dict(state)):
            load_masked_state_dict(model, state)
        else:
            model.load_state_dict(state)
    except RuntimeError as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        detail = (lines[1] if len(lines) > 1 else lines[0])[:160]
        raise PrunekitError(f"{source} does not fit this model ({detail}); pass the --model (and --model-option) "
                            "it was trained with. A compacted model is loaded with prunekit.load.") from None
    return model
