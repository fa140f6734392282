"""Iterative magnitude pruning (IMP) with rewinding, and its controls.

Round 0 trains the dense network from its initialisation w₀ for T steps, saving w_k (the
rewind point) and any `keep_steps` on the way. Round r = 1 … R:

  1. mask m_r: the p fraction of the *surviving* weights with the smallest |w| in the
     round r−1 ticket after training is removed (globally or per tensor); m_r ⊆ m_{r−1};
  2. ticket:  w ← w_k ⊙ m_r, trained for steps k+1 … T with the dense run's
     hyper-parameters and batches;
  3. controls, trained the same way: "reinit" — m_r with a fresh random initialisation;
     "random" — a uniformly random mask with m_r's per-tensor counts on w_k.

Each variant's row holds density, test accuracy and loss at T, and the early-stopping
iteration (minimum validation loss) with the test accuracy there. Every round is
checkpointed and marked done in the run folder (prunekit.runs.RunDir), so a killed run
rerun with the same settings resumes after its last finished round and ends identical.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm
from torch import nn
from torch.utils.data import TensorDataset

from ..data import load_dataset
from ..errors import PrunekitError
from ..masks import (MaskSet, apply_masks, default_prunable, get_masks, load_masked_state_dict,
                     named_parameters)
from ..models import build_model, initialise
from ..runs import RunDir
from ..selection import global_masks, local_masks, rank_existing_first
from ..training import evaluate, resolve_device
from ..augment import make_augmentation
from .config import LotteryConfig
from .summary import write_summary
from .trainer import train_segment

VARIANTS = ("ticket", "reinit", "random")
ROW_COLUMNS = ["round", "variant", "density", "accuracy", "test_loss", "es_step", "es_accuracy", "train_loss"]


def split_validation(train: TensorDataset, size: int) -> tuple[TensorDataset, TensorDataset]:
    """(fit, validation): the last `size` training samples are held out."""
    x, y = train.tensors
    if size >= len(x):
        raise ValueError(f"validation size {size} leaves no training data (have {len(x)}).")
    return TensorDataset(x[:-size], y[:-size]), TensorDataset(x[-size:], y[-size:])


def build(config: LotteryConfig, num_classes: int, init_seed: int) -> nn.Module:
    """A freshly initialised model; the caller's global RNG state is left as it was."""
    with torch.random.fork_rng():
        torch.manual_seed(init_seed)
        return initialise(build_model(config.model, num_classes=num_classes, **config.model_options), config.init)


def magnitude_masks(weights: dict[str, torch.Tensor], current: MaskSet, rate: float, scope: str,
                    rates: dict[str, float] | None = None) -> dict:
    """Remove round(rate · survivors) more weights of smallest |w| (per tensor if scope="local";
    `rates` overrides the rate of single tensors there, e.g. the output layer at half the rate)."""
    scores = rank_existing_first({n: w.detach().abs() for n, w in weights.items()}, current)
    if scope == "global":
        kept = sum(int(current[n].sum()) for n in weights)
        pruned_before = sum(current[n].numel() for n in weights) - kept
        return global_masks(scores, pruned_before + round(rate * kept))
    rates = rates or {}
    return {n: local_masks({n: s}, (s.numel() - int(current[n].sum()))
                           + round(rates.get(n, rate) * int(current[n].sum())))[n]
            for n, s in scores.items()}


def random_masks(reference: MaskSet, generator: torch.Generator) -> dict:
    """Uniformly random masks with the same number of kept entries per tensor as `reference`."""
    out = {}
    for name, mask in reference.items():
        keep = torch.zeros(mask.numel(), dtype=torch.bool)
        keep[torch.randperm(mask.numel(), generator=generator)[:int(mask.sum())]] = True
        out[name] = keep.reshape(mask.shape)
    return out


def rewind(model: nn.Module, state: dict, masks) -> nn.Module:
    """Load `state` (an unmasked state_dict, e.g. w_k) into a fresh model and install `masks`:
    the forward pass then uses exactly state ⊙ mask."""
    model.load_state_dict(state)
    apply_masks(model, masks)
    return model


def _density(masks: MaskSet) -> float:
    return masks.kept() / masks.numel()


