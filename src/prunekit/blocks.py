"""Whole residual blocks as pruning units: y = x + f(x) becomes y = x.

    blocks = find_residual_blocks(model, x)          # [ResidualBlock(name="stages.0.body", ...), ...]
    prune_blocks(model, 0.5, x, batches=[x1, x2])    # masks every parameter of half the branches
    small = remove_blocks(model, x)                  # deep copy without them; same outputs

**Candidates.** A submodule F is a candidate when one forward pass shows that its output is
added to F's *own input*, unchanged — the identity shortcut — and to nothing else:
`x + F(x)` (MobileNetV2), `F(x) + shortcut(x)` with `shortcut = nn.Identity()` (ResNet). A
projection shortcut (1×1 conv) gives a different tensor, so such a block is not a candidate.
A second pass replaces every candidate's output by zeros (forward hooks) and checks that each
of those adds then returns exactly its input x. Because f must be one module, a branch written
inline in a forward (conv1 … bn3 called one by one) is not found.

**Why masking removes f exactly.** The last operation of F must be one of the layers in
`_ZEROABLE` (conv, linear, affine BatchNorm / GroupNorm / InstanceNorm / LayerNorm) whose
weight and bias belong to F. Every parameter of F is masked to 0, so that layer computes
W ∗ z + b = 0 ∗ z + 0 = 0 (conv / linear, z finite) or ẑ · γ + β = ẑ · 0 + 0 = 0 (norms, ẑ finite
because var + ε > 0), in eval and train mode alike: F(x) = 0 exactly and x + F(x) = x.
Running statistics are buffers: left as they are (they only ever multiply γ = 0).

A branch may also follow a module P that only it reads — y = x + F(P(x)), a pre-norm
transformer block — then P is removed with F (masked too; replaced by nn.Identity). Before
the masks go on, a masked copy confirms every chosen branch outputs exact zeros (eval and
train mode), so a NaN made inside a branch is refused instead of silently kept.

**Score of a block** (higher = keep): over calibration batches b,

    s_F = sqrt(Σ_b ‖F(x_b)‖²) / sqrt(Σ_b ‖x_b‖²)

the size of the branch's contribution relative to the signal the shortcut carries (eval mode).
A removed block scores 0. `prune_blocks` removes the `amount` (fraction or count of all
candidates, already removed ones included) with the lowest scores; ties go to the earlier block.

**Compaction.** `remove_blocks` deep-copies the model with masks baked in, then for each removed
block replaces the parent module by `nn.Identity()` where the parent computes exactly
x + F(x) and owns no other parameters, else F by `ZeroBranch()` (returns zeros shaped like x),
so whatever follows the add (BasicBlock's ReLU) still runs on x + 0 = x.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .compaction import call_model, plain_copy, relative_error
from .criteria.calibration import batch_list
from .errors import GraphError, PrunekitError
from .masks import MaskSet, apply_masks, canonical_name, get_masks
from .modes import evaluation_mode, training_mode
from .nested import tensors_in

# Layers whose output is exactly 0 once weight and bias are 0 (the library's own forward only).
_ZEROABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
             nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LayerNorm)
_ADDS = {"add", "__add__", "__radd__", "__iadd__", "add_"}
_METADATA = {"__get__", "size", "dim", "numel", "__len__", "is_contiguous", "stride", "element_size",
             "is_floating_point", "is_complex", "data_ptr", "__format__", "__repr__"}


@dataclass
class ResidualBlock:
    """One identity-shortcut residual branch F (module `name`) inside module `parent`."""

    name: str
    parent: str
    whole: bool  # parent(x) == x + F(x) and parent owns no parameter outside F: parent → Identity
    params: list[str] = field(default_factory=list)  # canonical names of F's (and pre's) parameters
    pre: str = ""  # a module P between the shortcut and F: y = x + F(P(x)) (a pre-norm), removed with F
    prunable: bool = True
    reason: str = ""


class ZeroBranch(nn.Module):
    """Stands in for a removed residual branch: returns zeros shaped like its input."""

    def forward(self, x, *args, **kwargs):
        return torch.zeros_like(x)


class _Recorder(TorchFunctionMode):
    """Records every add (operands, result) and how many operations read each tensor."""

    def __init__(self, compare: bool = False):
        super().__init__()
        self.compare = compare  # also note, at the time of each add, which operands equal its result
        # (operands, result, operand versions, result version, result == operand i, reads of operand i)
        self.adds: list[tuple] = []
        self.uses: dict[int, int] = {}
        self.readers: dict[int, list[str]] = {}  # innermost running module of every read
        self.stack: list[str] = []  # names of the modules running now, set by the hooks
        self.keep: list = []  # keeps recorded tensors alive so their ids stay unique

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name not in _METADATA:
            for t in tensors_in((args, kwargs)):
                self.uses[id(t)] = self.uses.get(id(t), 0) + 1
                self.readers.setdefault(id(t), []).append(self.stack[-1] if self.stack else "")
                self.keep.append(t)
        operands = [a for a in args[:2] if isinstance(a, torch.Tensor)] if name in _ADDS else []
        # versions, read before the add (x += f(x) bumps them): an in-place op before the add (on x)
        # or after it (on the sum) changes values without changing which tensor object it is
        versions = [o._version for o in operands]
        out = func(*args, **kwargs)
        if name in _ADDS and isinstance(out, torch.Tensor):
            same = [torch.equal(out, o) for o in operands] if self.compare else []
            used = [self.uses.get(id(o), 0) for o in operands]  # reads so far, this add included
            self.adds.append((operands, out, versions, out._version, same, used))
            self.keep.append(out)
        return out


def _module_calls(model, example_inputs, replace=()):
    """{module name: [(input tensor, output tensor)]} of one eval/no_grad pass, plus the recorder.
    Modules named in `replace` return zeros instead of their output."""
    calls: dict[str, list] = {}
    entry_versions: dict[str, list] = {}
    handles = []

    def pre_hook_for(name):
        def pre_hook(module, args):
            x = args[0] if args and isinstance(args[0], torch.Tensor) else None
            entry_versions.setdefault(name, []).append(x._version if x is not None else None)
            recorder.stack.append(name)
        return pre_hook

    def hook_for(name):
        def hook(module, args, output):
            x = args[0] if args and isinstance(args[0], torch.Tensor) else None
            if name in replace and isinstance(output, torch.Tensor):
                output = torch.zeros_like(output)
            y = output if isinstance(output, torch.Tensor) else None
            version_in = entry_versions[name].pop()
            recorder.stack.pop()
            # (input, output, input version on entry, input version on exit, output version on exit)
            calls.setdefault(name, []).append((x, y, version_in, x._version if x is not None else None,
                                               y._version if y is not None else None))
            return output
        return hook

    recorder = _Recorder(compare=bool(replace))
    try:
        for name, module in model.named_modules():
            if name:  # the root's input is the model input: never a residual branch
                handles.append(module.register_forward_pre_hook(pre_hook_for(name)))
                handles.append(module.register_forward_hook(hook_for(name)))
        with torch.no_grad(), evaluation_mode(model), recorder:
            call_model(model, example_inputs)
    finally:
        for h in handles:
            h.remove()
    return calls, recorder


def _owned_parameters(model):
    """{id(param): set of module names that hold it} (tied weights are held several times)."""
    held: dict[int, set] = {}
    for mname, module in model.named_modules():
        for raw, p in module.named_parameters(recurse=False):
            held.setdefault(id(p), set()).add(mname)
        if hasattr(module, "parametrizations"):  # masked tensors live one level deeper
            for t in module.parametrizations:
                held.setdefault(id(module.parametrizations[t].original), set()).add(mname)
    return held


def _inside(name: str, root: str) -> bool:
    return root == "" or name == root or name.startswith(root + ".")


def _last_layer(calls, name, out, version):
    """The innermost descendant of F (or F itself) that returned F's output object, not changed
    in place after it returned: the layer that actually computed F(x)."""
    found = [m for m, c in calls.items() if _inside(m, name) and any(o is out and v == version
                                                                     for _, o, _, _, v in c)]
    return max(found, key=len) if found else None


def find_residual_blocks(model: nn.Module, example_inputs) -> list[ResidualBlock]:
    """Every submodule whose output is added unchanged to its own input (see module docstring).

    Pure: eval mode and no_grad during the passes, hooks removed, nothing changed. Candidates
    that masks cannot silence have prunable=False and a reason.
    """
    calls, rec = _module_calls(model, example_inputs)
    held = _owned_parameters(model)
    modules = dict(model.named_modules())
    found = []
    for name, c in calls.items():
        if len(c) != 1 or c[0][0] is None or c[0][1] is None:
            continue
        z, y, z_in, z_out, y_out = c[0]
        if y is z or z_in != z_out:  # nn.Identity (the shortcut itself), or F changed its input in place
            continue
        add = next((a for a in rec.adds if len(a[0]) == 2 and any(o is y for o in a[0])), None)
        if add is None:
            continue
        x = next(o for o in add[0] if o is not y)
        pre, x_in = "", z_in
        if x is not z:  # y = x + F(P(x)): P's output z read only inside F, unchanged until F ran
            pre = next((m for m, pc in calls.items() if len(pc) == 1 and pc[0][0] is x and pc[0][1] is z
                        and pc[0][4] == z_in and not _inside(m, name) and not _inside(name, m)), "")
            if not pre or not all(_inside(r, name) for r in rec.readers.get(id(z), [])):
                continue
            x_in = calls[pre][0][2]
        # f(x) read by the add only: later reads of the same object are reads of the sum if y += x
        reads = add[5][[o is y for o in add[0]].index(True)] if add[1] is y else rec.uses.get(id(y), 0)
        if (not (x.shape == y.shape == add[1].shape) or reads != 1
                or add[2] != [x_in if o is x else y_out for o in add[0]]):
            continue  # a broadcast, f(x) also used elsewhere, or x / f(x) changed in place before the add
        parent = name.rpartition(".")[0]
        pc = calls.get(parent, [])
        p_params = {id(p) for p in modules[parent].parameters()} if parent else set()
        f_params = {id(p) for p in modules[name].parameters()}
        # the parent is x ↦ x + F(x) itself: its output is the sum, untouched since the add
        whole = (not pre and len(pc) == 1 and pc[0][0] is x and pc[0][1] is add[1] and pc[0][4] == add[3]
                 and pc[0][2] == x_in and p_params == f_params and add[1] is not x)
        owners = [name] + ([pre] if pre else [])
        params = sorted({canonical_name(f"{o}.{raw}") for o in owners for raw, _ in modules[o].named_parameters()})
        block = ResidualBlock(name, parent, whole, params, pre=pre)
        last = _last_layer(calls, name, y, y_out)
        layer = modules.get(last) if last is not None else None
        shared = [n for o in owners for p in modules[o].parameters() for n in held.get(id(p), ())
                  if not any(_inside(n, own) for own in owners)]
        if not params:
            block.prunable, block.reason = False, "it has no parameters to mask"
        elif layer is None or not isinstance(layer, _ZEROABLE) or type(layer).forward not in {
                base.forward for base in _ZEROABLE}:
            kind = type(layer).__name__ if layer is not None else "an operation outside any module"
            block.prunable, block.reason = False, (f"its output comes from {kind}, which masked weights do not "
                                                   "make exactly zero (it must end in a conv, linear or affine norm)")
        elif getattr(layer, "weight", None) is None:
            block.prunable, block.reason = False, f"'{last}' has no affine weight to mask"
        elif shared:
            block.prunable, block.reason = False, f"its parameters are also used by '{sorted(shared)[0]}'"
        found.append((id(y), block))
    # nested modules returning the same tensor (body and its last BN, x + bn(conv(x))) describe one
    # branch: keep the outermost
    outer: dict[int, ResidualBlock] = {}
    for key, block in found:
        if key not in outer or len(block.name) < len(outer[key].name):
            outer[key] = block
    found = [b for _, b in found if outer[_] is b]
    _verify_zero_branches(model, example_inputs, [b for b in found if b.prunable])
    return found


def _verify_zero_branches(model, example_inputs, blocks):
    """With every candidate's output replaced by zeros, each identity add must return its input."""
    if not blocks:
        return
    calls, rec = _module_calls(model, example_inputs, replace={b.name for b in blocks})
    for b in blocks:
        zero = calls[b.name][0][1]
        x = calls[b.pre][0][0] if b.pre else calls[b.name][0][0]
        add = next((a for a in rec.adds if any(o is zero for o in a[0])), None)
        if add is None or not any(o is x and equal for o, equal in zip(add[0], add[4])):
            b.prunable, b.reason = False, "with its output replaced by zeros the add did not return its input"


