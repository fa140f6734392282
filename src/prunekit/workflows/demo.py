"""`prunekit demo`: pruning that works, shown in about three minutes on two CPU cores.

Two models on MNIST-5k (5,000 real handwritten digits: 4,000 to train, 1,000 to test):

1. Unstructured — LeNet-300-100 (266,610 parameters) is trained, then pruned by global weight
   magnitude in rounds (50 → 80 → 90 → 92 % of the weights), every round fine-tuned at a
   fraction of the learning rate. The zeros save storage (the weights saved as CSR), not time:
   dense kernels multiply zeros as fast as anything else, and the latency column shows it.
2. Structured — a small CNN as a user would write it (three 3×3 convolutions with BatchNorm,
   32-64-64 channels, stride 2 instead of pooling) is trained; 62.5 % of the channels of every
   convolution are removed (L2 norm of each channel with everything coupled to it, counts
   rounded to multiples of 4: 12-24-24 are left), and compaction rebuilds it as a smaller plain nn.Module whose
   outputs are checked equal to the masked model's. The small model is fine-tuned like any
   model, and its latency measured against the dense one: both timed alternately, the
   speed-up being the median of the per-pair ratios, so load from other processes hits both.

Threads: each model trains with the intra-op thread count measured fastest for it on this
machine (`prunekit.training.fastest_threads`); latencies are timed with the CNN's count.

Only prunekit's public functions are used, as in a user's own script. Everything goes to
runs/demo-<hash of the settings>/: settings.yaml, metrics.json (the headline and every
table), checkpoints (dense, CSR, compacted + its record), plots and report.html. A rerun with
the same settings loads the finished parts instead of redoing them.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import os
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import yaml
from torch import nn

import prunekit as pk
from prunekit.modes import evaluation_mode
from prunekit.recipe import plain_data
from prunekit.training import TrainConfig, fastest_threads

LENET = "LeNet-300-100"


@dataclass(frozen=True)
class DemoSettings:
    seed: int = 0
    data: str = "mnist5k"
    lenet_train: TrainConfig = TrainConfig(optimizer="adam", lr=1.2e-3, steps=1500, batch_size=100)
    sparsities: tuple[float, ...] = (0.5, 0.8, 0.9, 0.92)   # of all LeNet weights, global magnitude
    lenet_finetune_steps: int = 600
    lr_factor: float = 0.3                                    # fine-tuning lr = training lr × this
    cnn_width: int = 32                                       # channels: width, 2·width, 2·width
    cnn_train: TrainConfig = TrainConfig(optimizer="adam", lr=2e-3, steps=300, batch_size=100)
    channel_fraction: float = 0.625                           # removed from every convolution
    round_to: int = 4
    cnn_finetune_steps: int = 150
    latency_batches: tuple[int, ...] = (1, 64)
    latency_repeats: int = 30
    threads: int | None = None                                # None: the fastest measured, per model

    def __post_init__(self):
        if not self.sparsities or any(not 0 < s < 1 for s in self.sparsities) \
                or list(self.sparsities) != sorted(self.sparsities):
            raise pk.PrunekitError(f"sparsities must increase within (0, 1), e.g. (0.5, 0.9); got {self.sparsities}.")
        if not 0 < self.channel_fraction < 1:
            raise pk.PrunekitError(f"channel_fraction must be in (0, 1), not {self.channel_fraction}.")
        if not self.latency_batches or min(self.latency_batches) < 1 or self.latency_repeats < 1:
            raise pk.PrunekitError("latency_batches must be batch sizes ≥ 1 and latency_repeats ≥ 1.")
        if self.threads is not None and self.threads < 1:
            raise pk.PrunekitError(f"threads must be ≥ 1 or None (measured), not {self.threads}.")

    def to_dict(self) -> dict:
        return plain_data(dataclasses.asdict(self))

    def quick(self) -> DemoSettings:
        """A smoke run of a few seconds: every stage runs, the numbers mean nothing."""
        return replace(self, lenet_train=replace(self.lenet_train, steps=40), sparsities=(0.5, 0.9),
                       lenet_finetune_steps=10, cnn_width=8, cnn_train=replace(self.cnn_train, steps=10),
                       cnn_finetune_steps=5, latency_repeats=3, threads=1)


def settings_yaml(settings: DemoSettings) -> str:
    """The settings as YAML, lists and small mappings on one line each."""
    return yaml.safe_dump(settings.to_dict(), sort_keys=False, default_flow_style=None, width=100)


def mnist_cnn(width: int = 32, num_classes: int = 10) -> nn.Sequential:
    """Three 3×3 conv-BN-ReLU blocks (width, 2·width, 2·width channels; the last two with
    stride 2: 28 → 14 → 7), then one Linear layer: an ordinary model written with torch.nn."""
    def block(c_in, c_out, stride):
        return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
    return nn.Sequential(*block(1, width, 1), *block(width, 2 * width, 2), *block(2 * width, 2 * width, 2),
                         nn.Flatten(), nn.Linear(2 * width * 7 * 7, num_classes))


def paired_latency(first: nn.Module, second: nn.Module, x: torch.Tensor, *, repeats: int = 30,
                   warmup: int = 3) -> dict:
    """Median seconds per forward pass of two models timed alternately on `x` (eval mode, no
    gradients; modes restored), and the median of the per-pair ratios first / second.
    Every other pair runs the second model first, so that neither gains from going second
    (warm caches, a core just woken up)."""
    pairs = []
    with evaluation_mode(first), evaluation_mode(second), torch.inference_mode():
        for i in range(warmup + repeats):
            times = {}
            for model in ((first, second) if i % 2 == 0 else (second, first)):
                start = time.perf_counter()
                model(x)
                times[model] = time.perf_counter() - start
            if i >= warmup:
                pairs.append((times[first], times[second]))
    return {"first_s": statistics.median(a for a, _ in pairs), "second_s": statistics.median(b for _, b in pairs),
            "ratio": statistics.median(a / b for a, b in pairs)}


def save_csr(model: nn.Module, path: Path) -> int:
    """The weights the forward pass sees, 2-D ones stored as CSR (float32 values, row pointers
    and column indices in the smallest integer type that holds them), the rest dense.
    Returns the file's size in bytes. `load_csr` reads it back."""
    state = {}
    with torch.no_grad():
        for name in pk.named_parameters(model):
            w = pk.effective_weight(model, name).detach().cpu()
            if w.dim() != 2:
                state[name] = {"dense": w.clone()}
                continue
            nonzero = w != 0
            cols = nonzero.nonzero()[:, 1]
            counts = nonzero.sum(1)
            state[name] = {"shape": torch.tensor(w.shape), "values": w[nonzero].clone(),
                           "col_indices": cols.to(_index_type(w.shape[1])),
                           "crow_indices": torch.cat([counts.new_zeros(1), counts.cumsum(0)]).to(
                               _index_type(int(nonzero.sum()) + 1))}
    torch.save({"format": "prunekit-csr-1", "tensors": state}, path)
    return path.stat().st_size


