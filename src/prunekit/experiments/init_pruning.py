"""Experiment l: pruning at initialisation — SNIP vs GraSP vs magnitude vs random — then training.

Lee et al. (SNIP, 2019) score connections by |w · ∂L/∂w| at initialisation; Wang et al.
(GraSP, 2020) by −w ⊙ Hg, keeping the weights whose removal would most reduce the gradient
flow, and report that GraSP keeps the network trainable at extreme sparsity, where SNIP's
global ranking empties whole layers. Per (network, seed): one initialisation; for every
sparsity and criterion a copy is pruned once, globally over every weight matrix and kernel
(prunekit.prune with the criteria "snip", "grasp", "magnitude", and random scores as the
control; SNIP and GraSP score one calibration batch of training data), then trained from
that initialisation with its mask fixed. Reported on the test set after training: accuracy,
and the smallest fraction of weights any one layer keeps (0 means a disconnected network).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from ..criteria import Random
from ..data import load_dataset
from ..masks import get_masks
from ..models import lenet5, lenet300100
from ..plots import line_plot
from ..prune import prune
from ..training import TrainConfig, evaluate, train
from .common import mean_std, pm, write_outputs
from .progress import WorkProgress

CRITERIA = ("grasp", "snip", "magnitude", "random")
NETWORKS = {"lenet300100": lenet300100, "lenet5": lenet5}


def _settings(scale: str) -> dict:
    if scale == "quick":
        return dict(dataset="digits", networks=("lenet300100",), sparsities=(0.9, 0.99), steps=20, batch_size=64,
                    calibration=128)
    return dict(dataset="mnist5k", networks=("lenet300100", "lenet5"), sparsities=(0.9, 0.98, 0.99), steps=600,
                batch_size=100, calibration=500)


def _network(name: str, data):
    if name == "lenet5":
        return lenet5(data.num_classes, data.input_shape[0])
    return lenet300100(data.num_classes, in_features=data.train.tensors[0][0].numel())


def _one(network: str, seed: int, settings: dict, log) -> dict:
    data = load_dataset(settings["dataset"])
    torch.manual_seed(seed)
    init = _network(network, data)
    config = TrainConfig(optimizer="adam", lr=1.2e-3, steps=settings["steps"], batch_size=settings["batch_size"],
                         seed=seed)
    xs, ys = data.train.tensors
    order = torch.randperm(len(xs), generator=torch.Generator().manual_seed(seed))[:settings["calibration"]]
    calibration = [(xs[order], ys[order])]
    dense = copy.deepcopy(init)
    train(dense, data.train, config, progress=False)
    result = {"dense": evaluate(dense, data.test)["accuracy"], "pruned": []}
    for sparsity in settings["sparsities"]:
        for name in CRITERIA:
            model = copy.deepcopy(init)
            criterion = Random(seed=seed) if name == "random" else name
            prune(model, sparsity, criterion=criterion, batches=calibration, loss_fn=F.cross_entropy)
            kept = min(float(m.float().mean()) for m in get_masks(model).values())
            at_init = evaluate(model, data.test)["accuracy"]
            train(model, data.train, config, progress=False)
            result["pruned"].append({"sparsity": sparsity, "criterion": name, "at_init": at_init,
                                     "accuracy": evaluate(model, data.test)["accuracy"], "min_layer_kept": kept})
    log(f"[grasp-vs-snip] {network} seed {seed}: dense {result['dense']:.4f}; "
        + "; ".join(f"{r['criterion']} {r['sparsity']:.0%} {r['accuracy']:.4f}" for r in result["pruned"]))
    return result


def experiment_l(out: Path, seeds, scale: str, log, progress: WorkProgress) -> str:
    settings = _settings(scale)
    folder = out / "l_init_pruning"
    folder.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict]] = {network: [] for network in settings["networks"]}
    progress.expect(len(runs) * len(seeds))
    for seed in seeds:
        for network in runs:
            cache = folder / f"{network}_seed{seed}_{scale}.json"
            if not cache.is_file():
                cache.write_text(json.dumps(_one(network, seed, settings, log)))
            runs[network].append(json.loads(cache.read_text()))
            progress.advance(f"{network} seed {seed}")
    table, series, errors = [], {}, {}
    for network, results in runs.items():
        table.append({"network": network, "sparsity": "0 (dense)", "criterion": "—",
                      "test accuracy after training": pm([r["dense"] for r in results], 4),
                      "drop vs dense (points)": "0.00 ± 0.00", "smallest layer kept": "1.0000 ± 0.0000"})
        for name in CRITERIA:
            xs_, means, stds = [], [], []
            for sparsity in settings["sparsities"]:
                rows = [next(p for p in r["pruned"] if (p["sparsity"], p["criterion"]) == (sparsity, name))
                        for r in results]
                table.append({"network": network, "sparsity": f"{sparsity:.0%}", "criterion": name,
                              "test accuracy after training": pm([row["accuracy"] for row in rows], 4),
                              "drop vs dense (points)": pm([r["dense"] - row["accuracy"] for r, row in zip(results, rows)],
                                                           2, 100.0),
                              "smallest layer kept": pm([row["min_layer_kept"] for row in rows], 4)})
                mean, std = mean_std([row["accuracy"] for row in rows])
                xs_.append(100 * sparsity), means.append(mean), stds.append(std)
            series[f"{network} {name}"], errors[f"{network} {name}"] = (xs_, means), stds
    line_plot(folder / "plot.png", "sparsity at initialisation (%)", "test accuracy after training", series,
              errors=errors, title="Pruning at initialisation: GraSP vs SNIP vs magnitude vs random")
    return write_outputs(folder, table, list(table[0]),
                         title=f"l. Pruning at initialisation on {settings['dataset']}, then training "
                               f"(mean ± std over {len(seeds)} seeds)",
                         notes=f"One global ranking over every weight matrix and kernel at initialisation; SNIP and "
                               f"GraSP on one batch of {settings['calibration']} training examples; then "
                               f"{settings['steps']} Adam steps (lr 1.2e-3, batch {settings['batch_size']}) with the "
                               "mask fixed, the same for the dense network. 'smallest layer kept': the lowest fraction "
                               "of weights left in any one layer (0 = the network is cut in two).")
