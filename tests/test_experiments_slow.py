"""The qualitative findings of experiments f–i at their reported sizes (`make test-slow`).

Each test runs (or resumes) the experiment in a temporary folder and checks the finding the
tables report, never a number copied from a previous run. They take from minutes (f) to
hours (h, i) on two CPU cores. PRUNEKIT_SLOW_OUT=<folder> keeps the runs there instead, so a
second run resumes from them.
"""

import json
import os
from pathlib import Path

import pytest

from prunekit.data import fashion_mnist_available
from prunekit.experiments import run_experiment

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
SEEDS = (0, 1, 2)


@pytest.fixture
def out(tmp_path):
    return Path(os.environ.get("PRUNEKIT_SLOW_OUT", tmp_path))


def _rows(folder):
    return json.loads((folder / "table.json").read_text())


def _split(cell):
    mean, std = cell.split(" ± ")
    return float(mean), float(std)


def test_min_cut_removes_the_class_and_spares_the_others(out):
    run_experiment("mincut", out, seeds=SEEDS, log=print)
    rows = {r["method"]: r for r in _rows(out / "f_mincut")}
    cut, random, same = rows["min-cut"], rows["random, same units"], rows["attribution, same units"]
    # the class goes: far below what removing as many random units leaves
    assert _split(cut["removed-class acc"])[0] + 2 * _split(cut["removed-class acc"])[1] \
        < _split(random["removed-class acc"])[0]
    # and the other classes lose less than attribution with the same number of units costs them
    assert _split(cut["others' drop (points)"])[0] < _split(same["others' drop (points)"])[0]


@pytest.mark.skipif(not fashion_mnist_available(), reason="needs dataset-fashion-mnist")
def test_gating_executes_fewer_flops_than_dense_and_matches_static_pruning(out):
    run_experiment("gating", out, seeds=SEEDS, log=print)
    rows = {r["network"]: r for r in _rows(out / "g_gating")}
    gated, static = rows["gated"], rows["static"]
    assert _split(gated["FLOPs / dense (mean)"])[0] < 1
    assert _split(static["FLOPs / dense (mean)"])[0] <= _split(gated["FLOPs / dense (mean)"])[0] + 1e-9
    mean, std = _split(gated["test accuracy"])
    static_mean, static_std = _split(static["test accuracy"])
    assert mean >= static_mean - 2 * max(std, static_std)  # input-dependent gates are no worse at equal FLOPs


def test_notebook_ticket_beats_random_mask_at_91_percent(out):
    run_experiment("notebook", out, seeds=SEEDS, log=print)
    rows = {r["sparsity %"]: r for r in _rows(out / "h_mnist1d_notebook")}
    gap, gap_std = _split(rows[90.9]["ticket − random (final)"])
    assert gap > 2 * gap_std and gap > 0


def test_lenet_ticket_stays_near_dense_at_97_percent_with_the_paper_rates(out):
    text = run_experiment("lenet-paper", out, seeds=SEEDS, log=print)
    assert "mnist5k" in text
    rows = _rows(out / "i_lenet_paper" / "mnist5k")
    closest = min(rows[1:], key=lambda r: abs(r["weights left %"] - 3.0))
    gap, gap_std = _split(closest["ticket − dense"])
    dense_std = _split(rows[0]["ticket"])[1]
    assert gap > -0.005 - 2 * max(gap_std, dense_std)  # within half a point of dense, up to the seeds' spread
    assert _split(closest["ticket"])[0] > _split(closest["random mask"])[0]
