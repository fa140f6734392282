"""Experiment j: channels of a CNN vs attention heads of a small ViT under the same FLOPs budgets.

Per seed, a SmallCNN and a TinyViT are trained dense on the same data with the same steps.
Then, for every budget (a fraction of each network's own dense FLOPs) and two criteria —
first-order Taylor (|Σ w · ∂L/∂w| over a unit's slices, on calibration batches) and random
units (the control) — a copy is pruned by `Pruner(granularity=…, budget={"flops": f},
allocation="global")`, compacted (the units are physically removed, so the FLOPs reported
are those the smaller network executes, counted by torch's FLOP counter) and fine-tuned.
Pruned units:
  * CNN              granularity "channel": conv channels with their BN and consumer slices;
  * ViT, heads       granularity "head": whole heads (rows of q, k, v, columns of out). The
                     patch embedding and MLPs stay, so budgets below their share are unreachable;
  * ViT, heads + MLP granularity "group": heads and MLP hidden units together (the residual
                     width, prunable through the LayerNorms, is held out: this arm compares
                     heads and MLP units, as the CNN arm compares channels).
Reported on the test set: accuracy before and after fine-tuning, the FLOPs fraction reached,
mean ± std over seeds.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F

from ..accounting import count_flops
from ..compaction import compact
from ..criteria import Random, Taylor
from ..data import load_dataset
from ..errors import PrunekitError
from ..graph import build_graph
from ..plots import line_plot
from ..pruner import Pruner
from ..training import TrainConfig, evaluate, train
from .common import cached, mean_std, pm, write_outputs
from .nets import SmallCNN, TinyViT
from .progress import WorkProgress

ARMS = {"cnn": [("CNN channels", "channel")],
        "vit": [("ViT heads", "head"), ("ViT heads + MLP units", "group")]}


def _settings(scale: str) -> dict:
    if scale == "quick":
        return dict(dataset="digits", patch=4, cnn_widths=(4, 8, 8), vit=dict(dim=16, heads=4, hidden=16, depth=1),
                    steps=20, finetune_steps=5, batch_size=64, budgets=(0.5,), calibration=1)
    return dict(dataset="mnist5k", patch=7, cnn_widths=(8, 16, 32), vit=dict(dim=64, heads=8, hidden=64, depth=2),
                steps=400, finetune_steps=100, batch_size=64, budgets=(0.7, 0.5, 0.3), calibration=2)


def _network(arch: str, settings: dict, data):
    channels, image = data.input_shape[0], data.input_shape[-1]
    if arch == "cnn":
        return SmallCNN(data.num_classes, channels, settings["cnn_widths"])
    return TinyViT(data.num_classes, channels, image=image, patch=settings["patch"], **settings["vit"])


def _without_width(model, x):
    """The dependency graph with every group that owns a LayerNorm scale (the residual width) held out."""
    graph = build_graph(model, x)
    norms = {f"{name}.weight" for name, m in model.named_modules() if isinstance(m, torch.nn.LayerNorm)}
    for group in graph.groups:
        if norms & set(group.params):
            group.prunable, group.reason = False, "the residual width is held out of this experiment"
    return graph


def _one(arch: str, seed: int, settings: dict, log) -> dict:
    """Dense training, then every (granularity, budget, criterion) prune + fine-tune of one network."""
    data = load_dataset(settings["dataset"])
    torch.manual_seed(seed)
    model = _network(arch, settings, data)
    config = TrainConfig(optimizer="adam", lr=2e-3, steps=settings["steps"], batch_size=settings["batch_size"],
                         seed=seed)
    train(model, data.train, config, progress=False)
    x = data.example_input(2)
    dense_flops = count_flops(model, x)["dense_flops"]
    result = {"dense": evaluate(model, data.test)["accuracy"], "dense_flops": dense_flops, "arms": []}
    xs, ys = data.train.tensors
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(xs), generator=generator)[:128 * settings["calibration"]]
    calibration = [(xs[i], ys[i]) for i in order.split(128)]
    tune = config.for_finetuning(lr_factor=0.5, steps=settings["finetune_steps"], seed=seed + 1)
    for label, granularity in ARMS[arch]:
        for budget in settings["budgets"]:
            for criterion_name, criterion in (("taylor", Taylor()), ("random", Random(seed=seed))):
                row = {"arm": label, "budget": budget, "criterion": criterion_name}
                pruned = copy.deepcopy(model)
                try:
                    Pruner(pruned, x, granularity=granularity, criterion=criterion, budget={"flops": budget},
                           batches=calibration, loss_fn=F.cross_entropy, graph=_without_width(pruned, x)).step()
                except PrunekitError as e:  # below what these units can reach (heads only: the MLPs stay)
                    result["arms"].append({**row, "unreachable": str(e)})
                    continue
                small, _ = compact(pruned, x)
                row["flops_fraction"] = count_flops(small, x)["dense_flops"] / dense_flops
                row["before"] = evaluate(small, data.test)["accuracy"]
                train(small, data.train, tune, progress=False)
                row["after"] = evaluate(small, data.test)["accuracy"]
                result["arms"].append(row)
    log(f"[channels-vs-heads] {arch} seed {seed}: dense {result['dense']:.4f}; "
        + "; ".join(f"{r['arm']} {r['budget']:.0%} {r['criterion']} {r['after']:.4f}"
                    for r in result["arms"] if "after" in r))
    return result


def experiment_j(out: Path, seeds, scale: str, log, progress: WorkProgress) -> str:
    settings = _settings(scale)
    folder = out / "j_channels_heads"
    folder.mkdir(parents=True, exist_ok=True)
    per_arch: dict[str, list[dict]] = {arch: [] for arch in ARMS}
    progress.expect(len(ARMS) * len(seeds))
    for seed in seeds:
        for arch in ARMS:
            per_arch[arch].append(cached(folder / f"{arch}_seed{seed}_{scale}.json",
                                         lambda: _one(arch, seed, settings, log)))
            progress.advance(f"{arch} seed {seed}")
    table, series, errors = [], {}, {}
    for arch, runs in per_arch.items():
        label = ARMS[arch][0][0].split()[0]
        table.append({"network / units": f"{label} dense", "criterion": "—", "FLOPs budget": "1.00",
                      "FLOPs reached": "1.000 ± 0.000", "before fine-tuning": pm([r["dense"] for r in runs], 4),
                      "after fine-tuning": pm([r["dense"] for r in runs], 4),
                      "drop after (points)": "0.00 ± 0.00"})
        for arm, _ in ARMS[arch]:
            for criterion in ("taylor", "random"):
                xs_, means, stds = [], [], []
                for budget in settings["budgets"]:
                    rows = [next(a for a in r["arms"] if (a["arm"], a["budget"], a["criterion"]) == (arm, budget, criterion))
                            for r in runs]
                    entry = {"network / units": arm, "criterion": criterion, "FLOPs budget": f"{budget:.2f}"}
                    if any("unreachable" in row for row in rows):
                        table.append({**entry, "FLOPs reached": "unreachable", "before fine-tuning": "—",
                                      "after fine-tuning": "—", "drop after (points)": "—"})
                        continue
                    table.append({**entry, "FLOPs reached": pm([row["flops_fraction"] for row in rows], 3),
                                  "before fine-tuning": pm([row["before"] for row in rows], 4),
                                  "after fine-tuning": pm([row["after"] for row in rows], 4),
                                  "drop after (points)": pm([r["dense"] - row["after"] for r, row in zip(runs, rows)],
                                                            2, 100.0)})
                    mean, std = mean_std([row["after"] for row in rows])
                    xs_.append(budget), means.append(mean), stds.append(std)
                series[f"{arm}, {criterion}"], errors[f"{arm}, {criterion}"] = (xs_, means), stds
    line_plot(folder / "plot.png", "FLOPs budget (fraction of dense)", "test accuracy after fine-tuning", series,
              errors=errors, title="CNN channels vs ViT heads at equal FLOPs budgets")
    vit = settings["vit"]
    return write_outputs(folder, table, list(table[0]),
                         title=f"j. CNN channels vs ViT heads on {settings['dataset']} under the same FLOPs budgets "
                               f"(mean ± std over {len(seeds)} seeds)",
                         notes=f"SmallCNN {settings['cnn_widths']} and TinyViT (patch {settings['patch']}, dim "
                               f"{vit['dim']}, {vit['heads']} heads, MLP {vit['hidden']}, depth {vit['depth']}), each "
                               f"trained {settings['steps']} Adam steps (lr 2e-3, batch {settings['batch_size']}); "
                               "pruned to each budget of its own dense FLOPs (global allocation, Taylor scores on "
                               f"{settings['calibration']}×128 training examples, or random units), compacted, then "
                               f"fine-tuned {settings['finetune_steps']} steps at lr 1e-3. 'unreachable': removing every "
                               "head still leaves more FLOPs than the budget (the patch embedding and MLPs stay).")
