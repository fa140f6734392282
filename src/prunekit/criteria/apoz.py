"""APoZ (Hu et al. 2016, Network Trimming): Average Percentage of Zeros of a channel's activations.

For channel c of a layer's post-activation output a (ReLU by default) over N calibration
examples and the spatial positions P of each,

    APoZ_c = (1 / (N·|P|)) Σ_n Σ_p [a_{n,c,p} = 0]

A channel that is almost always zero contributes little downstream, so the score is
1 − APoZ_c (higher = more important), broadcast over the channel's slice of every selected
parameter along dimension 0 (the layer's filters / rows / bias, a BatchNorm's γ and β).

Which output is counted: by default the output of the BatchNorm that follows the parameter's
layer, if any (see prunekit.criteria.channels), else the layer's own output, passed through
`activation` (torch.relu; None counts exact zeros of the tapped output, e.g. when you tap a
ReLU module). `taps={"param or layer name": "module name"}` overrides the choice.
Activations are read by forward hooks, removed afterwards; nothing is trained.
"""

from __future__ import annotations

import torch

from ..errors import PrunekitError
from ..modes import evaluation_mode
from ..nested import model_inputs
from .base import Criterion
from .calibration import batch_list, per_channel
from .channels import NORMS, channel_dim, norms_after, owner_name


class APoZ(Criterion):
    name = "apoz"
    needs_data = True
    unit_dim = 0

    def __init__(self, *, activation=torch.relu, taps: dict[str, str] | None = None,
                 max_batches: int | None = None):
        self.activation, self.taps, self.max_batches = activation, dict(taps or {}), max_batches

    def _tap(self, model, name, following):
        owner = owner_name(name)
        for key in (name, owner):
            if key in self.taps:
                return self.taps[key]
        module = model.get_submodule(owner) if owner else model
        return owner if isinstance(module, NORMS) else following.get(owner, owner)

    def zero_fractions(self, model, tap_names, batches) -> dict[str, torch.Tensor]:
        """{module name: APoZ per output channel} over the batches."""
        zeros: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}
        handles = []

        def hook_for(tap):
            def hook(module, args, output):
                if not isinstance(output, torch.Tensor):
                    raise PrunekitError(f"APoZ taps the output of '{tap}', which is not a tensor; "
                                        "pass taps= naming a module that returns one.")
                act = self.activation(output) if self.activation is not None else output
                dim = channel_dim(module, act)
                moved = act.movedim(dim, 0).reshape(act.shape[dim], -1)
                z = (moved == 0).sum(1).to(torch.float64)
                zeros[tap] = zeros[tap] + z if tap in zeros else z
                counts[tap] = counts.get(tap, 0) + moved.shape[1]
            return hook

        try:
            for tap in sorted(set(tap_names)):
                try:
                    module = model.get_submodule(tap) if tap else model
                except AttributeError:
                    raise PrunekitError(f"APoZ tap '{tap}' is not a module of the model.") from None
                handles.append(module.register_forward_hook(hook_for(tap)))
            with evaluation_mode(model), torch.no_grad():
                for batch in batches:
                    model_inputs(batch[0])(model)
        finally:
            for h in handles:
                h.remove()
        missing = [t for t in set(tap_names) if t not in zeros]
        if missing:
            raise PrunekitError(f"The forward pass never called {sorted(missing)}; APoZ needs modules the model uses "
                                "(functional activations are fine: the layer's output is tapped).")
        return {t: zeros[t] / counts[t] for t in zeros}

    def scores(self, model, params, *, batches=None, loss_fn=None):
        batches = batch_list(batches, self.name, self.max_batches, targets=False)
        following = norms_after(model, batches[0][0])
        taps = {n: self._tap(model, n, following) for n in params}
        apoz = self.zero_fractions(model, list(taps.values()), batches)
        return {n: per_channel(1.0 - apoz[taps[n]], p.detach(), 0, n) for n, p in params.items()}

    def __repr__(self):
        return f"APoZ(activation={getattr(self.activation, '__name__', self.activation)}, taps={self.taps})"
