"""The source documents' experiments, one function each (a–l); `run_experiment(name)`.

    a  tickets      winning ticket vs reinit vs random mask down to ≤ 2 % of the weights
    b  rewind       rewinding to iteration k vs 0
    c  augment      strong augmentation vs none: ticket's advantage over reinit
    d  dropout      dropout-trained vs plain: accuracy drop after the same pruning
    e  landscape    restricted-Hessian λmax and κ vs the rewinding point τ
    f  mincut       removing one class: minimum cut vs attribution vs random units
    g  gating       input-dependent channel gates vs static channel pruning at equal FLOPs
    h  notebook     the mnist1d notebook's lottery procedure (residual MLP, hidden 500)
    i  lenet-paper  LeNet-300-100 with Frankle & Carbin's per-layer rates (output at half),
                    on MNIST-5k and Fashion-MNIST
    j  channels-vs-heads  CNN channels vs ViT attention heads under the same FLOPs budgets
    k  block-removal      removing blocks of a trained ResNet vs a plain CNN of the same depth
    l  grasp-vs-snip      pruning at initialisation (SNIP, GraSP, magnitude, random) at 90–99 %, then training

Each writes <out>/<folder>/table.md (+ csv/json) and plot.png, with mean ± std over the
seeds (≥ 3 for the reported tables).
"""

from __future__ import annotations

import time
from pathlib import Path

from ..errors import PrunekitError, did_you_mean
from .block_removal import experiment_k
from .capability import experiment_f
from .channels_heads import experiment_j
from .common import SCALES
from .faithful import experiment_h, experiment_i
from .gating import experiment_g
from .init_pruning import experiment_l
from .landscape_rewind import experiment_e
from .progress import WorkProgress, duration
from .robustness import experiment_d
from .tickets import experiment_a, experiment_b, experiment_c

EXPERIMENTS = {"a": experiment_a, "b": experiment_b, "c": experiment_c, "d": experiment_d, "e": experiment_e,
               "f": experiment_f, "g": experiment_g, "h": experiment_h, "i": experiment_i,
               "j": experiment_j, "k": experiment_k, "l": experiment_l}
ALIASES = {"tickets": "a", "rewind": "b", "augment": "c", "dropout": "d", "landscape": "e", "mincut": "f", "gating": "g", "notebook": "h",
           "lenet-paper": "i", "channels-vs-heads": "j",
           "block-removal": "k", "grasp-vs-snip": "l"}


def run_experiment(name: str, out: str | Path = "runs/experiments", *, seeds=(0, 1, 2), scale: str = "full",
                   log=print) -> str:
    """Run (or resume) experiment `name` (a–l or its alias); returns its Markdown table. Each
    finished (setting, seed) unit is logged with the time spent and an estimate of the time left."""
    key = ALIASES.get(name, name)
    if key not in EXPERIMENTS:
        choices = list(EXPERIMENTS) + list(ALIASES)
        raise PrunekitError(f"Unknown experiment '{name}'.{did_you_mean(name, choices)} "
                            f"Choose one of {', '.join(choices)}.")
    if scale not in SCALES:
        raise PrunekitError(f"scale must be one of {SCALES}, not {scale!r}.")
    if len(seeds) < 1:
        raise PrunekitError("Give at least one seed (three or more for mean ± std).")
    progress = WorkProgress(key, log)
    text = EXPERIMENTS[key](Path(out), list(seeds), scale, log, progress)
    log(f"[experiment {key}] finished in {duration(time.monotonic() - progress.start)}")
    return text


__all__ = ["ALIASES", "EXPERIMENTS", "run_experiment"]
