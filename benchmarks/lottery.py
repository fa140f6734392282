"""Lottery-ticket workbench costs, measured side by side in one run.

1. Retraining a ticket: prunekit.lottery.train_segment (masks lifted, pruned gradients
   zeroed by a hook) vs prunekit.training.train (masks as parametrizations), same model,
   mask, data and seed: median ms per iteration, ratio, and whether the results are equal
   bit for bit.
2. Restricted-Hessian extremes: Lanczos on Hessian-vector products vs the dense masked
   Hessian (torch.autograd.functional.hessian) and eigvalsh: median seconds and λmax / λmin.

    python benchmarks/lottery.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from prunekit import data, models, prune
from prunekit.landscape import RestrictedLoss, lanczos
from prunekit.lottery import train_segment
from prunekit.table import format_table
from prunekit.training import TrainConfig, train


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def training_table(steps, repeats):
    rows = []
    for name, dataset in (("mnist1d_mlp", "mnist1d"), ("lenet300100", "mnist5k")):
        ds = data.load_dataset(dataset)
        config = TrainConfig(optimizer="adam", lr=1e-3, steps=steps, batch_size=100)

        def run(trainer):
            torch.manual_seed(0)
            model = models.build_model(name)
            prune(model, 0.9)
            if trainer == "segment":
                train_segment(model, ds.train, config)
            else:
                train(model, ds.train, config, progress=False)
            return model.state_dict()

        run("segment")  # warm-up (allocator, dispatch caches)
        fast, a = timed(lambda: run("segment"), repeats)
        slow, b = timed(lambda: run("train"), repeats)
        rows.append({"model": name, "steps": steps, "train (parametrized) ms/it": 1000 * slow / steps,
                     "train_segment ms/it": 1000 * fast / steps, "speed-up": slow / fast,
                     "bit-identical": all(torch.equal(a[k], b[k]) for k in a)})
    return rows


def hessian_table(hidden, repeats):
    torch.manual_seed(0)
    model = models.build_model("mnist1d_mlp", hidden=hidden).double()
    prune(model, 0.5)
    ds = data.load_dataset("mnist1d")
    x, y = ds.train.tensors[0][:500].double(), ds.train.tensors[1][:500]
    problem = RestrictedLoss(model, x, y)

    def dense():
        h = torch.autograd.functional.hessian(lambda u: problem(u), problem.point)
        return torch.linalg.eigvalsh(h)

    def krylov():
        return lanczos(problem.hvp, problem.dim, steps=40, dtype=torch.float64)

    t_dense, exact = timed(dense, repeats)
    t_lanczos, ritz = timed(krylov, repeats)
    return [{"free weights": problem.dim, "method": "dense Hessian + eigvalsh", "median s": t_dense,
             "λmax": exact[-1].item(), "λmin": exact[0].item()},
            {"free weights": problem.dim, "method": "Lanczos, 40 HVPs", "median s": t_lanczos,
             "λmax": ritz[-1].item(), "λmin": ritz[0].item()},
            {"free weights": problem.dim, "method": "ratio dense / Lanczos", "median s": t_dense / t_lanczos,
             "λmax": "", "λmin": ""}]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations and repeats")
    args = parser.parse_args()
    torch.set_num_threads(1)
    steps, repeats, hidden = (100, 3, 12) if args.quick else (400, 5, 24)
    print("### Ticket retraining at 90 % sparsity (Adam, batch 100, one thread)\n")
    print(format_table(training_table(steps, repeats)))
    print("\n### Restricted Hessian extremes, MNIST-1D MLP at 50 % sparsity, 500 samples, float64\n")
    print(format_table(hessian_table(hidden, repeats)))


if __name__ == "__main__":
    main()
