"""The one pipeline: every granularity reachable from Python (Pruner), a recipe and the CLI with
the same result; a user's own model through run → export → load; plan() changes nothing."""

import copy

import pytest
import torch
import torch.nn.functional as F
import yaml

import prunekit as pk
from prunekit.cli import main
from prunekit.recipe import recipe_from_dict
from prunekit.training import TrainConfig, train
from prunekit.workflows.prune_finetune import run_recipe
from prunekit.workflows.sources import dataset_from, fresh_model

pytestmark = pytest.mark.usefixtures("one_thread")

MODEL, DATA = "user_models:make_net", "user_models:small_digits"
TRAIN = {"optimizer": "adam", "lr": 0.01, "steps": 20, "batch_size": 50, "seed": 0}
CASES = {  # granularity: (criterion, allocation, sparsity)
    "element": ("magnitude", "global", 0.6),
    "kernel": ("magnitude", "uniform", 0.4),
    "out_channel": ("taylor", "global", 0.3),
    "2:4": ("magnitude", "global", 0.5),
    "channel": ("taylor", "global", 0.4),
    "block": ("magnitude", "global", 0.5),
}


def recipe_dict(granularity):
    criterion, allocation, sparsity = CASES[granularity]
    return {"name": "three-ways", "seed": 0, "data": {"name": DATA}, "model": {"name": MODEL}, "train": TRAIN,
            "prune": {"granularity": granularity, "criterion": criterion, "allocation": allocation,
                      "sparsities": [sparsity], "calibration_batches": 2},
            "finetune": {"steps": 0}}


def python_masks(granularity):
    """What a user writes by hand: train the same model, then one Pruner step."""
    criterion, allocation, sparsity = CASES[granularity]
    dataset = dataset_from(DATA)
    model = fresh_model(MODEL, {}, dataset.num_classes, seed=0)
    train(model, dataset.train, TrainConfig(**TRAIN), progress=False)
    x, y = dataset.train.tensors
    calibration = list(zip(x.split(50), y.split(50)))[:2]
    target = {} if ":" in granularity else {"sparsity": sparsity}
    pk.Pruner(model, dataset.example_input(2), granularity=granularity, criterion=criterion, allocation=allocation,
              batches=calibration, loss_fn=F.cross_entropy, **target).step()
    return pk.get_masks(model)


@pytest.mark.parametrize("granularity", [g for g in CASES if g != "channel"])  # channel: the CLI test below
def test_python_and_recipe_give_identical_masks(granularity, tmp_path):
    run = run_recipe(recipe_from_dict(recipe_dict(granularity)), output_dir=tmp_path, progress=False,
                     log=lambda *_: None)
    expected = python_masks(granularity)
    assert len(expected) and expected.sparsity() > 0
    assert pk.MaskSet.from_state_dict(run.load_checkpoint("round1")) == expected


def test_user_model_through_cli_run_export_and_load(tmp_path, capsys):
    """A user's model file: `prunekit run` with a structured recipe (the masks equal the Python
    Pruner's), `prunekit export`, then `prunekit.load` gives the compacted model back exactly."""
    recipe = recipe_dict("channel")
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["run", str(path), "--output-dir", str(tmp_path / "runs"), "--no-progress"]) == 0
    (folder,) = (tmp_path / "runs").iterdir()
    from_cli = pk.MaskSet.from_state_dict(torch.load(folder / "checkpoints" / "round1.pt", weights_only=True))
    assert from_cli == python_masks("channel")
    out = tmp_path / "exported"
    assert main(["export", str(folder), "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    loaded = pk.load(out)  # the factory and its options come from the manifest
    dataset = dataset_from(DATA)
    masked = fresh_model(MODEL, {}, dataset.num_classes, seed=0)
    pk.load_masked_state_dict(masked, torch.load(folder / "checkpoints" / "round1.pt", weights_only=True))
    small, _ = pk.compact(masked, dataset.example_input(2))
    x = dataset.test.tensors[0][:64]
    with torch.no_grad():
        masked.eval(), small.eval(), loaded.eval()
        assert torch.equal(loaded(x), small(x))                                   # bit-identical to what was saved
        assert torch.allclose(loaded(x), masked(x), rtol=1e-5, atol=1e-5)        # and equal to the masked model
    assert sum(p.numel() for p in loaded.parameters()) < sum(p.numel() for p in masked.parameters())
    assert main(["export", str(folder), "--out", str(out)]) == 2  # never overwritten unasked
    assert "exists" in capsys.readouterr().err


def test_plan_changes_nothing_and_step_installs_the_plan():
    model = pk.models.build_model("lenet5")
    x = torch.randn(2, 1, 28, 28)
    before = copy.deepcopy(model.state_dict())
    plan = pk.Pruner(model, x, granularity="channel", allocation="global", sparsity=0.5).plan()
    assert not len(pk.get_masks(model))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert plan.pruned_units == round(0.5 * plan.units)
    assert "Plan: channel units" in str(plan)
    pruner = pk.Pruner(model, x, granularity="channel", allocation="global", sparsity=0.5)
    assert pruner.step().masks == pk.get_masks(model) == plan.masks


def test_budgets_are_met_to_within_one_unit():
    model = pk.models.build_model("lenet5")
    x = torch.randn(2, 1, 28, 28)
    for allocation in ("global", "uniform"):
        plan = pk.Pruner(copy.deepcopy(model), x, granularity="channel", allocation=allocation,
                         budget={"flops": 0.5}).plan()
        assert plan.allocation.met and plan.allocation.achieved <= 0.5 * plan.allocation.dense


def test_threshold_is_the_global_allocation_with_tau():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 10), torch.nn.Linear(10, 3))
    pk.prune_threshold(model, 0.2)
    for name, mask in pk.get_masks(model).items():
        w = pk.named_parameters(model)[name].detach()
        assert torch.equal(mask, w.abs() >= 0.2) or torch.equal(mask & (w.abs() >= 0.2), mask)


@pytest.mark.parametrize("kwargs, message", [
    (dict(granularity="chanel", sparsity=0.5), "Did you mean 'channel'"),
    (dict(sparsity=1.5), "outside"),
    (dict(sparsity=0.5, budget={"flops": 0.5}), "exactly one target"),
    (dict(budget={"watts": 0.5}), "budget must name one metric"),
    (dict(allocation="knapsak", sparsity=0.5), "Did you mean 'knapsack'"),
    (dict(granularity="2:4", sparsity=0.5), "fixes the sparsity pattern"),
    (dict(threshold=0.1, allocation="uniform"), "allocation='global'"),
    (dict(granularity="channel", sparsity=0.5, example_inputs=None), "pass example_inputs"),
    (dict(granularity="channel", sparsity=0.5, params=["0.weight"]), "params= selects tensors"),
])
def test_bad_pruner_arguments_are_refused_before_anything_changes(kwargs, message):
    model = pk.models.build_model("lenet5")
    before = copy.deepcopy(model.state_dict())
    x = kwargs.pop("example_inputs", torch.randn(2, 1, 28, 28))
    with pytest.raises(pk.PrunekitError, match=message):
        pk.Pruner(model, x, **kwargs).step()
    assert not len(pk.get_masks(model)) and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_pruner_refuses_a_factory_instead_of_a_model():
    with pytest.raises(pk.PrunekitError, match="call your factory"):
        pk.Pruner(pk.models.lenet5, sparsity=0.5)
