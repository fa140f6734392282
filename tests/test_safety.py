"""Nothing hurts the user's model or files: masks only shrink, copies are independent, resumed
runs are bit-identical, and every bad input is a prunekit error with nothing written."""

import copy
import os
import pickle
import re

import pytest
import torch
import yaml

import prunekit as pk
from prunekit.cli import main
from prunekit.errors import PrunekitError
from prunekit.compaction import CompactionRecord
from prunekit.recipe import recipe_from_dict
from prunekit.workflows.prune_finetune import run_recipe
from prunekit.workflows.sources import dataset_from

pytestmark = pytest.mark.usefixtures("one_thread")


def mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))


def test_local_pruning_after_global_only_shrinks_the_masks():
    model = mlp()
    first = pk.prune(model, 0.9)
    second = pk.prune(model, 0.5, scope="local")
    assert second.is_subset_of(first) and second == first  # 50 % per tensor is already exceeded everywhere


def test_copies_of_a_masked_model_are_independent():
    model, x = mlp(), torch.randn(3, 8)
    pk.prune(model, 0.5)
    expected = model(x)
    plain = pk.remove_masks(copy.deepcopy(model))
    assert not len(pk.get_masks(plain)) and torch.equal(plain(x), expected)
    assert torch.equal(model(x), expected) and len(pk.get_masks(model)) == 2
    pk.prune_structured(copy.deepcopy(model), 0.5, x)  # masks biases too: new parametrizations on the copy
    assert torch.equal(model(x), expected) and set(pk.get_masks(model)) == {"0.weight", "2.weight"}


def test_allocator_search_on_a_masked_model_leaves_it_intact():
    dataset = dataset_from("user_models:small_digits")
    from user_models import make_net
    torch.manual_seed(0)
    model, x = make_net(), dataset.example_input(2)
    pk.prune(model, 0.3)
    state, masks = copy.deepcopy(model.state_dict()), pk.get_masks(model)
    plan = pk.Pruner(model, x, granularity="channel", allocation="greedy", budget={"flops": 0.7}, val=dataset.test,
                     allocation_options={"step": 0.25}).plan()
    assert plan.allocation.met
    assert pk.get_masks(model) == masks and all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    model(x)


def test_resume_after_a_kill_is_bit_identical_with_dropout(tmp_path):
    recipe = recipe_from_dict({"name": "rng", "data": {"name": "digits"},
                               "model": {"name": "mnist1d_mlp", "options": {"in_features": 64, "hidden": 16,
                                                                            "dropout": 0.3}},
                               "train": {"steps": 30, "batch_size": 32},
                               "prune": {"sparsities": [0.5, 0.8]}, "finetune": {"steps": 30}})
    quiet = dict(progress=False, log=lambda *_: None)
    before = torch.get_rng_state()
    whole = run_recipe(recipe, output_dir=tmp_path / "a", **quiet)
    assert torch.equal(torch.get_rng_state(), before)  # the caller's generator is left where it was
    killed = run_recipe(recipe, output_dir=tmp_path / "b", **quiet)
    for name in ("round2.done", "checkpoints/round2.pt", "checkpoints/round2.rng"):  # as if killed in round 2
        (killed.path / name).unlink()
    torch.manual_seed(12345)  # a new process: the global generators start elsewhere
    resumed = run_recipe(recipe, output_dir=tmp_path / "b", **quiet)
    a, b = whole.load_checkpoint("round2"), resumed.load_checkpoint("round2")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_empty_calibration_batch_is_refused():
    model = mlp()
    with pytest.raises(pk.PrunekitError, match="holds no samples"):
        pk.prune(model, 0.5, criterion="snip", batches=[(torch.zeros(0, 8), torch.zeros(0, dtype=torch.long))],
                 loss_fn=torch.nn.functional.cross_entropy)
    assert not len(pk.get_masks(model))


@pytest.mark.parametrize("call, message", [
    (lambda m: pk.prune(m, 0.5, params=5), "list of parameter names"),
    (lambda m: pk.prune(pk.models.lenet5, 0.5), "call your factory"),
])
def test_bad_api_arguments(call, message):
    model = mlp()
    with pytest.raises(pk.PrunekitError, match=message):
        call(model)
    assert not len(pk.get_masks(model))


