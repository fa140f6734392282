"""Experiment k: removing whole blocks from a trained residual network vs a plain one of the
same depth (Veit et al. 2016: residual networks behave like ensembles of shallower paths and
degrade gracefully; plain networks collapse).

Per seed, two StackNets with the same layers are trained the same way: one with identity
shortcuts (a ResNet), one without (the plain network). Only blocks whose input and output have
the same shape can go (not the first block of a stage that downsamples and widens):
  * ResNet — the residual branch f of y = relu(x + f(x)) is removed by masking every parameter
    of it (prunekit.blocks: `find_residual_blocks` finds the branches; the masked branch outputs
    exact zeros, so the block computes relu(x) = x, as x ≥ 0 after the previous ReLU);
  * plain  — the same block, y = relu(f(x)), is replaced by nn.Identity: the only removal that
    keeps the shapes, and the same function the ResNet is left with.
For k = 1, 2, … the same random subsets of k removable blocks are removed from both networks
(every subset when there are few), without any retraining; for the ResNet also the k branches
`prune_blocks` chooses (smallest relative branch output on calibration data). Reported: test
accuracy, mean over subsets (and the worst subset), then mean ± std over seeds.
"""

from __future__ import annotations

import copy
import itertools
import random
from pathlib import Path

import torch
from torch import nn

from ..blocks import find_residual_blocks
from ..data import load_dataset
from ..masks import apply_masks
from ..plots import line_plot
from ..prune import prune_blocks
from ..training import TrainConfig, evaluate, train
from .common import mean_std, pm, run_seeds, write_outputs
from .nets import StackNet
from .progress import WorkProgress


def _settings(scale: str) -> dict:
    if scale == "quick":
        return dict(dataset="digits", widths=(4, 8, 8), blocks_per_stage=2, stem_stride=1, steps=15, batch_size=64,
                    max_k=2, subsets=2)
    return dict(dataset="mnist5k", widths=(8, 16, 32), blocks_per_stage=3, stem_stride=2, steps=300, batch_size=64,
                max_k=5, subsets=10)


def _subsets(candidates: list[int], k: int, count: int, rng: random.Random) -> list[tuple[int, ...]]:
    """Every k-subset when there are at most `count`, else `count` distinct random ones."""
    every = list(itertools.combinations(candidates, k))
    return every if len(every) <= count else rng.sample(every, count)


def _without_branches(model: StackNet, branches: dict[int, list[str]], indices) -> nn.Module:
    """A copy of the ResNet with the residual branches of blocks `indices` masked to zero."""
    trial = copy.deepcopy(model)
    params = dict(trial.named_parameters())
    apply_masks(trial, {name: torch.zeros_like(params[name], dtype=torch.bool)
                        for i in indices for name in branches[i]})
    return trial


def _without_blocks(model: StackNet, indices) -> nn.Module:
    """A copy of the plain network with blocks `indices` replaced by the identity."""
    trial = copy.deepcopy(model)
    for i in indices:
        trial.blocks[i] = nn.Identity()
    return trial


