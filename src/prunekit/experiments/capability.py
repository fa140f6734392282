"""Experiment f: removing one class by a minimum cut vs by attribution vs at random.

LeNet-300-100 trained on MNIST-5k (one model per seed). For every class k, on the training
data: the min-cut removal (`prunekit.applications.search_cut`: the coverage whose cut brings
class k to ≤ 1.5 × chance and keeps the other classes best), the same number of units by
attribution to class k and at random, and the fewest attribution units that reach the same
target. Reported on the test set, averaged over the ten classes, mean ± std over seeds:
units removed, accuracy on the removed class and on the others.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..applications import (attribution_units, class_accuracy, random_units, removal_accuracy, search_cut,
                            smallest_attribution)
from ..applications.mlp import hidden_layers
from ..data import load_dataset
from ..models import build_model
from ..plots import grouped_bars
from ..training import TrainConfig, train
from .common import mean_std, pm, run_seeds, write_outputs
from .progress import WorkProgress

METHODS = ("dense", "min-cut", "attribution, same units", "random, same units", "attribution, fewest reaching target",
           "min-cut, last hidden layer")


def _settings(scale: str):
    if scale == "quick":
        return dict(dataset="digits", model_options={"in_features": 64}, steps=150, classes=(0, 1))
    return dict(dataset="mnist5k", model_options={}, steps=2000, classes=tuple(range(10)))


def _one_seed(seed: int, scale: str, log) -> dict:
    settings = _settings(scale)
    data = load_dataset(settings["dataset"])
    torch.manual_seed(seed)
    model = build_model("lenet300100", **settings["model_options"])
    train(model, data.train, TrainConfig(optimizer="adam", lr=1.2e-3, steps=settings["steps"], batch_size=100,
                                         seed=seed), progress=False)
    x, y = data.train.tensors
    target = 1.5 / data.num_classes
    sizes = {layer.name: layer.size for layer in hidden_layers(model)}
    results = {method: [] for method in METHODS}
    for k in settings["classes"]:
        cut, _ = search_cut(model, x, y, k, target=target)
        near_output, _ = search_cut(model, x, y, k, target=target, last_layer=True)
        fewest, _ = smallest_attribution(model, cut.relevance, x, y, k, target=target)
        choices = {"min-cut": cut.units, "min-cut, last hidden layer": near_output.units,
                   "attribution, same units": attribution_units(cut.relevance, cut.count),
                   "random, same units": random_units(sizes, cut.count, torch.Generator().manual_seed(seed * 100 + k)),
                   "attribution, fewest reaching target": fewest}
        results["dense"].append({"units": 0, **class_accuracy(model, data.test, k)})
        for method, units in choices.items():
            results[method].append({"units": sum(map(len, units.values())),
                                    **removal_accuracy(model, units, data.test, k)})
        log(f"[mincut] seed {seed} class {k}: cut {cut.count} units (coverage {cut.coverage:.2f}) → removed "
            f"{results['min-cut'][-1]['removed']:.3f}, kept {results['min-cut'][-1]['kept']:.3f}; attribution needs "
            f"{results['attribution, fewest reaching target'][-1]['units']}; the last-layer cut "
            f"{near_output.count}")
    return results


def experiment_f(out: Path, seeds, scale: str, log, progress: WorkProgress) -> str:
    folder = out / "f_mincut"
    per_seed = run_seeds(folder, seeds, scale, progress, lambda seed: _one_seed(seed, scale, log))

    def averaged(method, key):  # one value per seed: the mean over classes
        return [sum(r[key] for r in res[method]) / len(res[method]) for res in per_seed]

    dense_kept = averaged("dense", "kept")
    table = []
    for method in METHODS:
        drops = [d - k for d, k in zip(dense_kept, averaged(method, "kept"))]
        table.append({"method": method, "units removed": pm(averaged(method, "units"), 1),
                      "removed-class acc": pm(averaged(method, "removed")),
                      "other classes acc": pm(averaged(method, "kept")),
                      "others' drop (points)": pm(drops, 2, 100.0)})
    grouped_bars(folder / "plot.png", list(METHODS),
                 {"removed class": [mean_std(averaged(m, "removed"))[0] for m in METHODS],
                  "other classes": [mean_std(averaged(m, "kept"))[0] for m in METHODS]},
                 y_label="test accuracy", title="Removing one class: min-cut vs attribution vs random")
    settings = _settings(scale)
    return write_outputs(folder, table, list(table[0]),
                         title=f"f. LeNet-300-100 on {settings['dataset']}: removing one class "
                               f"(mean over classes {settings['classes'][0]}–{settings['classes'][-1]}; "
                               f"mean ± std over {len(seeds)} seeds)",
                         notes="Target: removed-class accuracy ≤ 1.5 × chance on the training data; every choice "
                               "is made on training data, accuracies are on the test set. Units are hidden "
                               "neurons of the 300- and 100-unit layers.")