def _index_type(limit: int) -> torch.dtype:
    return torch.int16 if limit <= 2**15 else torch.int32 if limit <= 2**31 else torch.int64


def load_csr(path: Path) -> dict[str, torch.Tensor]:
    """A plain state_dict (dense tensors) from a file written by `save_csr`."""
    data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or data.get("format") != "prunekit-csr-1":
        raise pk.PrunekitError(f"{path} was not written by save_csr.")
    state = {}
    for name, parts in data["tensors"].items():
        if "dense" in parts:
            state[name] = parts["dense"]
            continue
        rows, cols = parts["shape"].tolist()
        dense = torch.zeros(rows, cols, dtype=parts["values"].dtype)
        crow = parts["crow_indices"].long()
        row_of = torch.repeat_interleave(torch.arange(rows), crow[1:] - crow[:-1])
        dense[row_of, parts["col_indices"].long()] = parts["values"]
        state[name] = dense
    return state


def _plain_copy(build, model: nn.Module) -> nn.Module:
    """A fresh unmasked instance holding the weights `model`'s forward pass sees."""
    fresh = build()
    fresh.load_state_dict({n: pk.effective_weight(model, n).detach() for n in pk.named_parameters(model)},
                          strict=False)
    fresh.load_state_dict({n: b for n, b in model.named_buffers() if "parametrizations" not in n}, strict=False)
    return fresh


