"""Dynamic (input-dependent) channel gating for a small CNN, and the FLOPs each input executes.

Each block is conv k×k → BatchNorm → ReLU → ×g, where g ∈ {0, 1}^C_out is predicted for this
input by a gate: a linear map of the block input's global average (C_in numbers) to C_out
logits ℓ. Hard gates g = [ℓ > 0] are used in the forward pass, always; during training the
gradient flows through σ(ℓ) (straight-through: g + σ(ℓ) − sg(σ(ℓ))), so a closed gate can
reopen. A static mask (`fixed`) replaces the gate for static channel pruning.

FLOPs executed for one input (2 per multiply-accumulate, Conv and Linear layers as in
prunekit.accounting): block l with H_l·W_l output positions, k×k kernels, n_in active input
channels (the previous block's open gates; all image channels for the first block) and
n_out open gates computes only the open channels from the active inputs:

    MACs_l = H_l W_l k² · n_in · n_out        gate: C_in · C_out      classifier: n_last · classes

A closed channel is zero after the block, so the next block skips it as an input.
Training minimises  cross-entropy + λ · max(0, F̄/F_dense − target)  with F̄ the batch's mean
executed FLOPs computed from the straight-through gates (differentiable through σ).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import PrunekitError
from ..modes import evaluation_mode, training_mode
from ..training import TrainConfig, batches, make_optimizer


class GatedBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel: int = 3, pool: bool = True, gate_bias: float = 1.0):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.gate = nn.Linear(c_in, c_out)
        nn.init.constant_(self.gate.bias, gate_bias)  # gates start open: training closes them
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()
        self.register_buffer("fixed", None)
        self.gating = True

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, C_out) gates in {0, 1} (straight-through in training)."""
        if self.fixed is not None:
            return self.fixed.to(x.dtype).expand(len(x), -1)
        if not self.gating:
            return x.new_ones(len(x), self.conv.out_channels)
        logits = self.gate(x.mean((2, 3)))
        hard = (logits > 0).to(x.dtype)
        if not self.training:
            return hard
        soft = torch.sigmoid(logits)
        return hard + (soft - soft.detach())  # exactly `hard` forward, σ's gradient backward

    def forward(self, x):
        g = self.gates(x)
        self.last_gates = g
        y = F.relu(self.bn(self.conv(x))) * g[:, :, None, None]
        self.last_positions = y.shape[-2] * y.shape[-1]
        return self.pool(y)