def is_removed(block: ResidualBlock, masks: MaskSet) -> bool:
    """True when every parameter of the branch is masked out."""
    return bool(block.params) and all(n in masks and not masks[n].any() for n in block.params)


def block_scores(model: nn.Module, blocks, inputs) -> dict[str, float]:
    """{block name: sqrt(Σ_b ‖F(x_b)‖²) / sqrt(Σ_b ‖x_b‖²)} over a list of model inputs (each in
    the form of example_inputs), eval mode, pure."""
    sums = {b.name: [0.0, 0.0] for b in blocks}
    handles = []

    def hook_for(name):
        def hook(module, args, output):
            sums[name][0] += float(output.detach().double().pow(2).sum())
            sums[name][1] += float(args[0].detach().double().pow(2).sum())
        return hook

    try:
        for b in blocks:
            handles.append(model.get_submodule(b.name).register_forward_hook(hook_for(b.name)))
        with torch.no_grad(), evaluation_mode(model):
            for batch in inputs:
                call_model(model, batch)
    finally:
        for h in handles:
            h.remove()
    return {n: math.sqrt(f) / math.sqrt(x) if x > 0 else 0.0 for n, (f, x) in sums.items()}


def check_silenced(model, masks, blocks, example_inputs):
    """On a masked copy, every given branch must output exact zeros, in eval and train mode.
    (True by construction for the layers in _ZEROABLE unless the branch makes a NaN / inf on the
    way, e.g. by dividing by a norm that is now 0.) The model itself is not touched."""
    trial = copy.deepcopy(model)
    apply_masks(trial, masks)
    bad = set()
    hooks = [trial.get_submodule(b.name).register_forward_hook(
        lambda m, a, out, n=b.name: bad.add(n) if not bool((out == 0).all()) else None) for b in blocks]
    try:
        with torch.no_grad():
            for mode in (evaluation_mode, training_mode):
                with mode(trial):
                    call_model(trial, example_inputs)
    finally:
        for h in hooks:
            h.remove()
    if bad:
        raise GraphError(f"With all its parameters masked, branch '{sorted(bad)[0]}' still does not output zeros "
                         "(a NaN or inf inside it?); it cannot be removed exactly. Nothing was changed.")


