"""Experiments a–c: winning tickets against their controls, rewinding, augmentation.

a. IMP down to ≤ 2 % of the weights on LeNet-300-100 (MNIST-5k) and the MNIST-1D MLP:
   ticket (mask + rewound init) vs reinit (mask + fresh init) vs random mask.
b. Rewinding the ticket to iteration k instead of 0 (MNIST-1D MLP).
c. Strong augmentation (random shifts on MNIST-1D, rotations on MNIST) vs none: the
   ticket's advantage over the reinitialised control, with and without augmentation.
"""

from __future__ import annotations

from pathlib import Path

from ..lottery import run_lottery
from ..plots import line_plot
from .common import by_round, lenet_config, mean_std, mnist1d_config, pm, write_outputs
from .progress import WorkProgress


def lottery_rows(config_for_seed, seeds, out: Path, log, progress: WorkProgress) -> list[list[dict]]:
    """Run (or resume) one lottery setting for every seed (one unit of `progress` each); the rows
    of each seed's run."""
    rows = []
    for seed in seeds:
        config = config_for_seed(seed)
        log(f"[lottery] {config.model}/{config.dataset} seed {seed}: rounds={config.rounds} rate={config.rate} "
            f"k={config.rewind_step} augment={config.augment} controls={config.controls}")
        rows.append(run_lottery(config, out / "runs", log=log).rows())
        variant = (f" rewind {config.rewind_step}" if config.rewind_step else "") + \
                  (f" {config.augment}" if config.augment else "")
        progress.advance(f"{config.model}/{config.dataset}{variant} seed {seed}")
    return rows


def _density(rows_per_seed, r):
    return mean_std(row["density"] for rows in rows_per_seed for row in rows if row["round"] == r)[0]


def experiment_a(out: Path, seeds, scale: str, log, progress: WorkProgress) -> str:
    folder = out / "a_tickets"
    texts = []
    settings = (("LeNet-300-100 on MNIST-5k", lenet_config), ("MNIST-1D MLP", mnist1d_config))
    progress.expect(len(settings) * len(seeds))
    for label, factory in settings:
        runs = lottery_rows(lambda s: factory(scale, s), seeds, out, log, progress)
        dense = by_round(runs, "dense")[0]
        acc = {v: by_round(runs, v) for v in ("ticket", "reinit", "random")}
        es = by_round(runs, "ticket", "es_step")
        table = [{"round": 0, "weights left %": 100.0, "ticket": pm(dense), "reinit": "", "random mask": "",
                  "ticket ES iter": pm(by_round(runs, "dense", "es_step")[0], 0)}]
        for r in sorted(acc["ticket"]):
            table.append({"round": r, "weights left %": round(100 * _density(runs, r), 2),
                          "ticket": pm(acc["ticket"][r]), "reinit": pm(acc["reinit"][r]),
                          "random mask": pm(acc["random"][r]), "ticket ES iter": pm(es[r], 0)})
        xs = [100 * _density(runs, r) for r in sorted(acc["ticket"])]
        series, errors = {}, {}
        for variant in ("ticket", "reinit", "random"):
            stats = [mean_std(acc[variant][r]) for r in sorted(acc[variant])]
            series[variant], errors[variant] = (xs, [m for m, _ in stats]), [s for _, s in stats]
        series["dense"] = (xs, [mean_std(dense)[0]] * len(xs))
        key = "lenet" if factory is lenet_config else "mnist1d"
        line_plot(_mkdir(folder) / f"plot_{key}.png", "weights left (%)", "test accuracy", series,
                  errors=errors, x_log=True, title=f"Lottery tickets: {label} ({len(seeds)} seeds)")
        texts.append(write_outputs(folder / key, table, list(table[0]),
                                   title=f"a. {label}: test accuracy (mean ± std over {len(seeds)} seeds)",
                                   notes="ticket = IMP mask + weights rewound to iteration 0; reinit = same mask, "
                                         "fresh random init; random mask = same per-layer counts, rewound "
                                         "weights. ES iter = iteration of minimum validation loss."))
    text = "\n".join(texts)
    (folder / "table.md").write_text(text)
    return text


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def experiment_b(out: Path, seeds, scale: str, log, progress: WorkProgress) -> str:
    folder = _mkdir(out / "b_rewind")
    k = 50 if scale == "full" else 5
    progress.expect(2 * len(seeds))
    zero = lottery_rows(lambda s: mnist1d_config(scale, s), seeds, out, log, progress)  # shared with experiment a
    late = lottery_rows(lambda s: mnist1d_config(scale, s).replace(rewind_step=k, controls=()), seeds, out, log,
                        progress)
    acc0, acck = by_round(zero, "ticket"), by_round(late, "ticket")
    es0, esk = by_round(zero, "ticket", "es_step"), by_round(late, "ticket", "es_step")
    table = []
    for r in sorted(acc0):
        table.append({"round": r, "weights left %": round(100 * _density(zero, r), 2),
                      "rewind to 0": pm(acc0[r]), f"rewind to k={k}": pm(acck[r]),
                      "k − 0": pm([b - a for a, b in zip(acc0[r], acck[r])]),
                      "ES iter (0)": pm(es0[r], 0), f"ES iter (k={k})": pm(esk[r], 0)})
    xs = [100 * _density(zero, r) for r in sorted(acc0)]
    line_plot(folder / "plot.png", "weights left (%)", "test accuracy",
              {"rewind to 0": (xs, [mean_std(acc0[r])[0] for r in sorted(acc0)]),
               f"rewind to {k}": (xs, [mean_std(acck[r])[0] for r in sorted(acck)])},
              errors={"rewind to 0": [mean_std(acc0[r])[1] for r in sorted(acc0)],
                      f"rewind to {k}": [mean_std(acck[r])[1] for r in sorted(acck)]},
              x_log=True, title=f"MNIST-1D MLP: rewinding to iteration {k} vs 0")
    return write_outputs(folder, table, list(table[0]),
                         title=f"b. MNIST-1D MLP: ticket accuracy, rewind to k={k} vs 0 "
                               f"(mean ± std over {len(seeds)} seeds)",
                         notes=f"k={k} of {mnist1d_config(scale).train.steps} training iterations; the ticket "
                               "trains iterations k+1 … T on the dense run's batches.")


