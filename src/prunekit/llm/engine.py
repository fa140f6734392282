"""The sequential (block-by-block) calibration engine for decoder-only language models.

    tokens ─► embeddings ─► block 0 ─► block 1 ─► … ─► block L−1
                 (captured)   process   process         process

The model runs on the calibration tokens only as far as the first decoder block, whose
inputs are captured together with the keyword arguments the model passes it (attention
mask, rotary position embeddings, …). Then, one block at a time: `process_block` sees the
block and the calibration batches reaching it (it may run the block, e.g. to record its
Linear layers' inputs) and returns substitute weights; the block then runs with those
weights and its outputs become the next block's inputs. Each block therefore sees inputs
produced by the blocks already processed before it, as in SparseGPT and Wanda, and the
memory beyond the model is one block's calibration activations. With a GPU `device`, only
the block being processed and its activations live there.

The engine never modifies the model: substitutes are applied with
`torch.func.functional_call` for the propagation only.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call

from ..errors import PrunekitError
from ..modes import evaluation_mode
from ..training import resolve_device
from .memory import release_free_memory
from .statistics import InputStatistics

#: where causal LMs of the transformers library keep their decoder blocks
LAYER_PATHS = ("model.layers", "model.decoder.layers", "transformer.h", "gpt_neox.layers", "model.transformer.h")


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(dotted path, ModuleList) of the model's decoder blocks."""
    for path in LAYER_PATHS:
        try:
            layers = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(layers, nn.ModuleList) and len(layers):
            return path, layers
    raise PrunekitError(f"Found no decoder blocks in {type(model).__name__} (looked for {', '.join(LAYER_PATHS)}); "
                        "pass a causal language model such as transformers' LlamaForCausalLM.")


def block_linears(block: nn.Module) -> dict[str, nn.Linear]:
    """The block's Linear layers by their name inside the block."""
    return {name: module for name, module in block.named_modules() if isinstance(module, nn.Linear)}


def check_calibration(tokens) -> torch.Tensor:
    """Calibration token ids as a (sequences × length) LongTensor with at least one token."""
    if not isinstance(tokens, torch.Tensor):
        raise PrunekitError(f"Calibration tokens must be a tensor of token ids (sequences × length), got "
                            f"{type(tokens).__name__}; see prunekit.llm.calibration_tokens.")
    if tokens.dim() == 1:
        tokens = tokens.unsqueeze(0)
    if tokens.dim() != 2 or tokens.is_floating_point() or tokens.is_complex():
        raise PrunekitError(f"Calibration tokens must be integer ids shaped (sequences × length), got "
                            f"{tuple(tokens.shape)} {tokens.dtype}.")
    if tokens.numel() == 0:
        raise PrunekitError(f"No calibration tokens (shape {tuple(tokens.shape)}); pass at least one sequence "
                            "of at least one token, e.g. prunekit.llm.calibration_tokens(tokenizer).")
    return tokens.long()


