"""Experiments j (CNN channels vs ViT heads), k (block removal) and l (pruning at initialisation),
and the run report's activation-sparsity section.

Quick-scale smoke runs (seconds) check the outputs, the per-seed caches and the mechanisms
against independent truths; the `slow` tests at the end run the reported sizes and check the
qualitative findings, never a number copied from a run.
"""

import copy
import json

import pytest
import torch
from torch import nn

from prunekit.accounting import count_flops
from prunekit.blocks import find_residual_blocks
from prunekit.compaction import compact
from prunekit.experiments import ALIASES, EXPERIMENTS, run_experiment
from prunekit.experiments.block_removal import _subsets
from prunekit.experiments.nets import SmallCNN, StackNet, TinyViT
from prunekit.masks import apply_masks
from prunekit.pruner import Pruner
from prunekit.report import Report
from prunekit.workflows.activations_section import COLUMNS, activation_rows, add_activation_section

pytestmark = pytest.mark.usefixtures("one_thread")
SEEDS = (0, 1, 2)


def _rows(folder):
    return json.loads((folder / "table.json").read_text())


def _split(cell):
    mean, std = cell.split(" ± ")
    return float(mean), float(std)


def _quick(name, folder):
    lines = []
    text = run_experiment(name, folder, seeds=(0,), scale="quick", log=lines.append)
    return text, lines


def test_registered_with_aliases():
    for key, alias in (("j", "channels-vs-heads"), ("k", "block-removal"), ("l", "grasp-vs-snip")):
        assert key in EXPERIMENTS and ALIASES[alias] == key


# ---- j: channels vs heads -----------------------------------------------------------------------

def test_vit_heads_and_cnn_channels_meet_a_flops_budget_after_compaction():
    torch.manual_seed(0)
    x = torch.randn(2, 1, 28, 28)
    for model, granularity in ((SmallCNN(widths=(8, 8, 16)), "channel"), (TinyViT(dim=32, heads=4), "head")):
        dense = count_flops(model, x)["dense_flops"]
        Pruner(model, x, granularity=granularity, criterion="magnitude", budget={"flops": 0.7}).step()
        small, _ = compact(model, x)
        assert count_flops(small, x)["dense_flops"] <= 0.7 * dense
        torch.testing.assert_close(small(x), model(x), rtol=1e-4, atol=1e-5)  # the removal is exact


def test_channels_heads_quick_run_writes_outputs_and_resumes(tmp_path):
    text, _ = _quick("channels-vs-heads", tmp_path)
    folder = tmp_path / "j_channels_heads"
    assert (folder / "plot.png").is_file() and (folder / "table.csv").is_file()
    rows = _rows(folder)
    arms = {(r["network / units"], r["criterion"], r["FLOPs budget"]) for r in rows}
    assert {("ViT heads", "random", "0.50"), ("ViT heads + MLP units", "taylor", "0.50"),
            ("CNN channels", "taylor", "0.50")} <= arms
    for row in rows:
        if row["FLOPs reached"] not in ("unreachable", "1.000 ± 0.000"):
            assert _split(row["FLOPs reached"])[0] <= float(row["FLOPs budget"]) + 1e-9
    again, lines = _quick("j", tmp_path)  # every unit found in its cache
    assert again == text and all("loaded from an earlier run" in line for line in lines if "/2 " in line)


# ---- k: block removal ---------------------------------------------------------------------------

