"""Experiment d: does training with dropout make a network more robust to pruning?

The same dense training (LeNet-300-100 on MNIST-5k, the MNIST-1D MLP) with and without
dropout; then the same one-shot global magnitude pruning at several sparsities. Reported:
the accuracy drop dense → pruned, straight after pruning and after a short fine-tuning
(100 iterations at lr/10 on the same data).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..plots import line_plot
from ..prune import prune
from ..training import evaluate
from ..lottery import Experiment
from ..lottery.trainer import train_segment
from .common import lenet_config, mean_std, mnist1d_config, pm, write_outputs
from .progress import WorkProgress

SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)


def experiment_d(out: Path, seeds, scale: str, log, progress: WorkProgress, dropout: float = 0.2) -> str:
    folder = out / "d_dropout"
    folder.mkdir(parents=True, exist_ok=True)
    finetune_steps = 100 if scale == "full" else 5
    sparsities = SPARSITIES if scale == "full" else (0.5, 0.9)
    texts, series, errors = [], {}, {}
    models = (("LeNet-300-100 on MNIST-5k", lenet_config), ("MNIST-1D MLP", mnist1d_config))
    arms = ("plain", f"dropout {dropout:g}")
    progress.expect(len(models) * len(arms) * len(seeds))
    for label, factory in models:
        results = {}  # (arm, sparsity) → {"drop": [...], "drop_ft": [...]}, arm dense acc
        dense_acc = {}
        for arm in arms:
            for seed in seeds:
                config = factory(scale, seed)
                if arm != "plain":
                    config = config.replace(model_options={**config.model_options, "dropout": dropout}, rounds=0)
                exp = Experiment(config, out / "runs", log=log)
                log(f"[dropout] {label} {arm} seed {seed}")
                exp.dense()  # the plain arm's dense run is experiment a's
                base = evaluate(exp.load_state("dense"), exp.test)["accuracy"]
                dense_acc.setdefault(arm, []).append(base)
                for s in sparsities:
                    model = exp.load_state("dense")
                    prune(model, s, scope="global")
                    pruned = evaluate(model, exp.test)["accuracy"]
                    ft = dataclasses.replace(exp.train_config, lr=exp.train_config.lr / 10, steps=finetune_steps)
                    train_segment(model, exp.fit, ft)
                    tuned = evaluate(model, exp.test)["accuracy"]
                    entry = results.setdefault((arm, s), {"drop": [], "drop_ft": []})
                    entry["drop"].append(base - pruned)
                    entry["drop_ft"].append(base - tuned)
                progress.advance(f"{label}, {arm}, seed {seed}")
        table = []
        for s in sparsities:
            row = {"sparsity %": round(100 * s, 1)}
            for arm in dense_acc:
                row[f"{arm}: drop"] = pm(results[(arm, s)]["drop"])
                row[f"{arm}: drop after FT"] = pm(results[(arm, s)]["drop_ft"])
            table.append(row)
        table.insert(0, {"sparsity %": 0.0, **{f"{arm}: drop": f"dense acc {pm(v)}" for arm, v in dense_acc.items()}})
        for arm in dense_acc:
            stats = [mean_std(results[(arm, s)]["drop"]) for s in sparsities]
            series[f"{label}, {arm}"] = ([100 * s for s in sparsities], [m for m, _ in stats])
            errors[f"{label}, {arm}"] = [e for _, e in stats]
        key = "lenet" if factory is lenet_config else "mnist1d"
        texts.append(write_outputs(folder / key, table, list(table[1]),
                                   title=f"d. {label}: accuracy drop after one-shot global magnitude pruning, "
                                         f"dropout {dropout:g} vs plain (mean ± std over {len(seeds)} seeds)",
                                   notes=f"drop = dense accuracy − pruned accuracy (positive = worse); FT = "
                                         f"{finetune_steps} iterations at lr/10."))
    line_plot(folder / "plot.png", "sparsity (%)", "accuracy drop (no fine-tuning)", series, errors=errors,
              title="Pruning robustness: dropout vs plain")
    text = "\n".join(texts)
    (folder / "table.md").write_text(text)
    return text
