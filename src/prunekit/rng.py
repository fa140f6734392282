"""Every random-number state a run depends on, as plain tensors (saveable with weights_only).

A resumed run must continue with the generators exactly where the uninterrupted run had them:
dropout and random augmentations draw from torch's global generator, some data code from numpy's
or Python's. `capture()` after a checkpoint and `restore()` on resume make a killed-and-resumed
run bit-identical to one that never stopped.
"""

from __future__ import annotations

import random

import numpy as np
import torch


def capture() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, state, gauss = random.getstate()
    return {"torch": torch.get_rng_state(),
            "numpy": {"keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached": float(cached), "kind": kind},
            "python": {"version": version, "state": torch.tensor(state, dtype=torch.int64), "gauss": gauss}}


def restore(saved: dict) -> None:
    torch.set_rng_state(saved["torch"])
    n = saved["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = saved["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))
