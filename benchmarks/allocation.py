"""How much to prune where: uniform vs sensitivity vs greedy vs knapsack vs NetAdapt vs AMC.

Channel pruning (prunekit.allocate.ChannelProblem: channel groups of the dependency graph,
magnitude ℓ2 scores) to 50 % of the dense FLOPs. For every model and seed, all allocators
start from the same trained dense model, decide on a validation split held out of the
training data, and the pruned model then gets the same fine-tuning budget (steps at lr ×
lr_factor); NetAdapt's short fine-tuning inside its search is part of its method. Reported:
test accuracy after fine-tuning, FLOPs of the compacted model (fraction of dense), measured
latency of the compacted model (one thread, batch 256 (32 for the VGG); the dense and all pruned models of a
seed are timed in interleaved rounds of 10 passes, median over rounds) and search time; mean ± std over seeds.

    python benchmarks/allocation.py            # 3 seeds, MNIST-1D CNN and LeNet-5 on MNIST-5k
    python benchmarks/allocation.py --vgg      # also the small VGG (slow on CPU)
    python benchmarks/allocation.py --quick    # 1 seed, MNIST-1D only, short budgets (smoke run)
    python benchmarks/allocation.py --models vgg_small --seeds 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from prunekit.allocate import (AMC, GreedyAllocator, KnapsackAllocator, NetAdapt, SensitivityAllocator,
                               UniformAllocator, sensitivity_curves)
from prunekit.allocate.channels import ChannelProblem
from prunekit.allocate.latency import measure_latency
from prunekit.workflows.allocation import split_validation
from prunekit.accounting import count_flops
from prunekit.data import load_dataset
from prunekit.models import build_model
from prunekit.table import format_table
from prunekit.training import TrainConfig, evaluate, train

SETUPS = {  # model → dataset, dense training, fine-tuning steps
    "mnist1d_cnn": ("mnist1d", TrainConfig(optimizer="adam", lr=1e-2, steps=3000, batch_size=100), 300),
    "lenet5": ("mnist5k", TrainConfig(optimizer="adam", lr=1e-3, steps=1500, batch_size=100), 300),
    "vgg_small": ("mnist5k", TrainConfig(optimizer="adam", lr=1e-3, steps=300, batch_size=64), 50),
}
SEARCH = {  # model → (NetAdapt short fine-tuning steps, AMC episodes, AMC warm-up episodes)
    "mnist1d_cnn": (30, 40, 10), "lenet5": (30, 40, 10),
    "vgg_small": (10, 20, 5),  # ~0.5 s per training step on one CPU thread: a lighter search
}
LATENCY_ROUNDS = 7
TIMING_BATCH = {"vgg_small": 32}  # batch of the latency measurements (default 256)
ORDER = ["uniform", "sensitivity", "greedy", "knapsack", "netadapt", "amc"]


def allocators(model_name: str, quick: bool, seed: int):
    """name → factory(sensitivity curves) → allocator."""
    na_steps, episodes, warmup = (10, 12, 4) if quick else SEARCH[model_name]
    return {
        "uniform": lambda c: UniformAllocator(0.5),
        "sensitivity": lambda c: SensitivityAllocator(budget=0.5, curves=c),
        "greedy": lambda c: GreedyAllocator(0.5, step=0.1),
        "knapsack": lambda c: KnapsackAllocator(0.5, curves=c),
        "netadapt": lambda c: NetAdapt(0.5, delta=0.1, finetune_steps=na_steps, seed=seed),
        "amc": lambda c: AMC(0.5, episodes=episodes, warmup=warmup, seed=seed),
    }


def run_setup(model_name: str, seed: int, quick: bool, log) -> list[dict]:
    data_name, config, ft_steps = SETUPS[model_name]
    if quick:
        config = TrainConfig(**{**config.__dict__, "steps": config.steps // 5})
        ft_steps //= 5
    config = TrainConfig(**{**config.__dict__, "seed": seed})
    data = load_dataset(data_name)
    train_data, val = split_validation(data.train)
    torch.manual_seed(seed)
    model = build_model(model_name)
    t0 = time.perf_counter()
    train(model, train_data, config, progress=False)
    example = data.example_input(1)
    timing = data.test.tensors[0][:TIMING_BATCH.get(model_name, 256)]
    problem = ChannelProblem(model, val, example, metric="flops", train_data=train_data, train_config=config,
                             latency_input=timing)
    rows = [{"model": model_name, "seed": seed, "allocator": "dense", "accuracy": evaluate(model, data.test)["accuracy"],
             "flops": 1.0, "search_s": 0.0, "met": True}]
    compacted = [model]
    log(f"{model_name} seed {seed}: dense {rows[0]['accuracy']:.4f} (trained in {time.perf_counter() - t0:.0f} s)")
    start = time.perf_counter()
    curves = sensitivity_curves(problem)
    curve_seconds = time.perf_counter() - start
    for name, factory in allocators(model_name, quick, seed).items():
        result = factory(curves).allocate(problem)
        search = result.search_seconds + (curve_seconds if name in ("sensitivity", "knapsack") else 0.0)
        pruned = result.model if result.model is not None else problem.apply(result.counts)
        train(pruned, train_data, config.for_finetuning(0.1, ft_steps), progress=False)
        small = problem.compact(pruned)
        row = {"model": model_name, "seed": seed, "allocator": name,
               "accuracy": evaluate(small, data.test)["accuracy"],
               "flops": count_flops(small, example)["dense_flops"] / problem.dense_cost(),
               "search_s": search, "met": result.met, "ratios": {k: round(v, 2) for k, v in result.ratios.items()}}
        rows.append(row)
        compacted.append(small)
        log(f"  {name:12s} acc {row['accuracy']:.4f} flops {row['flops']:.3f} search {search:.1f} s "
            f"met {result.met} ratios {row['ratios']}")
    # Latency side by side: rounds over all models of this setup, median per model over rounds,
    # so drifting load on the shared machine hits every model alike.
    rounds = [[measure_latency(m, timing, repeats=10, warmup=3) for m in compacted] for _ in range(LATENCY_ROUNDS)]
    for i, row in enumerate(rows):
        row["latency_ms"] = statistics.median(r[i] for r in rounds) * 1e3
    log("  latency ms: " + ", ".join(f"{r['allocator']} {r['latency_ms']:.3f}" for r in rows))
    return rows


def mean_std(values) -> str:
    if len(values) == 1:
        return f"{values[0]:.4g}"
    return f"{statistics.mean(values):.4g} ± {statistics.stdev(values):.2g}"


def summarise(rows: list[dict]) -> str:
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        dense_latency = {r["seed"]: r["latency_ms"] for r in mine if r["allocator"] == "dense"}
        table = []
        for name in ["dense"] + ORDER:
            sel = [r for r in mine if r["allocator"] == name]
            if not sel:
                continue
            table.append({"allocator": name, "test accuracy": mean_std([r["accuracy"] for r in sel]),
                          "FLOPs / dense": mean_std([r["flops"] for r in sel]),
                          "latency ms": mean_std([r["latency_ms"] for r in sel]),
                          "speedup": mean_std([dense_latency[r["seed"]] / r["latency_ms"] for r in sel]),
                          "search s": mean_std([r["search_s"] for r in sel]),
                          "budget met": f"{sum(r['met'] for r in sel)}/{len(sel)}"})
        out.append(f"\n### {model} on {SETUPS[model][0]}, 50 % of dense FLOPs "
                   f"({len(dense_latency)} seed{'s' if len(dense_latency) > 1 else ''})\n")
        out.append(format_table(table))
    return "\n".join(out)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--vgg", action="store_true", help="also the small VGG on MNIST-5k")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--models", nargs="+", choices=list(SETUPS), help="run only these models")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # two shared cores: one thread keeps timings and runs comparable
    seeds = range(args.seeds or (1 if args.quick else 3))
    models = ["mnist1d_cnn"] if args.quick else ["mnist1d_cnn", "lenet5"] + (["vgg_small"] if args.vgg else [])
    models = args.models or models
    start = time.perf_counter()
    rows = []
    for model in models:
        for seed in seeds:
            rows += run_setup(model, seed, args.quick, log=lambda s: print(s, flush=True))
    print(summarise(rows))
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
