"""Graph, prune and compact time and peak memory per model: prunekit beside Torch-Pruning.

Runs in the zoo environment (torchvision, transformers, torch-pruning; `make test-zoo` creates it):

    .venv-zoo/bin/python benchmarks/graph_speed.py [--repeats 3] [--ratio 0.5] [--models resnet18,bert]

Each (model, tool) run is a fresh process, so its peak RSS is its own (reported relative to the
model's size: the model plus everything the run added, activations included); runs are interleaved
(model by model, the tools' order alternating between repeats) so load on a shared machine
hits both tools alike. Per model: median seconds of each stage, the median total ratio
prunekit / Torch-Pruning, and peak RSS relative to the model's own size after it was built.
prunekit: build_graph → prune_structured (L2, local) → compact (a copy, output checked).
Torch-Pruning: MagnitudePruner construction (its graph) → step() (scores, removes in place).
`--tools prunekit_inplace` compacts in place (`compact(..., inplace=True)`); `--tools forwards`
times only the three forward passes prunekit's run contains (dense, masked, compacted; median
of 3 each), the part of its time no bookkeeping can remove while compact proves its output. Any torchvision
model name works in --models (e.g. regnet_y_128gf, vit_h_14 for memory), and any timm model as
timm:NAME (e.g. timm:vit_small_patch16_224).
`--src prunekit_base=/path/to/other/src` runs a tool (any name starting with "prunekit") from another
checkout of the sources, so two versions are compared in the same interleaved run.
Wall seconds are what a user waits; CPU seconds (this process only) are also recorded, and on a
machine shared with other jobs they are the steadier measure of the work each tool does.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings

import torch
from torch import nn

TORCHVISION = ["resnet18", "resnet50", "resnet152", "mobilenet_v3_large", "efficientnet_b0", "convnext_tiny",
               "vit_b_16", "swin_t", "densenet121", "regnet_y_16gf"]
HF = ["bert", "gpt2", "llama"]


def build(name: str):
    """(model in eval mode, example input, layers Torch-Pruning must leave alone)."""
    torch.manual_seed(0)
    import torchvision

    if name in torchvision.models.list_models(module=torchvision.models):  # the fixed list, or any other
        model = torchvision.models.get_model(name, weights=None).eval()
        head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        return model, torch.randn(1, 3, 224, 224), [head]
    if name.startswith("timm:"):  # any timm model, e.g. timm:vit_small_patch16_224
        import timm

        model = timm.create_model(name[len("timm:"):], pretrained=False).eval()
        head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        return model, torch.randn(1, *model.pretrained_cfg["input_size"]), [head]
    import transformers as T

    tokens = torch.randint(0, 1000, (1, 128))
    if name == "bert":  # BERT-base
        return T.BertModel(T.BertConfig()).eval(), tokens, []
    if name == "gpt2":  # GPT-2 small
        return T.GPT2Model(T.GPT2Config()).eval(), tokens, []
    if name == "llama":  # SmolLM2-135M's shape: 30 layers, 9 query / 3 key-value heads
        config = T.LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                               num_key_value_heads=3, vocab_size=49152, max_position_embeddings=2048)
        return T.LlamaModel(config).eval(), tokens, []
    raise SystemExit(f"unknown model {name}")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _first_tensor(out):
    """HF models return ModelOutput objects: Torch-Pruning traces from the hidden states."""
    return out if isinstance(out, torch.Tensor) else out[0]


class Stopwatch:
    """Wall and CPU seconds of each named stage."""

    def __init__(self):
        self.wall, self.cpu = {}, {}

    def __call__(self, stage: str, work):
        wall, cpu = time.perf_counter(), time.process_time()
        result = work()
        self.wall[stage], self.cpu[stage] = time.perf_counter() - wall, time.process_time() - cpu
        return result


def run_prunekit(model, example, ratio, ignored, inplace=False):
    from prunekit import build_graph, compact, prune_structured

    watch = Stopwatch()
    graph = watch("graph", lambda: build_graph(model, example))
    watch("prune", lambda: prune_structured(model, ratio, example, scope="local", graph=graph))
    small, _ = watch("compact", lambda: compact(model, example, graph=graph, inplace=inplace))
    return watch, params(small)


def run_torch_pruning(model, example, ratio, ignored):
    import torch_pruning as tp

    watch = Stopwatch()
    pruner = watch("graph", lambda: tp.pruner.MagnitudePruner(
        model, example, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=ratio,
        ignored_layers=ignored, output_transform=_first_tensor))
    watch("prune", pruner.step)  # scores, selects and removes channels in one call
    watch.wall["compact"] = watch.cpu["compact"] = 0.0  # part of step()
    return watch, params(model)


def run_forwards(model, example, ratio, ignored):
    """Not a pruning run: the forward passes prunekit's graph + prune + compact cannot avoid (the
    trace is a forward of the dense model; compact's proof runs the masked and the compacted
    one), each the median of 3 at the example's batch, so the table shows what they alone cost."""
    from prunekit import build_graph, compact, prune_structured

    def median_forward(net):
        seconds = []
        for _ in range(3):
            watch = Stopwatch()
            watch("forward", lambda: net(example))
            seconds.append((watch.wall["forward"], watch.cpu["forward"]))
        return tuple(statistics.median(s[i] for s in seconds) for i in range(2))

    passes = {"dense forward": median_forward(model)}
    graph = build_graph(model, example)
    prune_structured(model, ratio, example, scope="local", graph=graph)
    passes["masked forward"] = median_forward(model.eval())
    small, _ = compact(model, example, graph=graph, check=False)
    passes["compacted forward"] = median_forward(small.eval())
    watch = Stopwatch()
    watch.wall, watch.cpu = {k: v[0] for k, v in passes.items()}, {k: v[1] for k, v in passes.items()}
    return watch, params(small)