def _threads(n: int) -> str:
    return f"{n} thread{'s' if n != 1 else ''}"


def _threads_note(threads: int, times: dict[int, float]) -> str:
    if not times:
        return f"{_threads(threads)} (as set, not measured)"
    measured = ", ".join(f"{_threads(n)} {1e3 * t:.1f} ms" for n, t in sorted(times.items()))
    return f"{_threads(threads)}, the fastest measured here (per training step: {measured})"


def _choose_threads(model, data, config, settings) -> tuple[int, dict[int, float]]:
    if settings.threads is not None:
        return settings.threads, {}
    return fastest_threads(model, data.train, config)


@contextmanager
def _using_threads(n: int):
    """torch's intra-op thread count set to n for a while, then restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# Part 1: unstructured ---------------------------------------------------------------------

def _unstructured(run, data, settings: DemoSettings, progress: bool, log) -> dict:
    torch.manual_seed(settings.seed)
    build = pk.models.lenet300100
    model = build()
    cfg = settings.lenet_train
    threads, step_times = _choose_threads(model, data, cfg, settings)
    log(f"{LENET}: training with {_threads_note(threads, step_times)}")
    x = data.test.tensors[0][:max(settings.latency_batches)]
    with _using_threads(threads):
        pk.train(model, data.train, cfg, progress=f"{LENET}: dense training" if progress else False)
        dense = _plain_copy(build, model)
        run.save_checkpoint("lenet_dense", dense.state_dict())
        dense_file = run.checkpoint_path("lenet_dense").stat().st_size
        rows = [_lenet_row(0, 0.0, None, model, dense, data, x, settings)]
        log(f"  dense: accuracy {rows[0]['accuracy']:.3f}, {rows[0]['nonzero']:,} non-zero parameters")
        layers = {}
        for r, target in enumerate(settings.sparsities, start=1):
            pk.prune(model, target)
            accuracy_pruned = pk.evaluate(model, data.test)["accuracy"]
            pk.finetune(model, data.train, replace(cfg, seed=cfg.seed + r), lr_factor=settings.lr_factor,
                        steps=settings.lenet_finetune_steps,
                        progress=f"{LENET}: fine-tuning at {target:.0%}" if progress else False)
            rows.append(_lenet_row(r, target, accuracy_pruned, model, dense, data, x, settings))
            layers[f"{target:.0%}"] = pk.sparsity_table(model)["layers"]
            log(f"  {target:.0%} of the weights pruned: accuracy {accuracy_pruned:.3f} → {rows[-1]['accuracy']:.3f} "
                f"after fine-tuning, {rows[-1]['nonzero_ratio']:.1f}× fewer non-zeros")
        sparse_file = save_csr(model, run.checkpoint_path("lenet_csr"))
    run.save_checkpoint("lenet_pruned", model.state_dict())
    return {"rows": rows, "layers": layers, "threads": threads, "step_ms": _ms(step_times),
            "dense_bytes_on_disk": dense_file, "csr_bytes_on_disk": sparse_file}


def _ms(times: dict[int, float]) -> dict[str, float]:
    return {str(n): round(1e3 * t, 3) for n, t in times.items()}


def _lenet_row(r, target, accuracy_pruned, model, dense, data, x, settings) -> dict:
    counts = pk.parameter_counts(model)
    dense_total = pk.parameter_counts(dense)["total"]
    latency = paired_latency(dense, _plain_copy(pk.models.lenet300100, model), x, repeats=settings.latency_repeats)
    return {"round": r, "target_sparsity": target,
            "weight_sparsity": round(pk.sparsity_table(model)["total"]["sparsity"], 6),
            "nonzero": counts["nonzero"], "nonzero_ratio": round(dense_total / counts["nonzero"], 4),
            "accuracy_pruned": accuracy_pruned, "accuracy": pk.evaluate(model, data.test)["accuracy"],
            f"latency_ms_b{len(x)}": round(1e3 * latency["second_s"], 4),
            f"speedup_b{len(x)}": round(latency["ratio"], 4), "compressed_bytes": counts["compressed_bytes"]}


# Part 2: structured -----------------------------------------------------------------------

def _structured(run, data, settings: DemoSettings, progress: bool, log) -> dict:
    torch.manual_seed(settings.seed)
    width = settings.cnn_width
    model = mnist_cnn(width)
    cfg = settings.cnn_train
    threads, step_times = _choose_threads(model, data, cfg, settings)
    log(f"CNN ({width}-{2 * width}-{2 * width} channels): training with {_threads_note(threads, step_times)}")
    example = data.example_input(1)
    with _using_threads(threads):
        pk.train(model, data.train, cfg, progress="CNN: dense training" if progress else False)
        run.save_checkpoint("cnn_dense", model.state_dict())
        dense_accuracy = pk.evaluate(model, data.test)["accuracy"]
        masked = copy.deepcopy(model)
        pk.prune_structured(masked, settings.channel_fraction, example, round_to=settings.round_to)
        accuracy_pruned = pk.evaluate(masked, data.test)["accuracy"]
        small, record = pk.compact(masked, example)  # raises if outputs differ from the masked model's
        pk.finetune(small, data.train, replace(cfg, seed=cfg.seed + 1), lr_factor=settings.lr_factor,
                    steps=settings.cnn_finetune_steps, progress="CNN: fine-tuning the compacted model" if progress
                    else False)
        small_accuracy = pk.evaluate(small, data.test)["accuracy"]
        run.save_checkpoint("cnn_compact", small.state_dict())
        record.save(run.path / "checkpoints" / "cnn_compact.record", overwrite=True)
        latency = {b: paired_latency(model, small, data.test.tensors[0][:b], repeats=settings.latency_repeats)
                   for b in settings.latency_batches}
    rows = []
    for name, net, acc, pruned_acc, tag in (("dense", model, dense_accuracy, None, "cnn_dense"),
                                            ("compacted", small, small_accuracy, accuracy_pruned, "cnn_compact")):
        row = {"model": name, "channels": "-".join(str(m.out_channels) for m in net if isinstance(m, nn.Conv2d)),
               "params": pk.parameter_counts(net)["total"], "flops": pk.count_flops(net, example)["dense_flops"],
               "accuracy_pruned": pruned_acc, "accuracy": acc}
        for b, t in latency.items():
            row[f"latency_ms_b{b}"] = round(1e3 * (t["first_s"] if name == "dense" else t["second_s"]), 4)
            row[f"speedup_b{b}"] = 1.0 if name == "dense" else round(t["ratio"], 4)
        row["bytes_on_disk"] = run.checkpoint_path(tag).stat().st_size
        rows.append(row)
    log(f"  dense: accuracy {dense_accuracy:.3f}; {100 * settings.channel_fraction:g} % of the channels removed: "
        f"{accuracy_pruned:.3f}, {small_accuracy:.3f} after fine-tuning the compacted model")
    return {"rows": rows, "threads": threads, "step_ms": _ms(step_times)}


# Headline, report -------------------------------------------------------------------------

def _points(pt: float) -> str:
    """+0.3 pt / −0.2 pt (a typographic minus)."""
    return f"{pt:+.1f} pt".replace("-", "−")


def headline(unstructured: dict, structured: dict, settings: DemoSettings) -> dict:
    dense, final = unstructured["rows"][0], unstructured["rows"][-1]
    cnn_dense, cnn_small = structured["rows"]
    batch = max(settings.latency_batches)
    numbers = {
        "nonzero_ratio": final["nonzero_ratio"],
        "accuracy_change_pt": round(100 * (final["accuracy"] - dense["accuracy"]), 4),
        "flops_ratio": round(cnn_dense["flops"] / cnn_small["flops"], 4),
        "speedup": cnn_small[f"speedup_b{batch}"], "latency_batch": batch,
        "cnn_accuracy_change_pt": round(100 * (cnn_small["accuracy"] - cnn_dense["accuracy"]), 4),
        "disk_ratio": round(unstructured["dense_bytes_on_disk"] / unstructured["csr_bytes_on_disk"], 4),
        "cnn_disk_ratio": round(cnn_dense["bytes_on_disk"] / cnn_small["bytes_on_disk"], 4),
    }
    numbers["text"] = (f"{LENET}: {numbers['nonzero_ratio']:.1f}× fewer non-zeros, "
                       f"{_points(numbers['accuracy_change_pt'])}; CNN channels: "
                       f"{numbers['flops_ratio']:.1f}× fewer FLOPs, {numbers['speedup']:.1f}× faster "
                       f"at batch {batch}, {_points(numbers['cnn_accuracy_change_pt'])}")
    return numbers


def run_demo(settings: DemoSettings | None = None, *, output_dir: str | os.PathLike = "runs",
             progress: bool = True, log=print, data=None) -> tuple[Path, dict]:
    """Run (or resume) the demo; returns (run folder, metrics as written to metrics.json).
    `data`: the dataset `settings.data` names, already loaded (it is loaded when needed)."""
    from ..runs import RunDir

    settings = settings if settings is not None else DemoSettings()
    run = RunDir.open(output_dir, "demo", settings.to_dict())
    (run.path / "settings.yaml").write_text(settings_yaml(settings))
    parts = {}
    for name, stage in (("unstructured", _unstructured), ("structured", _structured)):
        if run.is_done(name):
            parts[name] = run.read_json(f"{name}.json")
            log(f"{name} part already finished in {run.path}: loaded, not rerun")
        else:
            if data is None:
                data = pk.data.load_dataset(settings.data)
            parts[name] = stage(run, data, settings, progress, log)
            run.write_json(f"{name}.json", parts[name])
            run.mark_done(name)
    metrics = {"headline": headline(parts["unstructured"], parts["structured"], settings), **parts,
               "environment": _environment()}
    run.write_json("metrics.json", metrics)
    report = write_report(run, settings, metrics)
    log(f"\n{metrics['headline']['text']}\nreport: {report}")
    return run.path, metrics


def _environment() -> dict:
    from ..report import environment

    info = environment()
    info.pop("torch threads")  # chosen per model, reported beside each
    return {**info, "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}


def _kb(n: int) -> str:
    return f"{n / 1024:,.0f} kB"


def write_report(run, settings: DemoSettings, metrics: dict) -> Path:
    """Plots and report.html from the demo's metrics."""
    from ..plots import grouped_bars, line_plot
    from ..report import Card, Report

    h, un, st = metrics["headline"], metrics["unstructured"], metrics["structured"]
    rows, (cnn_dense, cnn_small) = un["rows"], st["rows"]
    dense, final = rows[0], rows[-1]
    batch = h["latency_batch"]
    xs = [100 * r["weight_sparsity"] for r in rows[1:]]
    line_plot(run.plot_path("lenet_accuracy.png"), "weights pruned (%)", "test accuracy",
              {"after fine-tuning": (xs, [r["accuracy"] for r in rows[1:]]),
               "after pruning, before fine-tuning": (xs, [r["accuracy_pruned"] for r in rows[1:]]),
               "dense": (xs, [dense["accuracy"]] * len(xs))}, title=f"{LENET} on MNIST-5k")
    layer_names = [row["name"] for row in next(iter(un["layers"].values()))]
    grouped_bars(run.plot_path("lenet_layers.png"), layer_names,
                 {f"{k} overall": [row["sparsity"] for row in v] for k, v in un["layers"].items()},
                 y_label="sparsity of the layer", title="Where global magnitude pruning removed weights")
    convs = [f"conv{i + 1}" for i in range(len(cnn_dense["channels"].split("-")))]
    grouped_bars(run.plot_path("cnn_channels.png"), convs,
                 {r["model"]: [int(c) for c in r["channels"].split("-")] for r in (cnn_dense, cnn_small)},
                 y_label="output channels", title="CNN channels before and after compaction")
    threads = _threads(st["threads"])
    report = Report("prunekit demo — pruning on real MNIST digits")
    report.headline(h["text"], [
        Card(f"{h['nonzero_ratio']:.1f}×", "fewer non-zero parameters",
             f"{LENET}: {dense['nonzero']:,} → {final['nonzero']:,}", "nonzero_ratio", h["nonzero_ratio"]),
        Card(_points(h["accuracy_change_pt"]), "test accuracy, unstructured",
             f"{dense['accuracy']:.1%} → {final['accuracy']:.1%} on 1,000 test digits", "accuracy_change_pt",
             h["accuracy_change_pt"]),
        Card(f"{h['disk_ratio']:.1f}×", "smaller on disk",
             f"{_kb(un['dense_bytes_on_disk'])} float32 → {_kb(un['csr_bytes_on_disk'])} CSR", "disk_ratio",
             h["disk_ratio"]),
        Card(f"{h['flops_ratio']:.1f}×", "fewer FLOPs, channels removed",
             f"CNN {cnn_dense['channels']} → {cnn_small['channels']} channels, compacted", "flops_ratio",
             h["flops_ratio"]),
        Card(f"{h['speedup']:.1f}×", f"faster at batch {batch}, measured",
             f"{cnn_dense[f'latency_ms_b{batch}']:.2f} → {cnn_small[f'latency_ms_b{batch}']:.2f} ms, median of "
             f"{settings.latency_repeats} alternating runs, {threads}", "speedup", h["speedup"]),
        Card(_points(h["cnn_accuracy_change_pt"]), "test accuracy, structured",
             f"{cnn_dense['accuracy']:.1%} → {cnn_small['accuracy']:.1%}; {_kb(cnn_dense['bytes_on_disk'])} → "
             f"{_kb(cnn_small['bytes_on_disk'])} on disk", "cnn_accuracy_change_pt", h["cnn_accuracy_change_pt"]),
    ])
    report.text(f"Run folder: {run.path}. Data: MNIST-5k, 5,000 real handwritten digits (4,000 train, 1,000 test).")

    report.heading(f"Unstructured: {LENET}, global magnitude pruning")
    report.text(f"Each round removes the smallest weights of the whole network, then fine-tunes for "
                f"{settings.lenet_finetune_steps} steps at {settings.lr_factor:g} × the learning rate. The latency "
                f"column (batch {batch}, weights baked in, {_threads(un['threads'])}) "
                "shows why unstructured zeros need sparse storage or kernels to pay off: dense kernels run them "
                "at full cost.")
    report.table(rows, ["round", "target_sparsity", "weight_sparsity", "nonzero", "nonzero_ratio", "accuracy_pruned",
                        "accuracy", f"latency_ms_b{batch}", f"speedup_b{batch}", "compressed_bytes"],
                 table_id="unstructured",
                 caption="accuracy_pruned: right after pruning; accuracy: after fine-tuning; speedup: median of the "
                         "per-pair ratios dense ÷ pruned, timed alternately; compressed_bytes: the smallest of "
                         "dense / bitmask / CSR per tensor.")
    report.image("plots/lenet_accuracy.png", "Test accuracy after each round")
    report.image("plots/lenet_layers.png", "Sparsity of each layer after each round")

    report.heading("Structured: channels of a CNN, removed for real")
    report.text(f"{100 * settings.channel_fraction:g} % of the channels of every convolution are masked (L2 norm of "
                f"each channel with its coupled BatchNorm and next-layer slices, counts rounded to multiples of "
                f"{settings.round_to}), compaction rebuilds the network as a smaller plain nn.Module with the same "
                f"outputs, which is then fine-tuned for {settings.cnn_finetune_steps} steps. Latencies: dense and "
                f"compacted timed alternately, median of {settings.latency_repeats} runs each, {threads}.")
    columns = ["model", "channels", "params", "flops", "accuracy_pruned", "accuracy"]
    for b in settings.latency_batches:
        columns += [f"latency_ms_b{b}", f"speedup_b{b}"]
    report.table(st["rows"], columns + ["bytes_on_disk"], table_id="structured",
                 caption="flops: per example; speedup: median of the per-pair ratios dense ÷ compacted.")
    report.image("plots/cnn_channels.png", "Output channels of each convolution")

    report.heading("Settings")
    report.code(settings_yaml(settings), "yaml")
    def threads_line(part):
        return _threads_note(part["threads"], {int(n): ms / 1e3 for n, ms in part["step_ms"].items()})

    report.footer({**metrics["environment"], f"threads, {LENET}": threads_line(un), "threads, CNN": threads_line(st)})
    return report.save(run.path / "report.html")
