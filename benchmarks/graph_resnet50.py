"""Time to build the dependency graph, prune 50 % of channels and compact a ResNet-50.

Runs in the zoo environment (torchvision; `make test-zoo` creates .venv-zoo):

    .venv-zoo/bin/python benchmarks/graph_resnet50.py [--ratio 0.5] [--repeats 3]

If the torch_pruning package is installed, the same model and ratio go through it in the same
run (MagnitudePruner, L2 norm, local ratio), side by side. Medians over repeats.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchvision

from prunekit.compaction import compact
from prunekit.graph import build_graph
from prunekit.prune import prune_structured
from prunekit.table import format_table


def params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def prunekit_run(ratio, example):
    model = torchvision.models.resnet50(weights=None).eval()
    timings = {}
    start = time.perf_counter()
    graph = build_graph(model, example)
    timings["graph s"] = time.perf_counter() - start
    start = time.perf_counter()
    prune_structured(model, ratio, example, scope="local", graph=graph)
    timings["prune s"] = time.perf_counter() - start
    start = time.perf_counter()
    small, _ = compact(model, example, graph=graph)
    timings["compact s"] = time.perf_counter() - start
    return timings, params(small)


def torch_pruning_run(ratio, example):
    import torch_pruning as tp

    model = torchvision.models.resnet50(weights=None).eval()
    timings = {}
    start = time.perf_counter()
    pruner = tp.pruner.MagnitudePruner(model, example, importance=tp.importance.MagnitudeImportance(p=2),
                                       pruning_ratio=ratio, ignored_layers=[model.fc])
    timings["graph s"] = time.perf_counter() - start
    start = time.perf_counter()
    pruner.step()  # scores, selects and removes channels in one call
    timings["prune s"] = time.perf_counter() - start
    timings["compact s"] = 0.0  # included in pruner.step()
    return timings, params(model)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    example = torch.randn(1, 3, 224, 224)
    tools = {"prunekit": prunekit_run}
    try:
        import torch_pruning  # noqa: F401
        tools["torch_pruning"] = torch_pruning_run
    except ImportError:
        print("torch_pruning is not installed: prunekit only.")
    rows = []
    for tool, run in tools.items():
        results = [run(args.ratio, example) for _ in range(args.repeats)]
        row = {"tool": tool}
        for key in ("graph s", "prune s", "compact s"):
            row[key] = f"{statistics.median(r[0][key] for r in results):.2f}"
        row["total s"] = f"{statistics.median(sum(r[0].values()) for r in results):.2f}"
        row["params after"] = f"{results[0][1]:,}"
        rows.append(row)
    print(f"\n### ResNet-50 (torchvision, weights=None), {int(args.ratio * 100)} % of channels, "
          f"median of {args.repeats}\n")
    print(format_table(rows))


if __name__ == "__main__":
    main()