def worker(name: str, tool: str, ratio: float) -> None:
    """One run in this process; prints one JSON line."""
    warnings.simplefilter("ignore")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model, example, ignored = build(name)
    before = rss_mb()
    dense = params(model)
    result = {"model": name, "tool": tool, "params": dense, "model_mb": dense * 4 / 2**20, "rss_built_mb": before}
    try:
        with torch.enable_grad() if tool == "torch_pruning" else torch.no_grad():
            if tool.startswith("prunekit"):
                watch, kept = run_prunekit(model, example, ratio, ignored, inplace=tool.endswith("_inplace"))
            elif tool == "forwards":
                watch, kept = run_forwards(model, example, ratio, ignored)
            else:
                watch, kept = run_torch_pruning(model, example, ratio, ignored)
        result.update(times=watch.wall, cpu=watch.cpu, kept=kept / dense)
        if tool.startswith("prunekit"):
            import prunekit

            result["source"] = os.path.dirname(os.path.dirname(prunekit.__file__))
    except Exception as e:  # noqa: BLE001 - a tool failing on a model is a result, not a crash
        result["error"] = f"{type(e).__name__}: {str(e)[:120]}"
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--models", default=",".join(TORCHVISION + HF))
    parser.add_argument("--tools", default="prunekit,torch_pruning",
                        help="prunekit, prunekit_inplace (compact(inplace=True)), torch_pruning, forwards")
    parser.add_argument("--src", action="append", default=[], metavar="TOOL=PATH",
                        help="run TOOL (a name starting with prunekit) from the sources under PATH")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="which seconds the table shows")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=600, help="seconds one run may take")
    parser.add_argument("--log", help="append every run's result (one JSON line) to this file")
    parser.add_argument("--table-from", help="print the table of the runs logged in this file, run nothing")
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "TOOL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        torch.set_num_threads(args.threads)
        return worker(*args.worker, args.ratio)
    from prunekit.table import format_table

    models, tools = args.models.split(","), args.tools.split(",")
    sources = dict(item.split("=", 1) for item in args.src)
    results: dict[tuple[str, str], list[dict]] = {}
    if args.table_from:  # the table of runs logged earlier (a run cut short, or several sessions)
        with open(args.table_from) as f:
            for line in f:
                result = json.loads(line)
                results.setdefault((result["model"], result["tool"]), []).append(result)
        models = [m for m in models if any((m, t) in results for t in tools)]
        args.repeats = max(len(v) for v in results.values())
    for r in range(0 if args.table_from else args.repeats):
        for name in models:
            for tool in (tools if r % 2 == 0 else tools[::-1]):
                command = [sys.executable, __file__, "--worker", name, tool, "--ratio", str(args.ratio),
                           "--threads", str(args.threads)]
                env = dict(os.environ)
                if tool in sources:
                    env["PYTHONPATH"] = os.pathsep.join([sources[tool]] + [p for p in [env.get("PYTHONPATH")] if p])
                try:
                    out = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout, env=env)
                    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
                    result = json.loads(lines[-1]) if lines else {
                        "model": name, "tool": tool, "error": (out.stderr.strip().splitlines() or ["?"])[-1][:120]}
                except subprocess.TimeoutExpired:
                    result = {"model": name, "tool": tool, "error": f"over {args.timeout} s"}
                results.setdefault((name, tool), []).append(result)
                if args.log:
                    with open(args.log, "a") as f:
                        f.write(json.dumps(result) + "\n")
                print(f"  {name:18s} {tool:14s} "
                      f"{result.get('error') or sum(result['times'].values()):.>10}", file=sys.stderr)
    key = "times" if args.clock == "wall" else "cpu"
    rows, ratios, base_ratios, forward_shares = [], [], [], []
    for name in models:
        row = {"model": name}
        totals = {}
        for tool in tools:
            runs = [x for x in results.get((name, tool), []) if "times" in x]
            short = {"torch_pruning": "tp", "forwards": "fwd"}.get(
                tool, tool.replace("prunekit", "pk").replace("_", " "))
            if not runs:
                failed = results.get((name, tool), [{"error": "not run"}])[0].get("error", "?")
                row[f"{short} total s"] = "failed: " + failed[:40]
                continue
            first = runs[0]
            row["params M"] = f"{first['params'] / 1e6:.1f}"
            for stage in first[key]:
                if short != "tp" or stage != "compact":  # Torch-Pruning removes inside its prune step
                    row[f"{short} {stage} s"] = f"{statistics.median(x[key][stage] for x in runs):.2f}"
            totals[tool] = statistics.median(sum(x[key].values()) for x in runs)
            row[f"{short} total s"] = f"{totals[tool]:.2f}"
            row["model MB"] = f"{first['model_mb']:.0f}"
            extra = statistics.median(x["peak_rss_mb"] - x["rss_built_mb"] for x in runs)
            row[f"{short} peak/model"] = f"{(extra + first['model_mb']) / first['model_mb']:.2f}"
            row[f"{short} kept"] = f"{first['kept']:.2f}"
        if "prunekit" in totals and "torch_pruning" in totals:
            ratio = totals["prunekit"] / totals["torch_pruning"]
            ratios.append(ratio)
            row["pk/tp"] = f"{ratio:.2f}"
        if "prunekit_base" in totals and "torch_pruning" in totals:
            base_ratios.append(totals["prunekit_base"] / totals["torch_pruning"])
            row["pk base/tp"] = f"{base_ratios[-1]:.2f}"
        if "forwards" in totals and "torch_pruning" in totals:
            forward_shares.append(totals["forwards"] / totals["torch_pruning"])
            row["fwd/tp"] = f"{forward_shares[-1]:.2f}"
        rows.append(row)
    print(f"\n### graph + prune + compact, {int(args.ratio * 100)} % of every group's channels, {args.clock} "
          f"seconds, median of {args.repeats}, {args.threads} thread(s), load average {os.getloadavg()[0]:.1f}\n")
    print(format_table(rows))
    if ratios:
        print(f"\nmedian prunekit / Torch-Pruning total time over {len(ratios)} models both ran: "
              f"{statistics.median(ratios):.2f}")
    if base_ratios:
        print(f"median prunekit_base / Torch-Pruning: {statistics.median(base_ratios):.2f}")
    if forward_shares:
        print(f"median (dense + masked + compacted forward) / Torch-Pruning's total: "
              f"{statistics.median(forward_shares):.2f}")
    print("peak/model: (peak RSS − RSS once the model was built + the model's fp32 size) / the model's size, i.e.\n"
          "the memory the run needed, model and activations included, in units of the model.")


if __name__ == "__main__":
    main()