class GatedCNN(nn.Module):
    """Gated blocks (conv3×3-BN-ReLU-gate-maxpool) → global average → Linear."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, widths=(16, 32, 64)):
        super().__init__()
        if not widths:
            raise PrunekitError("GatedCNN needs at least one block width.")
        chans = (in_channels, *widths)
        self.blocks = nn.ModuleList(GatedBlock(a, b, pool=i < len(widths) - 1)
                                    for i, (a, b) in enumerate(zip(chans, chans[1:])))
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.fc(x.mean((2, 3)))

    def set_gating(self, on: bool) -> None:
        """on: input-dependent gates; off: every channel computed (the dense network)."""
        for block in self.blocks:
            block.gating = on

    def set_fixed(self, masks) -> None:
        """Static channel masks (one bool vector per block), or None to return to the gates."""
        if masks is None:
            masks = [None] * len(self.blocks)
        if len(masks) != len(self.blocks):
            raise PrunekitError(f"Give one channel mask per block ({len(self.blocks)}), not {len(masks)}.")
        for block, mask in zip(self.blocks, masks):
            if mask is not None and tuple(mask.shape) != (block.conv.out_channels,):
                raise PrunekitError(f"A block with {block.conv.out_channels} channels needs a mask of that length, "
                                    f"not shape {tuple(mask.shape)}.")
        for block, mask in zip(self.blocks, masks):
            block.fixed = None if mask is None else mask.to(torch.bool).clone()


def executed_flops(model: GatedCNN) -> torch.Tensor:
    """Per-example FLOPs of the last forward pass (see the module docstring); differentiable
    in the gates while training."""
    active_in = None
    total = 0.0
    for block in model.blocks:
        g = block.last_gates
        n_out = g.sum(1)
        n_in = torch.full_like(n_out, block.conv.in_channels) if active_in is None else active_in
        k2 = block.conv.kernel_size[0] * block.conv.kernel_size[1]
        total = total + block.last_positions * k2 * n_in * n_out
        if block.fixed is None and block.gating:
            total = total + block.gate.in_features * block.gate.out_features
        active_in = n_out
    total = total + active_in * model.fc.out_features
    return 2 * total


def dense_flops(model: GatedCNN, example: torch.Tensor) -> float:
    """FLOPs of one example with every channel computed and no gates."""
    flags = [(b.gating, b.fixed) for b in model.blocks]
    try:
        model.set_gating(False)
        model.set_fixed(None)
        with evaluation_mode(model), torch.no_grad():
            model(example[:1])
        return float(executed_flops(model)[0])
    finally:
        for block, (gating, fixed) in zip(model.blocks, flags):
            block.gating, block.fixed = gating, fixed


def annealed_target(step: int, steps: int, target: float) -> float:
    """The FLOPs budget at `step` (1-based): 1 → target linearly over `steps`, then target."""
    return 1.0 - (1.0 - target) * min(1.0, step / steps) if steps > 0 else target


def train_gated(model: GatedCNN, dataset, config: TrainConfig, *, target: float | None = None,
                weight: float = 1.0, gate_lr: float | None = None, anneal_steps: int = 0,
                train_gates: bool = True) -> dict:
    """Train for config.steps batches; with `target` (a fraction of the dense FLOPs) the loss
    adds weight · max(0, mean executed FLOPs / dense − budget), the budget annealed from 1
    to `target` over the first `anneal_steps` steps (gates close gradually while the weights
    adapt, instead of all at once). `gate_lr`: the gates' own learning rate (they must travel
    further than fine-tuned weights). `train_gates=False` holds the gates fixed and tunes
    the weights to the hard gating they decide (the last phase of the recipe). Returns the
    last step's numbers."""
    if target is not None and not 0 < target <= 1:
        raise PrunekitError(f"target must be a fraction of the dense FLOPs in (0, 1], not {target!r}.")
    dense = dense_flops(model, dataset.tensors[0])
    gate_params = [p for block in model.blocks for p in block.gate.parameters()]
    gate_ids = {id(p) for p in gate_params}
    frozen = [] if train_gates else [p for p in gate_params if p.requires_grad]
    out = {}
    try:
        for p in frozen:
            p.requires_grad_(False)
        optimizer = make_optimizer(model, config)
        if gate_lr is not None and train_gates:  # move the gate parameters into a group of their own
            optimizer.param_groups[0]["params"] = [p for p in optimizer.param_groups[0]["params"]
                                                   if id(p) not in gate_ids]
            optimizer.add_param_group({"params": gate_params, "lr": gate_lr})
        stream = batches(dataset, config.batch_size, torch.Generator().manual_seed(config.seed))
        with training_mode(model):
            for step in range(1, config.steps + 1):
                x, y = next(stream)
                logits = model(x)
                loss = F.cross_entropy(logits, y)
                fraction = executed_flops(model).mean() / dense
                if target is not None:
                    loss = loss + weight * F.relu(fraction - annealed_target(step, anneal_steps, target))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                out = {"loss": loss.item(), "flops_fraction": fraction.item()}
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return out


def evaluate_gated(model: GatedCNN, dataset, *, batch_size: int = 1000) -> dict:
    """Test accuracy and the executed FLOPs per example: mean, min, max, and the dense count."""
    x, y = dataset.tensors
    correct, flops = 0, []
    with evaluation_mode(model), torch.no_grad():
        for start in range(0, len(x), batch_size):
            logits = model(x[start:start + batch_size])
            correct += int((logits.argmax(-1) == y[start:start + batch_size]).sum())
            flops.append(executed_flops(model))
    flops = torch.cat(flops)
    dense = dense_flops(model, x)
    return {"accuracy": correct / len(x), "flops": flops.mean().item(), "flops_min": flops.min().item(),
            "flops_max": flops.max().item(), "dense_flops": dense, "flops_fraction": flops.mean().item() / dense}