def calibration_inputs(batches, example_inputs) -> list:
    """Model inputs for block scores: the criteria's calibration convention ((x, y) pairs or bare
    inputs, a DataLoader works), or example_inputs alone when batches is None."""
    if batches is None:
        return [example_inputs]
    batches = list(batches) if not isinstance(batches, tuple) else [batches]
    if not batches:
        raise PrunekitError("batches is empty; pass at least one (x, y) (or leave it None to use example_inputs).")
    return [b[0] for b in batch_list(batches, "block scores", targets=False)]


def removed_blocks(model: nn.Module, blocks) -> list[ResidualBlock]:
    """The blocks whose every parameter is masked, outermost only (one inside another goes with it)."""
    masks = get_masks(model)
    gone = [b for b in blocks if b.prunable and is_removed(b, masks)]
    return [b for b in gone if not any(o is not b and b.name.startswith(o.name + ".") for o in gone)]


def predicted_params(model: nn.Module, example_inputs, *, blocks=None) -> int:
    """Parameters remove_blocks() will leave: every parameter minus those of removed branches
    (and, where the parent is replaced, of the parent — by construction the same set)."""
    blocks = blocks if blocks is not None else find_residual_blocks(model, example_inputs)
    gone_ids = set()
    for b in removed_blocks(model, blocks):
        for owner in [b.name] + ([b.pre] if b.pre else []):
            gone_ids |= {id(p) for p in model.get_submodule(owner).parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in gone_ids)


