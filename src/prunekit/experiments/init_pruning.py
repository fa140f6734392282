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

"grasp T=200" scores with the logits divided by T = 200 before the cross-entropy, as the
GraSP authors' implementation does when it computes g and Hg (a softer softmax, so the
gradients are not dominated by the few examples the random network already gets confidently
wrong); "grasp" is the paper's formula on the plain loss. A cached seed that lacks an arm
added later computes only that arm (same initialisation and calibration batch).
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

CRITERIA = ("grasp", "grasp T=200", "snip", "magnitude", "random")
GRASP_TEMPERATURE = 200.0
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


def tempered_cross_entropy(outputs, targets):
    """Cross-entropy of logits / T (T = GRASP_TEMPERATURE), the loss GraSP's authors score with."""
    return F.cross_entropy(outputs / GRASP_TEMPERATURE, targets)


def _criterion(name: str, seed: int):
    """(criterion for prunekit.prune, loss it scores with)."""
    if name == "random":
        return Random(seed=seed), F.cross_entropy
    if name == "grasp T=200":
        return "grasp", tempered_cross_entropy
    return name, F.cross_entropy


def _complete(network: str, seed: int, settings: dict, result: dict, log) -> dict:
    """Fill in whatever `result` (a cached seed, or {}) lacks: the dense run and every
    (sparsity, criterion) arm."""
    data = load_dataset(settings["dataset"])
    torch.manual_seed(seed)
    init = _network(network, data)
    config = TrainConfig(optimizer="adam", lr=1.2e-3, steps=settings["steps"], batch_size=settings["batch_size"],
                         seed=seed)
    xs, ys = data.train.tensors
    order = torch.randperm(len(xs), generator=torch.Generator().manual_seed(seed))[:settings["calibration"]]
    calibration = [(xs[order], ys[order])]
    if "dense" not in result:
        dense = copy.deepcopy(init)
        train(dense, data.train, config, progress=False)
        result = {"dense": evaluate(dense, data.test)["accuracy"], "pruned": []}
    done = {(row["sparsity"], row["criterion"]) for row in result["pruned"]}
    for sparsity in settings["sparsities"]:
        for name in CRITERIA:
            if (sparsity, name) in done:
                continue
            model = copy.deepcopy(init)
            criterion, loss_fn = _criterion(name, seed)
            prune(model, sparsity, criterion=criterion, batches=calibration, loss_fn=loss_fn)
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
            cached = json.loads(cache.read_text()) if cache.is_file() else {}
            if len(cached.get("pruned", [])) < len(settings["sparsities"]) * len(CRITERIA):
                cache.write_text(json.dumps(_complete(network, seed, settings, cached, log)))
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
