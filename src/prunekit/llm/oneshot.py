"""One-shot pruning of a causal language model's decoder Linear layers, block by block.

    result = prune_oneshot(model, tokens, "sparsegpt", sparsity=0.5, owl=True)

validates everything first, then (OWL only) measures the per-block sparsities on the dense
model, then prunes every decoder block's Linear layers from their own calibration inputs in
the sequential engine. Reconstructed weights (SparseGPT) are written into the dense
parameters block by block, the originals saved to a temporary file first (llm.undo: memory
stays at the model plus one block); the masks are installed at the end with
`prunekit.masks.apply_masks`. A failure anywhere restores the model exactly.
Embeddings and the output head are not pruned, as in the papers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..errors import PrunekitError
from ..masks import MaskSet, apply_masks, get_masks
from ..training import resolve_device
from .engine import BlockRun, block_linears, check_calibration, decoder_layers, run_blockwise
from .methods import get_method
from .owl import OWL
from .targets import NM, check_fits, parse_target
from .undo import DiskUndo


@dataclass
class OneShotResult:
    method: str
    target: str                      # "0.5" or "2:4"
    masks: MaskSet
    block_sparsities: list[float]    # the sparsity each decoder block was pruned to
    seconds: float
    owl: bool = False
    rows: list[dict] = field(default_factory=list)  # per layer: name, sparsity

    @property
    def sparsity(self) -> float:
        return self.masks.sparsity()


def _check_model(model, target) -> tuple[str, list[dict[str, torch.nn.Linear]]]:
    path, layers = decoder_layers(model)
    linears = [block_linears(block) for block in layers]
    if not all(linears):
        raise PrunekitError(f"A decoder block of {type(model).__name__} has no nn.Linear layer to prune.")
    masked = set(get_masks(model))
    for index, block in enumerate(linears):
        for name, layer in block.items():
            full = f"{path}.{index}.{name}.weight"
            if full in masked:
                raise PrunekitError(f"{full} already carries a prunekit mask; bake it in with "
                                    "prunekit.masks.remove_masks(model) before pruning again.")
            check_fits(target, tuple(layer.weight.shape), full)
    return path, linears


def prune_oneshot(model, tokens=None, method="wanda", *, sparsity=None, nm=None, owl: bool | OWL = False,
                  batch_size: int = 8, device="cpu", progress: bool | None = None) -> OneShotResult:
    """Prune `model`'s decoder Linear layers in place; see the module docstring.

    tokens: calibration ids (sequences × length), needed by data-aware methods and OWL.
    method: "magnitude" | "wanda" | "sparsegpt" or a LayerMethod instance.
    sparsity / nm: a fraction in [0, 1) or an N:M pattern such as "2:4" (exactly one).
    owl: True (or an OWL with its own hyper-parameters) for outlier-weighted block sparsities.
    device: "cpu", "cuda" or "auto": where each block is processed.
    """
    started = time.perf_counter()
    layer_method = get_method(method)
    target = parse_target(sparsity, nm)
    allocator = OWL() if owl is True else (owl or None)
    if allocator is not None and isinstance(target, NM):
        raise PrunekitError("OWL allocates unstructured sparsities; an N:M pattern is the same in every layer. "
                            "Drop owl= or use sparsity=.")
    if allocator is not None and not isinstance(allocator, OWL):
        raise PrunekitError(f"owl= takes True, False or an OWL(...), got {owl!r}.")
    needs_data = layer_method.needs is not None or allocator is not None
    if needs_data:
        if tokens is None:
            raise PrunekitError(f"Method '{layer_method.name}'{' with OWL' if allocator else ''} needs calibration "
                                "tokens; pass tokens=prunekit.llm.calibration_tokens(tokenizer).")
        tokens = check_calibration(tokens)
    if batch_size < 1:
        raise PrunekitError(f"batch_size must be at least 1, got {batch_size}.")
    resolve_device(device)
    path, linears = _check_model(model, target)
    engine = dict(batch_size=batch_size, device=device, progress=progress)

    if allocator is not None:
        targets = allocator.allocate(model, tokens, target, **engine)
    else:
        targets = [target] * len(linears)

    pending: dict[str, torch.Tensor] = {}  # masks, installed once every block is pruned

    def prune_block(index: int, block_layers, stats, undo: DiskUndo) -> dict[str, torch.Tensor]:
        substitutes, rewritten = {}, {}
        for name, layer in block_layers.items():
            outcome = layer_method.prune(layer.weight, stats.pop(name) if stats else None, targets[index])
            new = layer.weight if outcome.weight is None else outcome.weight
            substitutes[f"{name}.weight"] = torch.where(outcome.mask, new, new.new_zeros(()))
            pending[f"{path}.{index}.{name}.weight"] = outcome.mask.cpu()
            if outcome.weight is not None:
                rewritten[name] = (layer.weight, outcome)
        if rewritten:  # kept weights change: originals to disk, then the new values in place
            undo.save({name: weight for name, (weight, _) in rewritten.items()})
            for weight, outcome in rewritten.values():
                weight[outcome.mask] = outcome.weight[outcome.mask].to(weight.dtype)
        return substitutes

    with DiskUndo() as undo, torch.no_grad():
        if layer_method.needs is None:
            for index, block_layers in enumerate(linears):
                prune_block(index, block_layers, None, undo)
        else:
            def process(run: BlockRun):
                stats = run.input_statistics(gram=layer_method.needs == "gram")
                return prune_block(run.index, linears[run.index], stats, undo)

            run_blockwise(model, tokens, process, description=f"{layer_method.name} {target}", **engine)
        masks = apply_masks(model, MaskSet.adopt(pending))  # fresh bool masks: no second copy
    rows = [{"layer": name, "sparsity": 1.0 - mask.float().mean().item()} for name, mask in masks.items()]
    block_sparsities = [float(t.sparsity) if isinstance(t, NM) else float(t) for t in targets]
    return OneShotResult(layer_method.name, str(target), masks, block_sparsities, time.perf_counter() - started,
                         owl=allocator is not None, rows=rows)
