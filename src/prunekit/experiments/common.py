"""Shared pieces of the experiments: settings per scale, seeds, mean ± std, outputs.

Every experiment writes <out>/<name>/table.md (+ .csv, .json) and plot.png. The lottery
runs behind them live in <out>/runs/, one RunDir per settings hash, so experiments that
share a setting (a and b, c and e) share its runs, and a rerun finds finished work.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from ..files import replacing
from ..lottery import LotteryConfig
from ..table import format_table
from ..training import TrainConfig

# Two sizes: "full" is what the closing tables were measured with (sized for about 30 minutes of
# two CPU cores for all five experiments), "quick" is a smoke test that runs in seconds.
SCALES = ("full", "quick")


def mnist1d_config(scale: str = "full", seed: int = 0) -> LotteryConfig:
    """MNIST-1D MLP (40-100-100-10): Adam lr 1e-2, batch 200, 500 iterations (28 epochs of the
    3,500 training samples), 20 % of survivors per round, 18 rounds → 1.8 % of the weights."""
    if scale == "quick":
        return LotteryConfig(model="mnist1d_mlp", dataset="mnist1d", model_options={"hidden": 32},
                             train=TrainConfig(optimizer="adam", lr=1e-2, steps=60, batch_size=100), rounds=3,
                             rate=0.5, eval_every=20, keep_steps=(0, 5, 20, 60), seed=seed)
    return LotteryConfig(model="mnist1d_mlp", dataset="mnist1d",
                         train=TrainConfig(optimizer="adam", lr=1e-2, steps=500, batch_size=200), rounds=18,
                         rate=0.2, eval_every=25, keep_steps=(0, 10, 25, 50, 125, 500), seed=seed)


def lenet_config(scale: str = "full", seed: int = 0) -> LotteryConfig:
    """LeNet-300-100 on the 5,000 real MNIST digits: Adam lr 1.2e-3 (Frankle & Carbin),
    batch 100, 500 iterations (14 epochs), 36 % of survivors per round, 9 rounds → 1.8 % of
    the weights."""
    if scale == "quick":
        return LotteryConfig(model="lenet300100", dataset="mnist5k",
                             train=TrainConfig(optimizer="adam", lr=1.2e-3, steps=40, batch_size=100), rounds=2,
                             rate=0.5, eval_every=20, seed=seed)
    return LotteryConfig(model="lenet300100", dataset="mnist5k",
                         train=TrainConfig(optimizer="adam", lr=1.2e-3, steps=500, batch_size=100), rounds=9,
                         rate=0.36, eval_every=25, seed=seed)


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value); None entries skipped."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return math.nan, math.nan
    mean = sum(xs) / len(xs)
    var = sum((x - mean) ** 2 for x in xs) / (len(xs) - 1) if len(xs) > 1 else 0.0
    return mean, math.sqrt(var)


def pm(values, digits: int = 3, scale: float = 1.0) -> str:
    mean, std = mean_std(values)
    return f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f}"


def by_round(rows_per_seed: list[list[dict]], variant: str, key: str = "accuracy") -> dict[int, list]:
    """round → [value of `key` for `variant` in each seed's run]."""
    out: dict[int, list] = {}
    for rows in rows_per_seed:
        for row in rows:
            if row["variant"] == variant:
                out.setdefault(row["round"], []).append(row[key])
    return out


def write_outputs(folder: Path, rows: list[dict], columns: list[str], *, title: str, notes: str = "") -> str:
    """table.md (title, Markdown table, notes), table.csv and table.json; returns the Markdown."""
    folder.mkdir(parents=True, exist_ok=True)
    text = f"### {title}\n\n{format_table(rows, columns)}\n" + (f"\n{notes}\n" if notes else "")
    (folder / "table.md").write_text(text)
    (folder / "table.json").write_text(json.dumps(rows, indent=2, default=str))
    with (folder / "table.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return text


def run_seeds(folder: Path, seeds, scale: str, progress, compute) -> list:
    """[compute(seed) for each seed], each cached in folder/seed<seed>_<scale>.json (a rerun finds
    the finished seeds) and reported to `progress` as one unit of work."""
    folder.mkdir(parents=True, exist_ok=True)
    results = []
    progress.expect(len(seeds))
    for seed in seeds:
        results.append(cached(folder / f"seed{seed}_{scale}.json", lambda: compute(seed)))
        progress.advance(f"seed {seed}")
    return results


def cached(path: Path, compute):
    """The JSON value at `path`; when it is not there yet, `compute()` first and write it (atomically,
    so a killed run never leaves half a file): a rerun finds the finished seeds."""
    if not path.is_file():
        with replacing(path) as tmp:
            tmp.write_text(json.dumps(compute()))
    return json.loads(path.read_text())