class Experiment:
    """One IMP experiment in its run folder; `run()` does (or resumes) every round."""

    def __init__(self, config: LotteryConfig, root: str | Path = "runs", *, log=print, device=None):
        self.config = config
        self.log = log
        self.device = resolve_device(device)  # where the networks train; not a setting of the run
        data = load_dataset(config.dataset).to(self.device)
        self.num_classes = data.num_classes
        if config.validation >= len(data.train):
            raise PrunekitError(f"validation={config.validation} leaves no training data ({config.dataset} has "
                                f"{len(data.train)} training samples); hold out fewer.")
        self.fit, self.validation = split_validation(data.train, config.validation)
        self.test = data.test
        self.train_config = config.train_config()
        self.augment = make_augmentation(config.augment, config.augment_strength)
        model = self.fresh(config.seed)
        try:  # fail before any folder is created when model and data do not fit together
            with torch.no_grad():
                model(data.example_input(2))
        except RuntimeError as e:
            raise PrunekitError(f"Model '{config.model}' does not accept {config.dataset} inputs of shape "
                                f"{tuple(data.input_shape)} ({e}); pick a matching pair or set model_options "
                                f"(e.g. in_features={data.example_input(1).numel()}).") from None
        self.prunable = default_prunable(model)
        self.run_dir = RunDir.open(root, f"lottery-{config.model}-{config.dataset}", config.settings())

    # Pieces -----------------------------------------------------------------------------
    def fresh(self, init_seed: int) -> nn.Module:
        return build(self.config, self.num_classes, init_seed).to(self.device)

    def _train(self, model: nn.Module, start: int, on_step=None) -> dict:
        return train_segment(model, self.fit, self.train_config, start=start, validation=self.validation,
                             test=self.test, eval_every=self.config.eval_every, augment=self.augment,
                             on_step=on_step)

    def _row(self, r: int, variant: str, model: nn.Module, result: dict, masks: MaskSet | None) -> dict:
        final = evaluate(model, self.test)
        return {"round": r, "variant": variant, "density": 1.0 if masks is None else _density(masks),
                "accuracy": final["accuracy"], "test_loss": final["loss"], "es_step": result.get("es_step"),
                "es_accuracy": result.get("es_accuracy"), "train_loss": result["train_loss"]}

    def load_state(self, tag: str) -> nn.Module:
        model = self.fresh(self.config.seed)
        load_masked_state_dict(model, self.run_dir.load_checkpoint(tag))
        return model

    # Rounds -----------------------------------------------------------------------------
    def dense(self) -> None:
        run, cfg = self.run_dir, self.config
        if run.is_done("round0"):
            return
        run.replace_rows([])
        model = self.fresh(cfg.seed)
        run.save_checkpoint("init", model.state_dict())
        wanted = set(cfg.keep_steps) | {cfg.rewind_step}

        def keep(step, m):
            if step in wanted:
                run.save_checkpoint(f"step{step}", {k: v.clone() for k, v in m.state_dict().items()})

        if 0 in wanted:
            keep(0, model)
        result = self._train(model, 0, keep)
        run.save_checkpoint("dense", model.state_dict())
        run.record(self._row(0, "dense", model, result, None))
        run.mark_done("round0")

    def round(self, r: int) -> None:
        run, cfg = self.run_dir, self.config
        if run.is_done(f"round{r}"):
            return
        run.replace_rows([row for row in run.rows() if row["round"] < r])  # a killed round's leftovers
        previous = self.load_state("dense" if r == 1 else f"round{r - 1}_ticket")
        current = get_masks(previous) if r > 1 else MaskSet.ones_like({n: named_parameters(previous)[n]
                                                                      for n in self.prunable})
        weights = {n: named_parameters(previous)[n] for n in self.prunable}
        rates = {self.prunable[-1]: cfg.output_rate} if cfg.output_rate is not None else None
        masks = MaskSet(magnitude_masks(weights, current, cfg.rate, cfg.scope, rates))
        rewind_state = run.load_checkpoint(f"step{cfg.rewind_step}")
        starts = {"ticket": (rewind_state, masks)}
        if "reinit" in cfg.controls:
            starts["reinit"] = (self.fresh(cfg.seed + 7919 * r + 1).state_dict(), masks)
        if "random" in cfg.controls:
            generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + r)
            starts["random"] = (rewind_state, MaskSet(random_masks(masks, generator)))
        for variant, (state, variant_masks) in starts.items():
            model = rewind(self.fresh(cfg.seed), state, variant_masks)
            result = self._train(model, cfg.rewind_step)
            run.save_checkpoint(f"round{r}_{variant}", model.state_dict())
            run.record(self._row(r, variant, model, result, variant_masks))
        run.mark_done(f"round{r}")

    def run(self, progress: bool | None = None) -> RunDir:
        """Every round not done yet; progress bar with ETA (default: when stderr is a terminal)."""
        rounds = range(0, self.config.rounds + 1)
        finished = [r for r in rounds if self.run_dir.is_done(f"round{r}")]
        if finished:
            self.log(f"resuming {self.run_dir.path}: rounds 0–{max(finished)} are done")
        show = sys.stderr.isatty() if progress is None else progress
        with tqdm(total=len(rounds), initial=len(finished), desc="IMP rounds", unit="round", disable=not show) as bar:
            self.dense()
            bar.update(0 in rounds and 0 not in finished)
            for r in rounds[1:]:
                if r not in finished:
                    self.round(r)
                    bar.update(1)
                last = [row for row in self.run_dir.rows() if row["round"] == r]
                self.log("  round {:2d}  density {:.4f}  ".format(r, last[0]["density"]) +
                         "  ".join(f"{row['variant']} {row['accuracy']:.3f}" for row in last))
        write_summary(self.run_dir)
        return self.run_dir


def run_lottery(config: LotteryConfig, root: str | Path = "runs", *, log=print, device=None,
                progress: bool | None = None) -> RunDir:
    """Run (or resume) the IMP experiment `config` on `device` (default the CPU); returns its run
    folder. `progress`: a bar with ETA over the rounds (default: when stderr is a terminal)."""
    return Experiment(config, root, log=log, device=device).run(progress)
