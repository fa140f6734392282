"""Every importance criterion side by side: accuracy vs sparsity, and cost per gradient.

For each model and seed, one dense model is trained; every criterion scores that same model
once on the same calibration batches, and the scores are turned into masks for each target:

  * unstructured: one global ranking over every weight tensor except the classifier (the last
    layer, which no criterion prunes), `SPARSITY` of those weights removed;
  * by channel: the dependency graph's channel groups (prunekit.graph), CHANNELS of the units
    of every group removed, coupled tensors masked together. A unit's score is the L2 norm of
    its *producer* slice (the filter / row that writes the channel), or of its consumer
    columns for "regression", which scores a layer's input channels.

Accuracy is measured right after pruning (one-shot) and after the same fine-tuning budget
(steps at lr × 0.1, same batches for every criterion). Mean ± std over seeds.
A second table prunes at initialisation (SNIP's and GraSP's setting) and trains the sparse
network with the dense budget. A third gives each criterion's scoring time divided by the
time of one gradient computation of the same loss on the same batch (medians of repeats).

    python benchmarks/criteria.py            # 3 seeds, all models (~15 min on 2 cores)
    python benchmarks/criteria.py --quick    # 1 seed, short budgets (smoke run)
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

import prunekit as pk
from prunekit import selection
from prunekit.criteria import APoZ, BNScale, GraSP, OBD, Random, Regression, SNIP, Taylor
from prunekit.criteria.magnitude import Magnitude
from prunekit.graph import build_graph
from prunekit.hessian import gradient
from prunekit.criteria.calibration import LossOfParams, pure
from prunekit.masks import apply_masks, resolve_parameters
from prunekit.slimming import slimming_loss
from prunekit.selection import prune_lowest, resolve_amount
from prunekit.structured import group_masks, unit_values
from prunekit.training import TrainConfig, evaluate, finetune, train

SPARSITY = (0.9, 0.97)
CHANNELS = (0.5,)


class MNIST1DCNNBN(nn.Module):
    """MNIST-1D's ConvBase with a BatchNorm after every convolution (for BN |γ| and slimming)."""

    def __init__(self, channels: int = 25):
        super().__init__()
        self.conv1 = nn.Conv1d(1, channels, 5, stride=2, padding=1)
        self.bn1 = nn.BatchNorm1d(channels)
        self.conv2 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        self.bn2 = nn.BatchNorm1d(channels)
        self.conv3 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        self.bn3 = nn.BatchNorm1d(channels)
        self.linear = nn.Linear(channels * 5, 10)

    def forward(self, x):
        x = self.bn1(self.conv1(x.unsqueeze(1))).relu()
        x = self.bn2(self.conv2(x)).relu()
        x = self.bn3(self.conv3(x)).relu()
        return self.linear(x.flatten(1))


SETUPS = {  # dataset, dense recipe
    "mnist1d_mlp": ("mnist1d", TrainConfig(optimizer="adam", lr=2e-3, steps=2000, batch_size=100)),
    "mnist1d_cnn": ("mnist1d", TrainConfig(optimizer="adam", lr=1e-2, steps=2500, batch_size=100)),
    "mnist1d_cnn_bn": ("mnist1d", TrainConfig(optimizer="adam", lr=1e-2, steps=2500, batch_size=100)),
    "lenet300100": ("mnist5k", TrainConfig(optimizer="adam", lr=1.2e-3, steps=1500, batch_size=100)),
    "lenet5": ("mnist5k", TrainConfig(optimizer="adam", lr=1e-3, steps=800, batch_size=100)),
}
SLIMMING_STRENGTH = 1e-3


def build(name):
    return MNIST1DCNNBN() if name == "mnist1d_cnn_bn" else pk.models.build_model(name)


def criteria_for(model_name):
    """{label: (criterion, which dense model it scores)}; 'slimming' scores the penalised one."""
    out = {
        "magnitude": Magnitude(), "random": Random(seed=0), "snip": SNIP(), "taylor": Taylor(accumulate="squared"),
        "grasp": GraSP(),
        "obd (hutchinson)": OBD("hutchinson"), "obd (fisher)": OBD("fisher"), "apoz": APoZ(),
        "regression": Regression(),
    }
    if model_name == "mnist1d_cnn_bn":
        out["bn |γ|"] = BNScale(unmatched="keep")
        out["slimming"] = BNScale(unmatched="keep")
    return out


