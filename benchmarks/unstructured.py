"""Global unstructured magnitude pruning: prunekit (one-shot, iterative) vs torch.nn.utils.prune.

For each model, seed and target sparsity, all three methods start from the same trained
dense model and get the same fine-tuning budget (steps at lr × lr_factor):
  * prunekit one-shot:  prune to the target, fine-tune `budget` steps;
  * prunekit iterative: prune 50 % → … → target along SCHEDULE, splitting `budget` across rounds;
  * torch.prune:        torch.nn.utils.prune.global_unstructured(L1Unstructured) to the target,
                        then the same fine-tuning loop and budget.
Prints Markdown tables of test accuracy (mean ± std over seeds) and wall times.

    python benchmarks/unstructured.py            # 3 seeds, both models
    python benchmarks/unstructured.py --quick    # 1 seed, short budgets (smoke run)
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.utils.prune as torch_prune

import prunekit as pk
from prunekit.training import TrainConfig, evaluate, finetune, train

SPARSITIES = (0.5, 0.75, 0.9, 0.95, 0.97)
SETUPS = {  # model, dataset, dense training recipe
    "mnist1d_cnn": ("mnist1d", TrainConfig(optimizer="adam", lr=1e-2, steps=6000, batch_size=100)),
    "lenet300100": ("mnist5k", TrainConfig(optimizer="adam", lr=1.2e-3, steps=4000, batch_size=100)),
}


def trained_dense(model_name, data, config, seed):
    torch.manual_seed(seed)
    model = pk.models.build_model(model_name)
    train(model, data.train, TrainConfig(**{**config.__dict__, "seed": seed}), progress=False)
    return model


def clone(model_name, state):
    model = pk.models.build_model(model_name)
    model.load_state_dict(state)
    return model


def run_prunekit(model, target, data, config, budget, lr_factor, iterative):
    steps = [s for s in SPARSITIES if s <= target] if iterative else [target]
    for s in steps:
        pk.prune(model, s)
        if budget:
            finetune(model, data.train, config, lr_factor=lr_factor, steps=budget // len(steps), progress=False)
    return evaluate(model, data.test)["accuracy"]


def run_torch_prune(model, target, data, config, budget, lr_factor):
    params = [(m, "weight") for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv1d))]
    torch_prune.global_unstructured(params, pruning_method=torch_prune.L1Unstructured, amount=target)
    if budget:
        finetune(model, data.train, config, lr_factor=lr_factor, steps=budget, progress=False)
    return evaluate(model, data.test)["accuracy"]


def fmt(values):
    mean = 100 * statistics.mean(values)
    std = 100 * statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.2f} ± {std:.2f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budget", type=int, default=2000, help="fine-tuning steps per target sparsity")
    parser.add_argument("--lr-factor", type=float, default=0.1)
    parser.add_argument("--models", nargs="+", default=list(SETUPS))
    parser.add_argument("--quick", action="store_true", help="1 seed, short training: a smoke run")
    args = parser.parse_args()
    torch.set_num_threads(2)
    seeds = range(1 if args.quick else args.seeds)
    methods = ("prunekit one-shot", "prunekit iterative", "torch.prune one-shot")

    for model_name in args.models:
        data_name, config = SETUPS[model_name]
        if args.quick:
            config = TrainConfig(**{**config.__dict__, "steps": 500})
        budget = 200 if args.quick else args.budget
        data = pk.data.load_dataset(data_name)
        dense, acc = [], {(m, s): [] for m in methods for s in SPARSITIES}
        times = {m: 0.0 for m in methods}
        for seed in seeds:
            model = trained_dense(model_name, data, config, seed)
            dense.append(evaluate(model, data.test)["accuracy"])
            state = {k: v.clone() for k, v in model.state_dict().items()}
            ft = TrainConfig(**{**config.__dict__, "seed": seed + 1000})
            for s in SPARSITIES:
                for method in methods:
                    start = time.perf_counter()
                    m = clone(model_name, state)
                    if method == "torch.prune one-shot":
                        a = run_torch_prune(m, s, data, ft, budget, args.lr_factor)
                    else:
                        a = run_prunekit(m, s, data, ft, budget, args.lr_factor, iterative="iterative" in method)
                    times[method] += time.perf_counter() - start
                    acc[(method, s)].append(a)
        rows = [{"method": "dense", **{f"{int(s * 100)} %": fmt(dense) for s in SPARSITIES}}]
        rows += [{"method": m, **{f"{int(s * 100)} %": fmt(acc[(m, s)]) for s in SPARSITIES}} for m in methods]
        print(f"\n### {model_name} on {data_name}: test accuracy (%) after {budget} fine-tuning steps at "
              f"lr × {args.lr_factor}, {len(seeds)} seed(s), global magnitude pruning\n")
        print(pk.format_table(rows))
        print("\nwall time per method (s, all seeds and sparsities): "
              + ", ".join(f"{m} {t:.1f}" for m, t in times.items()))


if __name__ == "__main__":
    main()