def test_masked_residual_branch_equals_the_block_replaced_by_identity():
    """What k does to the ResNet (mask the branch) and to the plain net (identity) is the same map
    on a trained-or-not network: relu(x + 0) = x for the non-negative x a block receives."""
    torch.manual_seed(0)
    net = StackNet(widths=(4, 8, 8), blocks_per_stage=2).eval()
    x = torch.randn(3, 1, 12, 12)
    blocks = [b for b in find_residual_blocks(net, x) if b.prunable]
    assert [b.name for b in blocks] == [f"blocks.{i}.body" for i, blk in enumerate(net.blocks) if blk.keeps_shape]
    masked, replaced = copy.deepcopy(net), copy.deepcopy(net)
    params = dict(masked.named_parameters())
    apply_masks(masked, {n: torch.zeros_like(params[n], dtype=torch.bool) for n in blocks[1].params})
    index = int(blocks[1].name.split(".")[1])
    replaced.blocks[index] = nn.Identity()
    with torch.no_grad():
        torch.testing.assert_close(masked(x), replaced(x))
        assert not torch.allclose(masked(x), net(x))


def test_subsets_are_all_or_distinct_samples():
    import random
    assert _subsets([1, 2, 3], 2, 5, random.Random(0)) == [(1, 2), (1, 3), (2, 3)]
    picked = _subsets(list(range(6)), 3, 4, random.Random(0))
    assert len(picked) == len(set(picked)) == 4 and all(len(s) == 3 for s in picked)


def test_block_removal_quick_run(tmp_path):
    _quick("block-removal", tmp_path)
    rows = _rows(tmp_path / "k_block_removal")
    networks = {r["network"] for r in rows}
    assert networks == {"ResNet (residual)", "plain CNN"}
    assert {r["blocks removed"] for r in rows} == {0, 1, 2}
    assert (tmp_path / "k_block_removal" / "seed0_quick.json").is_file()


# ---- l: pruning at initialisation ---------------------------------------------------------------

def test_init_pruning_quick_run_reaches_each_sparsity(tmp_path):
    _quick("grasp-vs-snip", tmp_path)
    rows = _rows(tmp_path / "l_init_pruning")
    assert {r["criterion"] for r in rows} == {"—", "grasp", "grasp T=200", "snip", "magnitude", "random"}
    for row in rows:
        if row["criterion"] != "—":
            kept = _split(row["smallest layer kept"])[0]
            assert 0.0 <= kept <= 1.0 - float(row["sparsity"].rstrip("%")) / 100 + 1e-9  # some layer at most this dense
    cached = json.loads((tmp_path / "l_init_pruning" / "lenet300100_seed0_quick.json").read_text())
    assert len(cached["pruned"]) == 2 * 5
    # a seed cached before an arm existed computes only that arm, the rest is kept as it was
    cached["pruned"] = [row for row in cached["pruned"] if row["criterion"] != "grasp T=200"]
    (tmp_path / "l_init_pruning" / "lenet300100_seed0_quick.json").write_text(json.dumps(cached))
    _, lines = _quick("l", tmp_path)
    again = json.loads((tmp_path / "l_init_pruning" / "lenet300100_seed0_quick.json").read_text())
    assert again["pruned"][:8] == cached["pruned"] and [r["criterion"] for r in again["pruned"][8:]] == ["grasp T=200"] * 2


# ---- the run report's activation-sparsity section -----------------------------------------------

def test_activation_section_rows_and_html():
    model = nn.Sequential(nn.Linear(3, 2, bias=False), nn.ReLU(), nn.Linear(2, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0.0, 2.0], [0.0, -3.0, 0.0]]))
        model[2].weight.copy_(torch.tensor([[1.0, 1.0], [0.0, 1.0]]))
    x = torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 3.0]])
    rows = activation_rows(model, x)
    assert list(rows[0]) == COLUMNS and rows[-1]["layer"] == "total"
    # by hand: both-sparse MACs 3 (layer 0) + 2 (layer 2) of 6 + 4 dense per example → skipped 1 − 10/40
    assert rows[-1]["both (EIE) FLOPs"] == 5 and rows[-1]["skipped"] == 0.75
    json.dumps(rows)  # storable in the run folder
    html = add_activation_section(Report("r"), rows).html()
    assert 'id="activation-sparsity"' in html and "Activation sparsity" in html
    assert add_activation_section(Report("r"), []).html() == Report("r").html()


# ---- the reported sizes (make test-slow) --------------------------------------------------------