def train_dense(model_name, data, config, seed, strength=0.0):
    torch.manual_seed(seed)
    model = build(model_name)
    cfg = TrainConfig(**{**config.__dict__, "seed": seed})
    loss = slimming_loss(F.cross_entropy, model, strength) if strength else F.cross_entropy
    train(model, data.train, cfg, loss_fn=loss, progress=False)
    return model


def calibration(data, seed, n=4, size=100):
    g = torch.Generator().manual_seed(10_000 + seed)
    x, y = data.train.tensors
    idx = torch.randperm(len(x), generator=g)[: n * size].reshape(n, size)
    return [(x[i], y[i]) for i in idx]


def classifier(model) -> str:
    return [n for n, p in model.named_parameters() if p.dim() >= 2][-1]


def unstructured_masks(scores, amount):
    return selection.global_masks(scores, amount)


def channel_masks(model, graph, scores, amount, consumer: bool):
    """Per-group keep from the producer's (or consumer's) slices only, then coupled masks."""
    unit = {}
    for group in graph.prunable():
        parts = [s for s in group.slices if s.kind == "param" and s.name in scores and s.dim == (1 if consumer else 0)
                 and scores[s.name].dim() >= 2]
        if not parts:
            continue
        values = torch.cat([unit_values(scores[s.name].detach().float(), s.dim, s.index) for s in parts], 1)
        unit[group.name] = values.pow(2).sum(1).sqrt()
    keep = {n: prune_lowest(s, resolve_amount(amount, s.numel())) for n, s in unit.items()}
    return group_masks(graph, keep)


def clone(model_name, state):
    model = build(model_name)
    model.load_state_dict(state)
    return model


def fmt(values):
    mean = 100 * statistics.mean(values)
    std = 100 * statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.1f} ± {std:.1f}"