def _moved(obj, device: torch.device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(_moved(o, device) for o in obj)
    if isinstance(obj, list):
        return [_moved(o, device) for o in obj]
    if isinstance(obj, dict):
        return {k: _moved(v, device) for k, v in obj.items()}
    return obj


class _Captured(Exception):
    """Raised by the capture hook to stop the forward pass at the first block."""


def capture_block_inputs(model: nn.Module, layers: nn.ModuleList, tokens: torch.Tensor, batch_size: int):
    """(hidden states of every sequence at the first block, [(extra positional args, keyword args)] per batch).

    The hidden states are one tensor (sequences × length × width), not one per batch: the engine
    replaces it by the block's outputs as a whole, so the calibration activations never fragment
    the heap (one large allocation, returned to the system when the next block's is made).
    """
    hidden, extras = [], []

    def stop_at_first_block(module, args, kwargs):
        kwargs = dict(kwargs)
        hidden.append(args[0] if args else kwargs.pop("hidden_states"))
        extras.append((tuple(args[1:]), kwargs))
        raise _Captured

    handle = layers[0].register_forward_pre_hook(stop_at_first_block, with_kwargs=True)
    try:
        for batch in tokens.split(batch_size):
            try:
                model(input_ids=batch, use_cache=False)
            except _Captured:
                pass
    finally:
        handle.remove()
    if len(hidden) != len(tokens.split(batch_size)):
        raise PrunekitError("The model's forward pass did not reach its first decoder block.")
    return torch.cat(hidden), extras


class BlockRun:
    """One decoder block with the calibration activations that reach it.

    `hidden` holds every calibration sequence's input to the block; it is valid while the
    block is processed (the engine releases it afterwards; copy what you keep).
    """

    def __init__(self, index: int, block: nn.Module, hidden: torch.Tensor, extras: list, batch_size: int):
        self.index = index
        self.block = block
        self.hidden = hidden
        self.extras = extras  # [(extra positional args, keyword args)] per batch
        self.batch_size = batch_size

    @property
    def inputs(self) -> list[torch.Tensor]:
        """The block's input batches (views of `hidden`)."""
        return list(self.hidden.split(self.batch_size))

    def outputs(self, weights: dict[str, torch.Tensor] | None = None):
        """The block's output on each batch in turn (a generator: one batch's output alive at a time), with
        `weights` (name inside the block → tensor) substituted."""
        for hidden, (args, kwargs) in zip(self.inputs, self.extras):
            if weights:
                out = functional_call(self.block, weights, (hidden, *args), kwargs, strict=False)
            else:
                out = self.block(hidden, *args, **kwargs)
            yield out[0] if isinstance(out, (tuple, list)) else out

    def propagate(self, weights: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The next block's input: the outputs on every sequence, written into one new tensor."""
        outputs = torch.empty_like(self.hidden)
        for batch, out in zip(outputs.split(self.batch_size), self.outputs(weights)):
            batch.copy_(out)
        return outputs

    def input_statistics(self, *, gram: bool) -> dict[str, InputStatistics]:
        """Run the block as it is and accumulate every Linear layer's input statistics."""
        linears = block_linears(self.block)
        stats = {name: InputStatistics(layer.in_features, gram=gram, device=layer.weight.device)
                 for name, layer in linears.items()}
        # Layers fed the very same tensor (q/k/v projections, gate/up) share one accumulator:
        # the Gram matrix is computed once for them. `owner` is settled on the first batch.
        owner, last = {}, {"input": None, "owner": None}

        def record(name, inputs):
            x = inputs[0]
            if name not in owner:
                owner[name] = last["owner"] if x is last["input"] else name
            if owner[name] == name:
                stats[name].add(x)
            last["input"], last["owner"] = x, owner[name]

        handles = [layer.register_forward_hook(lambda _m, inputs, _out, n=name: record(n, inputs))
                   for name, layer in linears.items()]
        try:
            for _ in self.outputs(None):
                pass  # the hooks record; the outputs are not needed
        finally:
            for handle in handles:
                handle.remove()
        return {name: stats[owner.get(name, name)] for name in linears}


def run_blockwise(model: nn.Module, tokens: torch.Tensor, process_block: Callable[[BlockRun], dict | None], *,
                  batch_size: int = 8, device="cpu", progress: bool | None = None, description: str = "blocks"):
    """Call `process_block(BlockRun)` for every decoder block in order (see the module docstring).

    `process_block` returns substitute weights (name inside the block → tensor) for the
    propagation to the next block, or None to propagate with the block as it is.
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise PrunekitError(f"batch_size must be at least 1, got {batch_size}.")
    tokens = check_calibration(tokens)
    device = resolve_device(device)
    _, layers = decoder_layers(model)
    show = sys.stderr.isatty() if progress is None else progress
    with torch.no_grad(), evaluation_mode(model):
        hidden, extras = capture_block_inputs(model, layers, tokens, batch_size)
        hidden, extras = hidden.to(device), _moved(extras, device)
        for index, block in enumerate(tqdm(layers, desc=description, disable=not show, leave=False)):
            home = next(block.parameters()).device
            block.to(device)
            try:
                run = BlockRun(index, block, hidden, extras, batch_size)
                substitutes = process_block(run)
                hidden = run.propagate(substitutes)
            finally:
                block.to(home)
            del run, substitutes
            release_free_memory()