def remove_blocks(model: nn.Module, example_inputs, *, blocks=None, keep_masks: bool = False, check: bool = True,
                  rtol: float = 1e-5) -> nn.Module:
    """A deep copy without the removed residual branches. `model` is unchanged.

    Masks are baked into plain parameters, unless keep_masks=True: then the copy keeps the
    other masks, so prunekit.compaction.compact(copy, x) can remove pruned channels next.
    With check=True both models run on example_inputs (eval mode); a relative output error
    above rtol raises GraphError instead of returning a wrong model.
    """
    blocks = blocks if blocks is not None else find_residual_blocks(model, example_inputs)
    small = copy.deepcopy(model) if keep_masks else plain_copy(model)
    for b in removed_blocks(model, blocks):
        target = b.parent if b.whole else b.name
        owner_name, _, attr = target.rpartition(".")
        owner = small.get_submodule(owner_name) if owner_name else small
        setattr(owner, attr, nn.Identity() if b.whole else ZeroBranch())
        if b.pre:  # its output only fed F, which now ignores the values (zeros shaped like x)
            owner_name, _, attr = b.pre.rpartition(".")
            setattr(small.get_submodule(owner_name) if owner_name else small, attr, nn.Identity())
    if check:
        with torch.no_grad(), evaluation_mode(model), evaluation_mode(small):
            error = relative_error(call_model(model, example_inputs), call_model(small, example_inputs))
        if not error <= rtol:
            raise GraphError(f"The model without its removed blocks differs from the masked one (relative error "
                             f"{error:.2e} > {rtol:g}); nothing was returned.")
    return small


__all__ = ["ResidualBlock", "ZeroBranch", "block_scores", "find_residual_blocks", "predicted_params",
           "calibration_inputs", "check_silenced", "is_removed", "remove_blocks", "removed_blocks"]