def accuracy_tables(models, seeds, budget, quick):
    for model_name in models:
        data_name, config = SETUPS[model_name]
        if quick:
            config = TrainConfig(**{**config.__dict__, "steps": max(200, config.steps // 5)})
        data = pk.data.load_dataset(data_name)
        crits = criteria_for(model_name)
        settings = [("unstructured", s) for s in SPARSITY] + [("channel", s) for s in CHANNELS]
        acc = {}
        dense_acc = []
        for seed in seeds:
            dense = train_dense(model_name, data, config, seed)
            dense_acc.append(evaluate(dense, data.test)["accuracy"])
            slim = None
            if "slimming" in crits:
                slim = train_dense(model_name, data, config, seed, SLIMMING_STRENGTH)
            batches = calibration(data, seed)
            example = batches[0][0][:2]
            ft = config.for_finetuning(0.1, steps=budget, seed=seed + 1000)
            for label, crit in crits.items():
                source = slim if label == "slimming" else dense
                state = {k: v.clone() for k, v in source.state_dict().items()}
                params = resolve_parameters(source)
                last = classifier(source)
                scores = crit.scores(source, params, batches=batches, loss_fn=F.cross_entropy)
                unstructured = {n: s for n, s in scores.items() if n != last}
                graph = build_graph(source, example)
                for mode, amount in settings:
                    model = clone(model_name, state)
                    if mode == "unstructured":
                        apply_masks(model, unstructured_masks(unstructured, amount))
                    else:
                        apply_masks(model, channel_masks(model, graph, scores, amount, label == "regression"))
                    one_shot = evaluate(model, data.test)["accuracy"]
                    finetune(model, data.train, ft, lr_factor=1.0, progress=False) if budget else None
                    tuned = evaluate(model, data.test)["accuracy"]
                    acc.setdefault((label, mode, amount), []).append((one_shot, tuned))
        columns = [f"{m} {int(a * 100)} %" for m, a in settings]
        rows = [{"criterion": "dense", **{c: fmt(dense_acc) for c in columns}}]
        for label in crits:
            row = {"criterion": label}
            for (mode, amount), column in zip(settings, columns):
                pairs = acc[(label, mode, amount)]
                row[column] = f"{fmt([p[0] for p in pairs])} → {fmt([p[1] for p in pairs])}"
            rows.append(row)
        print(f"\n### {model_name} on {data_name}: test accuracy (%), one-shot → after {budget} fine-tuning steps "
              f"(lr × 0.1), {len(seeds)} seed(s)\n")
        print(pk.format_table(rows))


def at_init_table(seeds, quick, sparsities=(0.95, 0.98)):
    model_name = "lenet300100"
    data_name, config = SETUPS[model_name]
    config = TrainConfig(**{**config.__dict__, "steps": 300 if quick else 1000})
    data = pk.data.load_dataset(data_name)
    crits = {"magnitude": Magnitude(), "random": Random(seed=0), "snip": SNIP(), "grasp": GraSP()}
    acc = {}
    for seed in seeds:
        torch.manual_seed(seed)
        init = build(model_name)
        state = {k: v.clone() for k, v in init.state_dict().items()}
        batches = calibration(data, seed, n=1)
        for label, crit in crits.items():
            scores = crit.scores(init, resolve_parameters(init), batches=batches, loss_fn=F.cross_entropy)
            for s in sparsities:
                model = clone(model_name, state)
                apply_masks(model, selection.global_masks(scores, s))
                train(model, data.train, TrainConfig(**{**config.__dict__, "seed": seed}), progress=False)
                acc.setdefault((label, s), []).append(evaluate(model, data.test)["accuracy"])
    rows = [{"criterion": label, **{f"{s * 100:g} %": fmt(acc[(label, s)]) for s in sparsities}} for label in crits]
    print(f"\n### Pruning at initialisation: {model_name} on {data_name}, global over all weights, then "
          f"{config.steps} training steps; test accuracy (%), {len(seeds)} seed(s)\n")
    print(pk.format_table(rows))


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_ratio(fn, base, repeats, warm=True):
    """Median over repeats of time(fn) / time(base), the two measured back to back each time so
    that load from other processes affects both alike."""
    if warm:
        fn(), base()
    return statistics.median(timed(fn) / timed(base) for _ in range(repeats))


def cost_table(models, repeats):
    rows = []
    for model_name in models:
        data_name, _ = SETUPS[model_name]
        data = pk.data.load_dataset(data_name)
        torch.manual_seed(0)
        model = build(model_name)
        batch = calibration(data, 0, n=1, size=100)
        params = resolve_parameters(model)
        names = list(params)
        values = [p.detach() for p in params.values()]
        f = LossOfParams(model, names, F.cross_entropy, batch[0])

        def base():
            with pure(model):  # criteria score in eval mode, through the same functional call
                gradient(f, values)

        base_ms = 1000 * statistics.median(timed(base) for _ in range(repeats))
        crits = dict(criteria_for(model_name))
        crits.pop("slimming", None)
        if sum(v.numel() for v in values) <= 6000:
            crits["obd (exact)"] = OBD("exact")
        row = {"model": model_name, "gradient (ms)": f"{base_ms:.1f}"}
        for label, crit in crits.items():
            reps = 1 if label == "obd (exact)" else repeats
            ratio = median_ratio(lambda: crit.scores(model, params, batches=batch, loss_fn=F.cross_entropy), base,
                                 reps, warm=reps > 1)
            row[label] = f"{ratio:.2f}"
        rows.append(row)
    columns = list(dict.fromkeys(c for r in rows for c in r))
    print(f"\n### Scoring cost ÷ one gradient computation (same model, same batch of 100; median of {repeats} "
          "back-to-back ratios)\n")
    print(pk.format_table(rows, columns=columns))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budget", type=int, default=150, help="fine-tuning steps after pruning")
    parser.add_argument("--models", nargs="+", default=list(SETUPS))
    parser.add_argument("--quick", action="store_true", help="1 seed, short training: a smoke run")
    parser.add_argument("--skip", nargs="*", default=[], choices=["accuracy", "init", "cost"])
    args = parser.parse_args()
    torch.set_num_threads(1)  # small models: one thread is fastest on a shared machine
    seeds = range(1 if args.quick else args.seeds)
    budget = 50 if args.quick else args.budget
    start = time.perf_counter()
    if "cost" not in args.skip:
        cost_table(args.models, 3 if args.quick else 7)
    if "accuracy" not in args.skip:
        accuracy_tables(args.models, seeds, budget, args.quick)
    if "init" not in args.skip:
        at_init_table(seeds, args.quick)
    print(f"\ntotal wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