def static_channel_masks(model: GatedCNN, keep: float) -> list[torch.Tensor]:
    """Per block, the round(keep · C) channels with the largest |BN γ| (network slimming's
    criterion); at least one channel per block."""
    if not 0 < keep <= 1:
        raise PrunekitError(f"keep must be a fraction in (0, 1], not {keep!r}.")
    masks = []
    for block in model.blocks:
        gamma = block.bn.weight.detach().abs()
        count = max(1, round(keep * len(gamma)))
        mask = torch.zeros(len(gamma), dtype=torch.bool)
        mask[torch.argsort(gamma, descending=True)[:count]] = True
        masks.append(mask)
    return masks


def static_masks_for_flops(model: GatedCNN, flops: float, example: torch.Tensor) -> tuple[list, float]:
    """(masks, their FLOPs): the largest uniform keep fraction (in steps of 1/256) whose static
    network executes at most `flops` per example (the smallest network when none does)."""
    best = None
    for step in range(1, 257):
        masks = static_channel_masks(model, step / 256)
        cost = _fixed_flops(model, masks, example)
        if best is None or cost <= flops:
            best = (masks, cost)
        if cost > flops:
            break
    return best


def _fixed_flops(model: GatedCNN, masks, example) -> float:
    before = [b.fixed for b in model.blocks]
    try:
        model.set_fixed(masks)
        with evaluation_mode(model), torch.no_grad():
            model(example[:1])
        return float(executed_flops(model)[0])
    finally:
        for block, fixed in zip(model.blocks, before):
            block.fixed = fixed



def skipping_forward(model: GatedCNN, x: torch.Tensor) -> torch.Tensor:
    """Logits of one input (batch of 1) computing only what its gates open: each block's conv
    runs with the open output channels and the previous block's open channels as inputs
    (sliced weights), so a closed channel costs nothing. Equal to model(x) in eval mode; this
    is what makes gating pay in latency (the masked forward computes every channel)."""
    if x.dim() != 4 or len(x) != 1:
        raise PrunekitError(f"skipping_forward takes one input of shape (1, C, H, W), not {tuple(x.shape)}; "
                            "gates differ per input, so run the inputs one at a time.")
    active = torch.arange(x.shape[1])  # the channels x holds: the previous block's open ones
    with evaluation_mode(model), torch.no_grad():
        for block in model.blocks:
            open_ = _open_channels(block, x, active)
            if len(active) and len(open_):
                y = F.conv2d(x, block.conv.weight[open_][:, active], padding=block.conv.padding)
            else:  # nothing reaches this block (its conv output is zero) or nothing leaves it
                y = x.new_zeros(1, len(open_), *x.shape[2:])
            bn = block.bn
            scale = bn.weight[open_] / torch.sqrt(bn.running_var[open_] + bn.eps)
            y = F.relu(y * scale[:, None, None] + (bn.bias[open_] - bn.running_mean[open_] * scale)[:, None, None])
            # pooling a 0-channel tensor is refused: pool one zero channel for the shape instead
            x = block.pool(y) if len(open_) else block.pool(y.new_zeros(1, 1, *y.shape[2:]))[:, :0]
            active = open_
        return F.linear(x.mean((2, 3)), model.fc.weight[:, active], model.fc.bias)


def _open_channels(block: GatedBlock, x: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """Indices of the channels `block` computes for x (which holds only the `active` inputs:
    the others are zero, so the gate reads just their columns)."""
    if block.fixed is not None:
        return torch.nonzero(block.fixed).flatten()
    if not block.gating:
        return torch.arange(block.conv.out_channels)
    logits = F.linear(x.mean((2, 3)), block.gate.weight[:, active], block.gate.bias)
    return torch.nonzero(logits[0] > 0).flatten()