def test_files_that_are_not_ours(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    for load in (CompactionRecord.load, pk.MaskSet.load):
        with pytest.raises(pk.PrunekitError, match="not a readable"):
            load(text)
    with pytest.raises(pk.PrunekitError, match="is a file"):
        pk.save(mlp(), text / "model")
    with pytest.raises(pk.PrunekitError, match="not a model saved by prunekit.save"):
        pk.load(tmp_path, factory=mlp)


class Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def bad_checkpoints(tmp_path):
    good = tmp_path / "good.pt"
    torch.save(pk.models.build_model("mnist1d_mlp").state_dict(), good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:200])
    other = tmp_path / "other.pt"
    torch.save(pk.models.build_model("lenet300100").state_dict(), other)
    malicious = tmp_path / "malicious.pt"
    malicious.write_bytes(pickle.dumps(Payload()))
    whole = tmp_path / "whole.pt"
    torch.save(pk.models.build_model("mnist1d_mlp"), whole)
    return good, {"truncated": (truncated, "not a readable"), "another model's": (other, "does not fit"),
                  "malicious": (malicious, "refuses such files|not a readable"),
                  "whole pickled model": (whole, "whole pickled model")}


def test_cli_user_errors_exit_cleanly_and_write_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    good, cases = bad_checkpoints(tmp_path)
    for what, (path, message) in cases.items():
        out = tmp_path / f"out-{what.replace(' ', '_')}"
        assert main(["compact", str(path), "--model", "mnist1d_mlp", "--out", str(out)]) == 2, what
        err = capsys.readouterr().err
        assert "Traceback" not in err and re.search(message, err), (what, err)
        assert not out.exists() and not (tmp_path / "pwned").exists()
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["compact", str(good), "--model", "mnist1d_mlp", "--out", str(blocker / "small.pt")]) == 2
    assert "is a file" in capsys.readouterr().err
    assert main(["compact", str(good), "--model", "mnist1d_mlp", "--model-option", "hiden=3",
                 "--out", str(tmp_path / "x.pt")]) == 2
    assert "does not accept these options" in capsys.readouterr().err and not (tmp_path / "x.pt").exists()


def test_bad_recipe_values_write_no_run_folder(tmp_path):
    base = {"name": "bad", "data": {"name": "digits"}, "model": {"name": "mnist1d_mlp", "options": {"in_features": 64}},
            "train": {"steps": 1}}
    for change in ({"model": {"name": "mnist1d_mlpp"}}, {"data": {"name": "digitz"}},
                   {"model": {"name": "mnist1d_mlp", "options": {"in_features": 64, "hiden": 2}}},
                   {"model": {"name": "lenet5"}}):  # lenet5 cannot read 8×8 digits
        path = tmp_path / "recipe.yaml"
        path.write_text(yaml.safe_dump({**base, **change}))
        assert main(["run", str(path), "--output-dir", str(tmp_path / "runs")]) == 2
        assert not (tmp_path / "runs").exists()
    with pytest.raises(SystemExit) as stop:  # argparse refuses it while reading the command line
        main(["sensitivity", "--model", "mnist1d_mlp", "--data", "digits", "--ratios", "0.5,1.5",
              "--output-dir", str(tmp_path / "runs")])
    assert stop.value.code == 2 and not (tmp_path / "runs").exists()


def test_resolve_device_refuses_what_this_machine_lacks():
    from prunekit.training import resolve_device

    assert resolve_device(None) == resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else
                                           "mps" if torch.backends.mps.is_available() else "cpu")
    for bad, message in (("banana", "Unknown device"), ("meta", "not supported"), ("cuda:64", "CUDA")):
        with pytest.raises(PrunekitError, match=message):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(PrunekitError, match="no CUDA GPU.*'auto'"):
            resolve_device("cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_device_flag_on_every_training_command_refuses_a_missing_gpu_and_writes_nothing(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"name": "dev", "data": {"name": "digits"},
                                      "model": {"name": "mnist1d_mlp", "options": {"in_features": 64}},
                                      "train": {"steps": 1}}))
    out = tmp_path / "runs"
    commands = (["run", str(recipe)],
                ["sensitivity", "--model", "mnist1d_mlp", "--model-option", "in_features=64", "--data", "digits"],
                ["lottery", "--rounds", "1", "--steps", "2"])
    for command in commands:
        assert main([*command, "--output-dir", str(out), "--device", "cuda"]) == 2, command
        err = capsys.readouterr().err
        assert "Traceback" not in err and "no CUDA GPU" in err, (command, err)
        assert not out.exists(), command


def test_atomic_writes_never_touch_a_users_file_beside_the_target(tmp_path):
    from prunekit.files import replacing, write_atomically

    target = tmp_path / "model.pt"
    for neighbour in ("model.pt.tmp", "model.pt.partial"):  # names a naive temporary file would take
        (tmp_path / neighbour).write_text("the user's own file")
    write_atomically(target, {"w": torch.ones(2)})
    with pytest.raises(RuntimeError):
        with replacing(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert torch.equal(torch.load(target)["w"], torch.ones(2))  # the failed write left the old file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "model.pt.partial", "model.pt.tmp"]
    assert all((tmp_path / n).read_text() == "the user's own file" for n in ("model.pt.tmp", "model.pt.partial"))