def _one_seed(seed: int, settings: dict, log) -> dict:
    data = load_dataset(settings["dataset"])
    nets = {}
    for name, residual in (("resnet", True), ("plain", False)):
        torch.manual_seed(seed)
        nets[name] = StackNet(data.num_classes, data.input_shape[0], settings["widths"], settings["blocks_per_stage"],
                              residual=residual, stem_stride=settings["stem_stride"])
        train(nets[name], data.train, TrainConfig(optimizer="adam", lr=2e-3, steps=settings["steps"],
                                                  batch_size=settings["batch_size"], seed=seed), progress=False)
    x = data.example_input(2)
    found = [b for b in find_residual_blocks(nets["resnet"], x) if b.prunable]
    branches = {int(b.name.split(".")[1]): b.params for b in found}  # "blocks.4.body" → 4
    candidates = [i for i, block in enumerate(nets["plain"].blocks) if block.keeps_shape]
    assert sorted(branches) == candidates, (sorted(branches), candidates)  # same blocks removable in both

    def accuracy(model):
        return evaluate(model, data.test)["accuracy"]

    remove = {"resnet": lambda idx: _without_branches(nets["resnet"], branches, idx),
              "plain": lambda idx: _without_blocks(nets["plain"], idx)}
    result = {"dense": {name: accuracy(net) for name, net in nets.items()}, "single": {}, "k": {}}
    for name in nets:
        result["single"][name] = {str(i): accuracy(remove[name]([i])) for i in candidates}
    rng = random.Random(seed)
    xs, ys = data.train.tensors
    calibration = [(xs[:256], ys[:256])]
    for k in range(1, min(settings["max_k"], len(candidates)) + 1):
        subsets = _subsets(candidates, k, settings["subsets"], rng)
        entry = {name: [accuracy(remove[name](s)) for s in subsets] for name in nets}
        chosen = copy.deepcopy(nets["resnet"])
        prune_blocks(chosen, k, x, batches=calibration)
        entry["resnet lowest-norm"] = accuracy(chosen)
        result["k"][str(k)] = entry
    log(f"[block-removal] seed {seed}: dense {result['dense']}; one block removed: resnet mean "
        f"{mean_std(result['single']['resnet'].values())[0]:.4f}, plain {mean_std(result['single']['plain'].values())[0]:.4f}")
    return result


def experiment_k(out: Path, seeds, scale: str, log, progress: WorkProgress) -> str:
    settings = _settings(scale)
    folder = out / "k_block_removal"
    runs = run_seeds(folder, seeds, scale, progress, lambda seed: _one_seed(seed, settings, log))
    table, series, errors = [], {}, {}
    ks = sorted(runs[0]["k"], key=int)
    for name, label in (("resnet", "ResNet (residual)"), ("plain", "plain CNN")):
        dense = [r["dense"][name] for r in runs]
        table.append({"network": label, "blocks removed": 0, "accuracy (mean over subsets)": pm(dense, 4),
                      "worst subset": pm(dense, 4), "lowest-norm branches (prune_blocks)": "—"})
        means, stds = [mean_std(dense)[0]], [mean_std(dense)[1]]
        for k in ks:
            per_seed = [mean_std(r["k"][k][name])[0] for r in runs]
            table.append({"network": label, "blocks removed": int(k), "accuracy (mean over subsets)": pm(per_seed, 4),
                          "worst subset": pm([min(r["k"][k][name]) for r in runs], 4),
                          "lowest-norm branches (prune_blocks)": pm([r["k"][k]["resnet lowest-norm"] for r in runs], 4)
                          if name == "resnet" else "—"})
            mean, std = mean_std(per_seed)
            means.append(mean), stds.append(std)
        series[label], errors[label] = ([0] + [int(k) for k in ks], means), stds
    line_plot(folder / "plot.png", "blocks removed (no retraining)", "test accuracy", series, errors=errors,
              title="Removing blocks: residual vs plain network of the same depth")
    blocks = len(runs[0]["single"]["resnet"])
    return write_outputs(folder, table, list(table[0]),
                         title=f"k. Removing blocks of a trained ResNet vs a plain CNN of the same depth on "
                               f"{settings['dataset']} (mean ± std over {len(seeds)} seeds)",
                         notes=f"StackNet, widths {settings['widths']}, {settings['blocks_per_stage']} blocks per stage "
                               f"(2 conv-BN each; {blocks} of them keep their shape and can be removed), stem stride "
                               f"{settings['stem_stride']}, each trained {settings['steps']} Adam steps (lr 2e-3, batch "
                               f"{settings['batch_size']}), with and without identity shortcuts. ResNet: the residual "
                               "branch masked to zero (prunekit.blocks); plain: the block replaced by nn.Identity. "
                               f"Random subsets of k blocks (every subset, or {settings['subsets']} random ones), the "
                               "same for both networks, no retraining; per seed the mean and the worst subset.")
