"""Measured latency, and a per-layer latency lookup table built on this machine (NetAdapt).

measure_latency(model, x): the median wall time of `repeats` forward passes (after warm-up),
in eval mode without gradients; the model's mode is restored.

LatencyTable(model, x): for every Linear / Conv layer, the latency of that layer alone as a
function of its (input, output) channel counts, measured by timing a fresh layer of that
shape on an input of the shape it sees in the model, and cached. The model's latency with
layer widths (c_in, c_out)_l is predicted as

    T̂ = Σ_l t_l(c_in_l, c_out_l) + overhead · A / A_dense,
    overhead = T(dense) − Σ_l t_l(dense widths),

the overhead being everything that is not a Linear/Conv (activations, pooling, norms,
reshapes), taken as proportional to the activation volume A = Σ_l positions_l · c_out_l
those operations run over (A_dense for the dense widths).

With `grid=g` each layer is timed once on a g × g grid of (input, output) widths, made
monotone (a layer never gets faster with more channels: running maxima along both axes,
which removes timing noise that would otherwise make the cost non-monotone for the
allocators' bisections) and read by bilinear interpolation. Without a grid every width
asked for is timed exactly, once. `check(model_small, widths)` compares the prediction
with a measurement of an actually smaller model and returns the relative error.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping

import torch
from torch import nn

from ..errors import PrunekitError
from ..modes import evaluation_mode

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _as_tuple(x):
    return x if isinstance(x, tuple) else (x,)


def measure_latency(model: nn.Module, example_input, *, repeats: int = 30, warmup: int = 5,
                    threads: int | None = 1) -> float:
    """Median seconds per forward pass on `example_input` (eval mode, no_grad).

    Timed with `threads` intra-op threads (then restored; None: leave as is). One thread by
    default: on a shared machine, small layers timed with several threads measure mostly
    contention between them, not the layer.
    """
    inputs = _as_tuple(example_input)
    times = []
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        with evaluation_mode(model), torch.no_grad():
            for i in range(warmup + repeats):
                start = time.perf_counter()
                model(*inputs)
                if i >= warmup:
                    times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(before)
    return statistics.median(times)


def _widths(module: nn.Module) -> tuple[int, int]:
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    return module.in_channels, module.out_channels


def layer_widths(model: nn.Module) -> dict[str, tuple[int, int]]:
    """(input, output) channel counts of every Linear / Conv layer, by module name."""
    return {n: _widths(m) for n, m in model.named_modules() if isinstance(m, _LAYERS)}


class LatencyTable:
    """Lookup table t_l(c_in, c_out), measured lazily and cached; see the module docstring."""

    def __init__(self, model: nn.Module, example_input, *, repeats: int = 30, warmup: int = 5,
                 threads: int | None = 1, grid: int | None = None):
        if grid is not None and grid < 2:
            raise PrunekitError(f"grid is the number of widths timed per axis, ≥ 2; got {grid}.")
        self.repeats, self.warmup, self.threads, self.grid = repeats, warmup, threads, grid
        self._grids: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self.shapes: dict[str, tuple] = {}
        self.positions: dict[str, int] = {}  # output elements per output channel
        self.modules: dict[str, nn.Module] = {}
        handles = []
        for name, module in model.named_modules():
            if isinstance(module, _LAYERS):
                if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d) and module.groups != 1:
                    raise PrunekitError(f"layer '{name}' is a grouped convolution; the latency table times "
                                        "ordinary Linear/Conv layers only.")
                self.modules[name] = module
                handles.append(module.register_forward_hook(self._recorder(name)))
        if not self.modules:
            raise PrunekitError("the model has no Linear or Conv layers to build a latency table for.")
        try:
            with evaluation_mode(model), torch.no_grad():
                model(*_as_tuple(example_input))
        finally:
            for h in handles:
                h.remove()
        self.dense_widths = layer_widths(model)
        self.dense_widths = {n: w for n, w in self.dense_widths.items() if n in self.modules}
        self.entries: dict[tuple[str, int, int], float] = {}
        self.measured_dense = measure_latency(model, example_input, repeats=repeats, warmup=warmup, threads=threads)
        self.overhead = self.measured_dense - sum(self.lookup(n, *w) for n, w in self.dense_widths.items())

    def _recorder(self, name):
        def record(_module, inputs, output):
            self.shapes.setdefault(name, tuple(inputs[0].shape))  # returns None: output unchanged
            self.positions.setdefault(name, output.numel() // output.shape[-1 if output.dim() == 2 else 1])
        return record

    def _fresh(self, name: str, c_in: int, c_out: int) -> tuple[nn.Module, torch.Tensor]:
        module, shape = self.modules[name], self.shapes[name]
        if isinstance(module, nn.Linear):
            layer = nn.Linear(c_in, c_out, bias=module.bias is not None)
            x = torch.randn(*shape[:-1], c_in)
        else:
            layer = type(module)(c_in, c_out, module.kernel_size, stride=module.stride, padding=module.padding,
                                 dilation=module.dilation, bias=module.bias is not None,
                                 padding_mode=module.padding_mode)
            x = torch.randn(shape[0], c_in, *shape[2:])
        return layer, x

    def lookup(self, name: str, c_in: int, c_out: int) -> float:
        """Seconds for layer `name` with c_in inputs and c_out outputs (timed once, then cached;
        interpolated on the layer's grid when the table has one)."""
        if name not in self.modules:
            raise PrunekitError(f"no Linear/Conv layer '{name}' in the latency table; known: {', '.join(self.modules)}.")
        if c_in < 1 or c_out < 1:
            raise PrunekitError(f"layer '{name}' needs at least one input and one output channel.")
        if self.grid is not None:
            return self._interpolate(name, c_in, c_out)
        return self._timed(name, c_in, c_out)

    def _layer_grid(self, name: str):
        if name not in self._grids:
            n_in, n_out = self.dense_widths_of(name)
            ins = torch.unique(torch.linspace(1, n_in, self.grid).round().long())
            outs = torch.unique(torch.linspace(1, n_out, self.grid).round().long())
            t = torch.tensor([[self._timed(name, int(i), int(o)) for o in outs] for i in ins], dtype=torch.float64)
            t = torch.cummax(torch.cummax(t, 0).values, 1).values  # monotone in both widths
            self._grids[name] = (ins.double(), outs.double(), t)
        return self._grids[name]

    def dense_widths_of(self, name: str) -> tuple[int, int]:
        return _widths(self.modules[name])

    def _interpolate(self, name: str, c_in: float, c_out: float) -> float:
        ins, outs, t = self._layer_grid(name)

        def locate(axis, v):
            v = min(max(float(v), float(axis[0])), float(axis[-1]))
            j = min(int(torch.searchsorted(axis, torch.tensor(v, dtype=torch.float64), right=True)) - 1,
                    len(axis) - 2) if len(axis) > 1 else 0
            if len(axis) == 1:
                return 0, 0, 0.0
            return j, j + 1, (v - float(axis[j])) / (float(axis[j + 1]) - float(axis[j]))

        i0, i1, a = locate(ins, c_in)
        o0, o1, b = locate(outs, c_out)
        return float((1 - a) * (1 - b) * t[i0, o0] + a * (1 - b) * t[i1, o0] + (1 - a) * b * t[i0, o1]
                     + a * b * t[i1, o1])

    def _timed(self, name: str, c_in: int, c_out: int) -> float:
        key = (name, int(c_in), int(c_out))
        if key not in self.entries:
            layer, x = self._fresh(name, c_in, c_out)
            self.entries[key] = measure_latency(layer, x, repeats=self.repeats, warmup=self.warmup,
                                   threads=self.threads)
        return self.entries[key]

    def predict(self, widths: Mapping[str, tuple[int, int]] | None = None) -> float:
        """Predicted model latency with the given per-layer widths (missing layers: dense)."""
        widths = {**self.dense_widths, **(widths or {})}
        volume = sum(self.positions[n] * widths[n][1] for n in self.dense_widths)
        dense_volume = sum(self.positions[n] * w[1] for n, w in self.dense_widths.items())
        return self.overhead * volume / dense_volume + sum(self.lookup(n, *widths[n]) for n in self.dense_widths)

    def check(self, model: nn.Module, example_input, widths=None) -> dict:
        """Prediction vs measurement for a (smaller) model; widths default to the model's own."""
        widths = widths or {n: w for n, w in layer_widths(model).items() if n in self.dense_widths}
        predicted = self.predict(widths)
        measured = measure_latency(model, example_input, repeats=self.repeats, warmup=self.warmup,
                                   threads=self.threads)
        return {"predicted_s": predicted, "measured_s": measured,
                "relative_error": abs(predicted - measured) / measured}

    def rows(self) -> list[dict]:
        return [{"layer": n, "in": i, "out": o, "seconds": t} for (n, i, o), t in sorted(self.entries.items())]
