"""Does channel pruning make CNNs faster? Parameters, FLOPs and measured CPU latency after compaction.

For each model and input size: prune 30 / 50 / 70 % of the channels (local scope: the same ratio
in every prunable group, L2 filter norm), compact, and time the dense and the
compacted model alternately (median of many paired runs, 2 threads, batch 1 and 64). The key column is
speedup ÷ FLOPs reduction: 1.0 means the FLOPs cut fully turned into wall-clock time.

    python benchmarks/structured_speed.py            # ResNet-8 / MobileNetV2 at 32×32, ResNet-18 / MobileNetV2 at 224×224
    python benchmarks/structured_speed.py --quick    # small models and inputs only, few repeats
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from prunekit.accounting import count_flops
from prunekit.cnn_models import mobilenetv2, resnet8, resnet18
from prunekit.compaction import compact
from prunekit.graph import build_graph
from prunekit.prune import prune_structured
from prunekit.table import format_table

RATIOS = (0.3, 0.5, 0.7)
SETUPS = {  # name: (builder, input side)
    "resnet8@32": (lambda: resnet8(num_classes=10), 32),
    "mobilenetv2@32": (lambda: mobilenetv2(num_classes=10, stem_stride=1, width=0.5), 32),
    "resnet18@224": (lambda: resnet18(num_classes=1000), 224),
    "mobilenetv2@224": (lambda: mobilenetv2(num_classes=1000), 224),
}


def paired_latency(dense, small, x, repeats: int, warmup: int = 5) -> tuple[float, float, float]:
    """(dense s, compacted s, median speedup): the two models are timed alternately, and the
    speedup is the median of the per-pair ratios, so load from other processes that drifts
    during the measurement hits both sides of every ratio alike."""
    dense.eval(), small.eval()
    with torch.inference_mode():
        for _ in range(warmup):
            dense(x), small(x)
        t_dense, t_small = [], []
        for _ in range(repeats):
            for model, times in ((dense, t_dense), (small, t_small)):
                start = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - start)
    ratios = [d / s for d, s in zip(t_dense, t_small)]
    return statistics.median(t_dense), statistics.median(t_small), statistics.median(ratios)


def params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--setups", nargs="+", default=None, choices=list(SETUPS))
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per measurement")
    parser.add_argument("--round-to", type=int, default=1, help="keep channel counts multiples of this")
    args = parser.parse_args()
    torch.set_num_threads(2)
    setups = args.setups or (["resnet8@32", "mobilenetv2@32"] if args.quick else list(SETUPS))
    rows = []
    for name in setups:
        build, side = SETUPS[name]
        torch.manual_seed(0)
        dense = build().eval()
        example = torch.randn(1, 3, side, side)
        dense_flops = count_flops(dense, example)["dense_flops"]
        for batch in (1, 64):
            repeats = args.repeats or (5 if args.quick else (10 if side == 224 and batch == 64 else 30))
            x = torch.randn(batch, 3, side, side)
            for ratio in RATIOS:
                masked = build().eval()
                masked.load_state_dict(dense.state_dict())
                start = time.perf_counter()
                graph = build_graph(masked, example)
                prune_structured(masked, ratio, example, scope="local", graph=graph, round_to=args.round_to)
                small, _ = compact(masked, example, graph=graph)
                surgery_s = time.perf_counter() - start
                flops = count_flops(small, example)["dense_flops"]
                t_dense, t_small, speedup = paired_latency(dense, small, x, repeats)
                flops_cut = dense_flops / flops
                rows.append({"model": name, "batch": batch, "channels pruned": f"{int(ratio * 100)} %",
                             "params": f"{params(dense):,} → {params(small):,}",
                             "FLOPs cut": f"{flops_cut:.2f}×", "latency ms": f"{1e3 * t_dense:.2f} → {1e3 * t_small:.2f}",
                             "speedup": f"{speedup:.2f}×", "speedup ÷ FLOPs cut": f"{speedup / flops_cut:.2f}",
                             "prune+compact s": f"{surgery_s:.2f}"})
                print(rows[-1], flush=True)
    print(f"\n### Channel pruning → compaction: measured CPU latency (2 threads, median of paired runs, "
          f"channel counts rounded to multiples of {args.round_to})\n")
    print(format_table(rows))


if __name__ == "__main__":
    main()