def experiment_c(out: Path, seeds, scale: str, log, progress: WorkProgress) -> str:
    folder = _mkdir(out / "c_augment")
    settings = [("MNIST-1D MLP", "shift", 8, mnist1d_config, 12 if scale == "full" else 2),
                ("LeNet-300-100 on MNIST-5k", "rotate", 30.0, lenet_config, 4 if scale == "full" else 1)]
    texts, series, errors = [], {}, {}
    progress.expect(2 * len(settings) * len(seeds))
    for label, augment, strength, factory, rounds in settings:
        plain = lottery_rows(lambda s: factory(scale, s), seeds, out, log, progress)  # shared with experiment a
        strong = lottery_rows(lambda s: factory(scale, s).replace(augment=augment, augment_strength=strength,
                                                                  rounds=rounds, controls=("reinit",)),
                              seeds, out, log, progress)
        table = []
        for r in range(0, rounds + 1):
            row = {"round": r, "weights left %": round(100 * _density(plain, r), 2)}
            for name, runs in (("none", plain), (augment, strong)):
                if r == 0:
                    row[f"{name}: ticket"] = pm(by_round(runs, "dense")[0])
                    row[f"{name}: reinit"] = row[f"{name}: ticket − reinit"] = "(dense)"
                    continue
                ticket, reinit = by_round(runs, "ticket")[r], by_round(runs, "reinit")[r]
                row[f"{name}: ticket"], row[f"{name}: reinit"] = pm(ticket), pm(reinit)
                row[f"{name}: ticket − reinit"] = pm([a - b for a, b in zip(ticket, reinit)])
            table.append(row)
        xs = [100 * _density(plain, r) for r in range(1, rounds + 1)]
        for name, runs in (("none", plain), (augment, strong)):
            gaps = [mean_std([a - b for a, b in zip(by_round(runs, "ticket")[r], by_round(runs, "reinit")[r])])
                    for r in range(1, rounds + 1)]
            series[f"{label}, {name}"] = (xs, [m for m, _ in gaps])
            errors[f"{label}, {name}"] = [s for _, s in gaps]
        texts.append(write_outputs(folder / augment, table, list(table[0]),
                                   title=f"c. {label}: {augment} augmentation (±{strength:g}) vs none "
                                         f"(test accuracy, mean ± std over {len(seeds)} seeds)",
                                   notes="Both arms train every network (dense, ticket, reinit) with the same "
                                         "augmentation setting; the gap is ticket − reinit per seed."))
    line_plot(folder / "plot.png", "weights left (%)", "ticket − reinit accuracy", series, errors=errors,
              x_log=True, title="Advantage of the rewound ticket over random reinitialisation")
    text = "\n".join(texts)
    (folder / "table.md").write_text(text)
    return text
