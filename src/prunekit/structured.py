"""Scores and masks of dependency-graph groups (channels, heads); prunekit.Pruner uses them.

Score of a unit u of a group (how="l2"): s_u = ‖(e_i)_{i ∈ u}‖₂ over the element scores e of
every ≥2-D parameter slice the unit owns (its filter, the consumer columns …); "l1" uses
Σ|e_i|, "lp" (Σ|e_i|^p)^{1/p}, and "mean"/"sum"/"max" the obvious aggregates.
A per-channel criterion (Criterion.unit_dim = d: one value per channel broadcast along dim d,
e.g. bn_scale and apoz d = 0, regression d = 1) is read only from the slices whose unit axis is
d — the producer's rows and the norm's own entries for d = 0, the consumers' input columns for
d = 1 — because along the other axis the same tensor carries the values of other units.
Masks are installed on *every* coupled parameter — filter rows, biases, norm scales and
shifts, consumer input columns — so a removed channel is exactly zero everywhere and
compact() can delete it without changing any output. Running statistics are buffers: they
are not masked (γ = β = 0 already silences the channel) and compact() drops them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from .axis_mask import AxisMask
from .criteria import get_criterion
from .errors import PrunekitError, did_you_mean
from .granularity import AGGREGATIONS, NORM_AGGREGATIONS
from .graph import DependencyGraph
from .masks import MaskSet, get_masks, named_parameters, resolve_parameters


def unit_values(tensor: torch.Tensor, dim: int, index: torch.Tensor) -> torch.Tensor:
    """[units, n]: every entry of `tensor` each unit owns along `dim` (index: [units, k])."""
    moved = tensor.movedim(dim, 0)
    return moved[index.to(moved.device)].reshape(index.shape[0], -1)


def group_scores(model: nn.Module, graph: DependencyGraph, element_scores: Mapping[str, torch.Tensor],
                 how: str = "l2", p: float = 2.0, groups=None, unit_dim: int | None = None) -> dict[str, torch.Tensor]:
    """{group name: Tensor[group.size]} from element-wise scores (any criterion's output).

    `unit_dim` (a per-channel criterion's Criterion.unit_dim): read only the slices along that
    dimension — a unit's own rows, where the criterion broadcast its value — not the consumer
    columns, whose scores belong to the next layer's channels.
    Units that are already fully masked score −inf, so pruning again never revives them.
    """
    if how not in AGGREGATIONS:
        raise PrunekitError(f"Unknown aggregation '{how}'.{did_you_mean(how, AGGREGATIONS)} "
                            f"Known: {', '.join(AGGREGATIONS)}.")
    masks, alive = get_masks(model), {}
    out = {}
    for group in (groups if groups is not None else graph.prunable()):
        scored = [s for s in group.slices if s.kind == "param" and s.name in element_scores]
        own = [s for s in scored if unit_dim is None or s.dim == unit_dim]
        if scored and not own:
            # the other slices hold values broadcast for *other* units (a consumer's own channels)
            raise PrunekitError(f"Group '{group.name}' has no tensor slice along dimension {unit_dim}, where a "
                                f"per-channel criterion puts its values ({[(s.name, s.dim) for s in scored]}). "
                                "Use an element-wise criterion, or leave this group out of `amount`.")
        if not own:
            raise PrunekitError(f"No element scores for any tensor of group '{group.name}' "
                                f"({[s.name for s in group.slices if s.kind == 'param']}).")
        # every entry each unit owns, across all its slices, aggregated as any granularity's units are
        score = _aggregate_slices(element_scores, own, group.size, how, p).float()
        dead = dead_units(group, masks, alive)
        score[dead] = -math.inf
        out[group.name] = score
    return out


def _aggregate_slices(element_scores, slices, n_units: int, how: str, p: float) -> torch.Tensor:
    """granularity.aggregate over every entry each unit owns in `slices`, computed without
    gathering those entries: each slice is first reduced to one partial value per position
    along its dim (Σ|e|^p, Σe, count or max over the other dims), then the positions of a
    unit are combined — the same sums, grouped differently."""
    power = {"l1": 1.0, "l2": 2.0, "lp": p}.get(how)
    total = torch.full((n_units,), -math.inf if how == "max" else 0.0, dtype=torch.float64)
    count = 0
    for s in slices:
        e = element_scores[s.name].detach()
        others = [d for d in range(e.dim()) if d != s.dim]
        n_each = math.prod(e.shape[d] for d in others)
        if how == "max":
            per_position = (e.amax(others) if others else e).double().cpu()
            total = torch.maximum(total, per_position[s.index].amax(1))
            continue
        if power is None:
            per_position = (e.sum(others) if others else e).double()
        else:
            per_position = _powered_sums(e, s.dim, power).double()
        total += per_position.cpu()[s.index].sum(1)
        count += s.index.shape[1] * n_each
    if how == "mean":
        return total / max(count, 1)
    return total ** (1.0 / power) if power is not None else total


def _powered_sums(e: torch.Tensor, dim: int, power: float) -> torch.Tensor:
    """Σ |e|^p over every dim but `dim`, per position along `dim`.

    A reduction over trailing dims is one fast pass (‖·‖_p, raised back to the power); over
    leading dims torch reduces slowly (20× on a conv's input channels), so there the entries
    are summed as columns by one matrix product, then the trailing dims are added up."""
    if e.dim() == 1:
        return e.abs() ** power
    if dim == 0:
        return torch.linalg.vector_norm(e, power, list(range(1, e.dim()))) ** power
    powered = e.square() if power == 2 else e.abs() ** power
    columns = powered.reshape(math.prod(e.shape[:dim]), -1)
    return (columns.new_ones(1, len(columns)) @ columns).reshape(e.shape[dim], -1).sum(1)


def dead_units(group, masks, alive: dict | None = None) -> torch.Tensor:
    """Bool per unit of `group`: True where every parameter slice is masked out (removable by compact).
    `alive`: a dict shared between calls over the same masks, {(tensor, dim): any kept entry per position}."""
    alive = {} if alive is None else alive
    dead = torch.ones(group.size, dtype=torch.bool)
    params = [s for s in group.slices if s.kind == "param"]
    for s in params:
        if s.name not in masks:
            return torch.zeros(group.size, dtype=torch.bool)
        if (s.name, s.dim) not in alive:
            mask = masks.stored(s.name) if isinstance(masks, MaskSet) else masks[s.name]
            alive[s.name, s.dim] = (mask.any_along(s.dim) if isinstance(mask, AxisMask)
                                    else _any_along(mask, s.dim)).cpu()
        dead &= ~alive[s.name, s.dim][s.index].any(1)
    return dead if params else torch.zeros(group.size, dtype=torch.bool)


def _any_along(mask: torch.Tensor, dim: int) -> torch.Tensor:
    """Bool per position along `dim`: any entry kept there. Reduced as [before, n, after] with the
    contiguous inner block first (a bool `any` over scattered dims is several times slower)."""
    n = mask.shape[dim]
    rows = mask.reshape(math.prod(mask.shape[:dim]), n, -1).view(torch.uint8)
    return (rows.amax(2) if rows.shape[2] > 1 else rows[:, :, 0]).amax(0).bool()


def group_masks(graph: DependencyGraph, keep: Mapping[str, torch.Tensor]) -> MaskSet:
    """A MaskSet over every parameter the given groups touch: False where a unit is removed."""
    axes: dict[str, dict[int, torch.Tensor]] = {}  # parameter → {axis: keep vector}
    for name, kept in keep.items():
        group = graph[name]
        kept = torch.as_tensor(kept, dtype=torch.bool).cpu()
        if kept.shape != (group.size,):
            raise PrunekitError(f"Keep vector for '{name}' has shape {tuple(kept.shape)}; expected ({group.size},).")
        for s in group.slices:
            if s.kind != "param":
                continue
            per_axis = axes.setdefault(s.name, {})
            vector = per_axis.setdefault(s.dim, torch.ones(graph.shapes[s.name][s.dim], dtype=torch.bool))
            removed = s.index[~kept].reshape(-1)
            if len(removed):
                vector.index_fill_(0, removed, False)
    # Whole slices only, so each mask is the AND of its axes' vectors: stored per channel.
    return MaskSet.adopt({name: AxisMask(graph.shapes[name], per_axis) for name, per_axis in axes.items()})


def _scored_tensors(model: nn.Module, groups, unit_dim: int | None) -> list[str]:
    """Tensors to score: per group, its ≥2-D slices (only those along `unit_dim` for a
    per-channel criterion), or its 1-D ones (norm scales, biases) where it has no other."""
    available = named_parameters(model)
    names = set()
    for group in groups:
        own = [s.name for s in group.slices if s.kind == "param" and (unit_dim is None or s.dim == unit_dim)]
        names.update([n for n in own if available[n].dim() >= 2] or own)
    return sorted(names)


class _OneTensorAtATime(Mapping):
    """A local criterion's element scores, computed when a group reads them and dropped after:
    peak memory one tensor's scores, not a copy of every weight (645 M parameters: 2.6 GB)."""

    def __init__(self, score, model: nn.Module, params: Mapping[str, nn.Parameter]):
        self._score, self._model, self._params = score, model, params  # score: a criterion's (signed_)scores

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._score(self._model, {name: self._params[name]})[name]

    def __contains__(self, name) -> bool:
        return name in self._params

    def __iter__(self):
        return iter(self._params)

    def __len__(self) -> int:
        return len(self._params)


def score_groups(model: nn.Module, graph: DependencyGraph, groups, criterion="magnitude", how: str = "l2",
                 p: float = 2.0, *, batches=None, loss_fn=None) -> dict[str, torch.Tensor]:
    """{group name: Tensor[group.size]}: the criterion's scores of exactly the tensors each group
    needs (along the criterion's unit_dim for per-channel criteria), aggregated per unit."""
    crit = get_criterion(criterion)
    unit_dim = getattr(crit, "unit_dim", None)
    params = resolve_parameters(model, _scored_tensors(model, groups, unit_dim))
    signless = how in NORM_AGGREGATIONS  # Σ|s|^p: the scores' signs do not matter
    if crit.local:
        element = _OneTensorAtATime(crit.signed_scores if signless else crit.scores, model, params)
    else:
        score = crit.signed_scores if signless else crit.scores
        element = score(model, params, batches=batches, loss_fn=loss_fn)
    return group_scores(model, graph, element, how, p, groups, unit_dim)


__all__ = ["dead_units", "group_masks", "group_scores", "score_groups", "unit_values"]
