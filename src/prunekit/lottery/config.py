"""The settings of a lottery-ticket experiment; their hash names its run folder."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..augment import AUGMENTATIONS
from ..data import DATASETS
from ..errors import PrunekitError, did_you_mean
from ..models import MODELS, check_init
from ..training import TrainConfig

CONTROLS = ("reinit", "random")
SCOPES = ("global", "local")


@dataclass(frozen=True)
class LotteryConfig:
    """Iterative magnitude pruning with rewinding.

    rate         fraction of the *remaining* prunable weights removed per round (p)
    rounds       density after round r is ≈ (1 − p)^r
    scope        "global" (one ranking over all weight tensors) or "local" (p of each tensor)
    output_rate  with scope="local": the rate of the last weight tensor (the output layer);
                 Frankle & Carbin prune it at half the rate of the others (None: same rate)
    init         "default" (torch's layer defaults) or "glorot_normal" (Frankle & Carbin's
                 Gaussian Glorot weights, zero biases); see prunekit.models.INITS
    rewind_step  k: surviving weights are reset to their values at iteration k (0 = init)
    controls     "reinit" (same mask, fresh random init), "random" (random mask, same
                 per-tensor counts, rewound weights)
    validation   training samples held out (the last ones) for early stopping
    keep_steps   dense-trajectory iterations whose weights are checkpointed (landscape)
    """

    model: str = "mnist1d_mlp"
    dataset: str = "mnist1d"
    model_options: dict = field(default_factory=dict)
    init: str = "default"
    train: TrainConfig = TrainConfig(optimizer="adam", lr=1e-3, steps=1500, batch_size=100)
    rounds: int = 10
    rate: float = 0.2
    scope: str = "global"
    output_rate: float | None = None
    rewind_step: int = 0
    controls: tuple = CONTROLS
    validation: int = 500
    eval_every: int = 100
    augment: str | None = None
    augment_strength: float | None = None
    keep_steps: tuple = ()
    seed: int = 0

    def __post_init__(self):
        if self.model not in MODELS:
            raise PrunekitError(f"Unknown model '{self.model}'.{did_you_mean(self.model, MODELS)}")
        check_init(self.init)
        if self.dataset not in DATASETS:
            raise PrunekitError(f"Unknown dataset '{self.dataset}'.{did_you_mean(self.dataset, DATASETS)}")
        if not 0 < self.rate < 1:
            raise PrunekitError(f"rate (fraction pruned per round) must be in (0, 1), not {self.rate!r}.")
        if self.rounds < 0:
            raise PrunekitError(f"rounds must be ≥ 0, not {self.rounds!r}.")
        if self.scope not in SCOPES:
            raise PrunekitError(f"scope must be one of {SCOPES}, not {self.scope!r}.")
        if self.output_rate is not None:
            if self.scope != "local":
                raise PrunekitError("output_rate needs scope='local' (one rate per layer); a global ranking has "
                                    "no per-layer rate.")
            if not 0 <= self.output_rate < 1:
                raise PrunekitError(f"output_rate must be in [0, 1), not {self.output_rate!r}.")
        if not 0 <= self.rewind_step < self.train.steps:
            raise PrunekitError(f"rewind_step must be in [0, {self.train.steps}) (the dense run's steps), "
                                f"not {self.rewind_step!r}.")
        unknown = [c for c in self.controls if c not in CONTROLS]
        if unknown:
            raise PrunekitError(f"Unknown controls {unknown}; choose from {CONTROLS}.")
        if self.augment is not None and self.augment not in AUGMENTATIONS:
            raise PrunekitError(f"Unknown augmentation '{self.augment}'; choose from {tuple(AUGMENTATIONS)}.")
        if any(not 0 <= s <= self.train.steps for s in self.keep_steps):
            raise PrunekitError(f"keep_steps {self.keep_steps} must lie in [0, {self.train.steps}].")
        if self.validation < 1 or self.eval_every < 1:
            raise PrunekitError("validation (held-out samples) and eval_every must be ≥ 1.")
        object.__setattr__(self, "controls", tuple(self.controls))
        object.__setattr__(self, "keep_steps", tuple(sorted(set(int(s) for s in self.keep_steps))))

    def train_config(self) -> TrainConfig:
        """The dense run's hyper-parameters; the data order is seeded with the experiment seed."""
        return dataclasses.replace(self.train, seed=self.seed)

    def settings(self) -> dict:
        out = dataclasses.asdict(self)
        # settings written before these options existed keep their hash
        if out["output_rate"] is None:
            del out["output_rate"]
        if out["init"] == "default":
            del out["init"]
        out["kind"] = "lottery"
        return out

    def replace(self, **changes) -> LotteryConfig:
        return dataclasses.replace(self, **changes)