@pytest.mark.slow
def test_vit_loses_less_than_the_cnn_at_the_same_flops_fraction(tmp_path):
    run_experiment("channels-vs-heads", tmp_path, seeds=SEEDS, log=lambda s: None)
    rows = {(r["network / units"], r["criterion"], r["FLOPs budget"]): r for r in _rows(tmp_path / "j_channels_heads")}
    # every reachable budget is met, and heads alone cannot go below what the MLPs cost
    assert rows[("ViT heads", "taylor", "0.30")]["FLOPs reached"] == "unreachable"
    for (arm, criterion, budget), row in rows.items():
        if row["FLOPs reached"] not in ("unreachable", "1.000 ± 0.000"):
            assert _split(row["FLOPs reached"])[0] <= float(budget) + 1e-9
    # at the tightest budget both networks lose accuracy, and lose more before fine-tuning than after
    cnn, vit = rows[("CNN channels", "taylor", "0.30")], rows[("ViT heads + MLP units", "taylor", "0.30")]
    for row in (cnn, vit):
        assert _split(row["before fine-tuning"])[0] <= _split(row["after fine-tuning"])[0]
    # the finding: at 30 % of its own FLOPs the transformer keeps more of its accuracy than the CNN
    assert _split(vit["drop after (points)"])[0] < _split(cnn["drop after (points)"])[0]
    # and with heads alone at 50 % (the lowest budget heads can reach) the same holds
    heads, channels = rows[("ViT heads", "taylor", "0.50")], rows[("CNN channels", "taylor", "0.50")]
    assert _split(heads["drop after (points)"])[0] < _split(channels["drop after (points)"])[0]


@pytest.mark.slow
def test_residual_network_degrades_gracefully_and_plain_collapses(tmp_path):
    run_experiment("block-removal", tmp_path, seeds=SEEDS, log=lambda s: None)
    rows = {(r["network"], r["blocks removed"]): r for r in _rows(tmp_path / "k_block_removal")}
    for k in (1, 2):  # beyond a few blocks both are at chance: the contrast is in the first removals
        resnet, std = _split(rows[("ResNet (residual)", k)]["accuracy (mean over subsets)"])
        plain, plain_std = _split(rows[("plain CNN", k)]["accuracy (mean over subsets)"])
        assert resnet - 2 * std > plain + 2 * plain_std
    # graceful: the ResNet's accuracy falls step by step with k, not to chance at k = 1
    means = [_split(rows[("ResNet (residual)", k)]["accuracy (mean over subsets)"])[0] for k in (0, 1, 2, 3)]
    assert means == sorted(means, reverse=True)


@pytest.mark.slow
def test_pruning_at_initialisation_snip_and_grasp_stay_trainable(tmp_path):
    run_experiment("grasp-vs-snip", tmp_path, seeds=SEEDS, log=lambda s: None)
    rows = {(r["network"], r["sparsity"], r["criterion"]): r for r in _rows(tmp_path / "l_init_pruning")}
    for network in ("lenet300100", "lenet5"):
        def accuracy(sparsity, criterion):
            return _split(rows[(network, sparsity, criterion)]["test accuracy after training"])

        # magnitude at initialisation, ranked globally, empties a whole layer at 98 % and 99 %
        for sparsity in ("98%", "99%"):
            assert _split(rows[(network, sparsity, "magnitude")]["smallest layer kept"])[0] == 0
        # the data-driven scores keep the network trainable at 98 % where a random mask fails
        random_mean, random_std = accuracy("98%", "random")
        for criterion in ("snip", "grasp", "grasp T=200"):
            mean, std = accuracy("98%", criterion)
            assert mean - 2 * std > random_mean + 2 * random_std
        # what this experiment finds, against the GraSP paper: at 99 % SNIP trains better than GraSP
        snip = accuracy("99%", "snip")[0]
        assert snip > accuracy("99%", "grasp")[0] and snip > accuracy("99%", "grasp T=200")[0]
