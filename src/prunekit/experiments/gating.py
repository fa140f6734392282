"""Experiment g: input-dependent channel gating vs static channel pruning at equal FLOPs.

A GatedCNN (prunekit.applications.gating) is trained dense on Fashion-MNIST (gates off).
From those weights, two arms get the same number of fine-tuning steps:
  * gated  — gates initialised open learn which channels each input needs, with the loss
             CE + λ · max(0, mean FLOPs/dense − budget), the budget annealed from 1 to the
             target; then the weights are tuned to the frozen hard gates;
  * static — the channels with the largest |BN γ| per block (one uniform keep fraction)
             fixed for every input, chosen so that the static network executes no more FLOPs
             than the gated arm's measured average, then fine-tuned with that mask.
Reported on the test set: accuracy, executed FLOPs per input (mean, min–max) as a fraction
of the dense network, mean ± std over seeds.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..applications.gating import (GatedCNN, evaluate_gated, static_masks_for_flops, train_gated)
from ..data import fashion_mnist_available, load_dataset
from ..errors import PrunekitError
from ..plots import grouped_bars
from ..training import TrainConfig
from .common import mean_std, pm, run_seeds, write_outputs
from .progress import WorkProgress


def _settings(scale: str) -> dict:
    if scale == "quick":
        return dict(dataset="digits", widths=(4, 8), dense_steps=100, finetune_steps=100, hard_steps=50,
                    batch_size=64, target=0.45)
    return dict(dataset="fashion_mnist", widths=(8, 16, 32), dense_steps=1500, finetune_steps=1200, hard_steps=600,
                batch_size=128, target=0.48)


def _one_seed(seed: int, settings: dict, log, folder: Path) -> dict:
    data = load_dataset(settings["dataset"])
    torch.manual_seed(seed)
    model = GatedCNN(num_classes=data.num_classes, in_channels=data.input_shape[0], widths=settings["widths"])
    base = TrainConfig(optimizer="adam", lr=3e-3, steps=settings["dense_steps"], batch_size=settings["batch_size"],
                       seed=seed)
    model.set_gating(False)
    train_gated(model, data.train, base)
    dense = evaluate_gated(model, data.test)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    tune = base.for_finetuning(lr_factor=1 / 3, steps=settings["finetune_steps"], seed=seed + 1)
    hard = base.for_finetuning(lr_factor=1 / 10, steps=settings["hard_steps"], seed=seed + 2)

    # gates start open (bias +1) on the trained dense weights; the FLOPs budget falls from 1 to the
    # target over the first half of the fine-tuning, then the weights adapt to the frozen gates
    model.set_gating(True)
    train_gated(model, data.train, tune, target=settings["target"], weight=2.0, gate_lr=1e-2,
                anneal_steps=settings["finetune_steps"] // 2)
    train_gated(model, data.train, hard, train_gates=False)
    gated = evaluate_gated(model, data.test)

    static_model = GatedCNN(num_classes=data.num_classes, in_channels=data.input_shape[0], widths=settings["widths"])
    static_model.load_state_dict(state)
    masks, _ = static_masks_for_flops(static_model, gated["flops"], data.test.tensors[0])
    static_model.set_fixed(masks)
    before_tuning = evaluate_gated(static_model, data.test)
    train_gated(static_model, data.train, tune)  # the same number of steps as the gated arm
    train_gated(static_model, data.train, hard)
    static = evaluate_gated(static_model, data.test)
    torch.save({"widths": settings["widths"], "dense": state, "gated": model.state_dict(),
                "static": static_model.state_dict()}, folder / f"seed{seed}_models.pt")
    log(f"[gating] seed {seed}: dense {dense['accuracy']:.4f}; gated {gated['accuracy']:.4f} at "
        f"{gated['flops_fraction']:.3f} of the FLOPs; static {static['accuracy']:.4f} at {static['flops_fraction']:.3f}")
    return {"dense": dense, "gated": gated, "static (before fine-tuning)": before_tuning, "static": static}


def experiment_g(out: Path, seeds, scale: str, log, progress: WorkProgress) -> str:
    settings = _settings(scale)
    if settings["dataset"] == "fashion_mnist" and not fashion_mnist_available():
        raise PrunekitError("Experiment g needs Fashion-MNIST: sudo apt-get install dataset-fashion-mnist "
                            "(or run it with scale='quick').")
    folder = out / "g_gating"
    per_seed = run_seeds(folder, seeds, scale, progress, lambda seed: _one_seed(seed, settings, log, folder))
    arms = list(per_seed[0])
    dense_acc = [r["dense"]["accuracy"] for r in per_seed]
    table = []
    for arm in arms:
        values = [r[arm] for r in per_seed]
        table.append({"network": arm, "test accuracy": pm([v["accuracy"] for v in values], 4),
                      "drop vs dense (points)": pm([d - v["accuracy"] for d, v in zip(dense_acc, values)], 2, 100.0),
                      "FLOPs / dense (mean)": pm([v["flops_fraction"] for v in values], 3),
                      "FLOPs / dense (min–max per input)": f"{min(v['flops_min'] / v['dense_flops'] for v in values):.3f}"
                                                            f"–{max(v['flops_max'] / v['dense_flops'] for v in values):.3f}"})
    grouped_bars(folder / "plot.png", arms,
                 {"test accuracy": [mean_std([r[a]["accuracy"] for r in per_seed])[0] for a in arms],
                  "FLOPs / dense": [mean_std([r[a]["flops_fraction"] for r in per_seed])[0] for a in arms]},
                 y_label="fraction", title="Dynamic gating vs static channel pruning")
    return write_outputs(folder, table, list(table[0]),
                         title=f"g. GatedCNN {settings['widths']} on {settings['dataset']}: input-dependent gates vs "
                               f"static channels at equal average FLOPs (mean ± std over {len(seeds)} seeds)",
                         notes=f"Dense: {settings['dense_steps']} Adam steps (lr 3e-3, batch {settings['batch_size']}); "
                               f"both arms then fine-tune from the dense weights, {settings['finetune_steps']} steps at "
                               f"lr 1e-3 (the gates at lr 1e-2, their FLOPs budget annealed from 100 % to "
                               f"{settings['target']:.0%} over the first half) and {settings['hard_steps']} at lr 3e-4 "
                               "(gates frozen). FLOPs count the conv, gate and classifier multiply-accumulates each "
                               "input executes.")
