"""Per-input CPU latency of dynamic channel gating, where skipping pays: one input at a time.

    python benchmarks/gating_latency.py --models runs/experiments/g_gating/seed0_models.pt [--inputs 300]
    python benchmarks/gating_latency.py --sweep 1,4,16 [--keep 0.7]

Loads the networks experiment g saved (`prunekit experiment gating`: dense, gated and static
weights of one seed) and times Fashion-MNIST test inputs one at a time (batch 1, one thread):

  dense            every channel (gates off)
  gated, masked    the gated network's training-time forward: every channel computed, then × gates
  gated, skipping  skipping_forward: only the channels this input's gates open (sliced weights)
  static, skipping skipping_forward with the static masks (sliced like the gated one)

Variants are timed interleaved, input by input, in an order that rotates, so load on a shared
machine hits them alike. Printed: median µs per input, the ratio to dense measured in the same
run, and the FLOPs each executes per input (mean) as a fraction of dense.

--sweep: where skipping starts to pay. Untrained GatedCNNs with widths (8, 16, 32) × m whose
gates keep a random `keep` fraction of every block's channels (about keep² of the conv FLOPs),
timed the same way on random 28×28 inputs: dense vs skipping, per width multiplier m.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.data import TensorDataset

from prunekit.applications import GatedCNN, evaluate_gated, skipping_forward
from prunekit.data import load_dataset
from prunekit.modes import evaluation_mode
from prunekit.table import format_table


def load_networks(path: str, data) -> dict:
    saved = torch.load(path, weights_only=True)
    shape = dict(num_classes=data.num_classes, in_channels=data.input_shape[0], widths=tuple(saved["widths"]))
    dense, gated, static = GatedCNN(**shape), GatedCNN(**shape), GatedCNN(**shape)
    dense.load_state_dict(saved["dense"])
    dense.set_gating(False)
    gated.load_state_dict(saved["gated"])
    static.set_fixed([saved["static"][f"blocks.{i}.fixed"] for i in range(len(static.blocks))])
    static.load_state_dict(saved["static"])
    return {"dense": dense, "gated": gated, "static": static}


def interleaved_times(variants: dict, inputs: torch.Tensor, warmup: int) -> dict:
    """{variant: [seconds per input]}, the variants timed input by input in a rotating order."""
    times = {name: [] for name in variants}
    names = list(variants)
    with torch.inference_mode():
        for i in range(min(warmup, len(inputs))):
            for f in variants.values():
                f(inputs[i:i + 1])
        for i in range(len(inputs)):
            x = inputs[i:i + 1]
            for name in names[i % len(names):] + names[:i % len(names)]:
                start = time.perf_counter()
                variants[name](x)
                times[name].append(time.perf_counter() - start)
    return times


def sweep(multipliers, keep: float, inputs: int, warmup: int) -> None:
    rows = []
    generator = torch.Generator().manual_seed(0)
    for m in multipliers:
        torch.manual_seed(0)
        model = GatedCNN(widths=(8 * m, 16 * m, 32 * m)).eval()
        with torch.no_grad():  # input-independent gates: +1 for a random `keep` share of each block
            for block in model.blocks:
                block.gate.weight.zero_()
                open_ = torch.randperm(block.conv.out_channels, generator=generator)
                block.gate.bias.fill_(-1.0)
                block.gate.bias[open_[:max(1, round(keep * len(open_)))]] = 1.0
        x = torch.randn(inputs, 1, 28, 28, generator=generator)
        dense = GatedCNN(widths=(8 * m, 16 * m, 32 * m)).eval()
        dense.load_state_dict(model.state_dict())
        dense.set_gating(False)
        times = interleaved_times({"dense": dense, "skipping": lambda v: skipping_forward(model, v)}, x, warmup)
        ratio = evaluate_gated(model, TensorDataset(x, torch.zeros(len(x), dtype=torch.long)))["flops_fraction"]
        rows.append({"widths": str((8 * m, 16 * m, 32 * m)), "dense µs": round(1e6 * statistics.median(times["dense"]), 1),
                     "skipping µs": round(1e6 * statistics.median(times["skipping"]), 1),
                     "× dense latency": round(statistics.median(times["skipping"]) / statistics.median(times["dense"]), 3),
                     "FLOPs / dense": round(ratio, 3)})
    print(format_table(rows, list(rows[0])))
    print(f"{inputs} random inputs per width, batch 1, one thread; gates keep {keep:.0%} of each block's channels.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", help="seed<N>_models.pt written by experiment g")
    parser.add_argument("--sweep", help="width multipliers, e.g. 1,4,16 (untrained networks)")
    parser.add_argument("--keep", type=float, default=0.7, help="--sweep: share of channels the gates keep")
    parser.add_argument("--inputs", type=int, default=300, help="inputs timed one at a time")
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.sweep:
        sweep([int(m) for m in args.sweep.split(",")], args.keep, args.inputs, args.warmup)
        return
    if not args.models:
        parser.error("give --models (trained networks of experiment g) or --sweep")
    data = load_dataset("fashion_mnist")
    nets = load_networks(args.models, data)
    x_test = data.test.tensors[0][:args.inputs]
    variants = {"dense": lambda x: nets["dense"](x), "gated, masked": lambda x: nets["gated"](x),
                "gated, skipping": lambda x: skipping_forward(nets["gated"], x),
                "static, skipping": lambda x: skipping_forward(nets["static"], x)}
    with evaluation_mode(nets["dense"]), evaluation_mode(nets["gated"]), evaluation_mode(nets["static"]):
        times = interleaved_times(variants, x_test, args.warmup)
        for i in range(len(x_test)):  # the skipping forward computes what the masked one does
            torch.testing.assert_close(skipping_forward(nets["gated"], x_test[i:i + 1]),
                                       nets["gated"](x_test[i:i + 1]), rtol=1e-4, atol=1e-4)
    flops = {"dense": 1.0, "gated, masked": 1.0}  # the masked forward computes every channel
    flops["gated, skipping"] = evaluate_gated(nets["gated"], data.test)["flops_fraction"]
    flops["static, skipping"] = evaluate_gated(nets["static"], data.test)["flops_fraction"]
    dense = statistics.median(times["dense"])
    rows = [{"network": name, "median µs / input": round(1e6 * statistics.median(t), 1),
             "× dense latency": round(statistics.median(t) / dense, 3), "FLOPs / dense": round(flops[name], 3)}
            for name, t in times.items()]
    print(format_table(rows, list(rows[0])))
    print(f"{len(x_test)} inputs, batch 1, one thread; medians, variants interleaved.")


if __name__ == "__main__":
    main()
