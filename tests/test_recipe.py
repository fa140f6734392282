import pytest
import yaml

import prunekit as pk
from prunekit.recipe import bundled_recipe, load_recipe, recipe_from_dict


def test_bundled_demo_recipe_is_valid():
    recipe = load_recipe(bundled_recipe("mnist1d_cnn"))
    assert recipe.model.name == "mnist1d_cnn"
    assert recipe.prune.sparsities == (0.5, 0.75, 0.9, 0.95)
    assert recipe.finetune.lr_factor == 0.1


def test_defaults_fill_omitted_keys():
    recipe = recipe_from_dict({"name": "x"})
    assert recipe.train.optimizer == "adam" and recipe.prune.allocation == "global"


@pytest.mark.parametrize("data, message", [
    ({"trian": {}}, "trian: unknown key. Did you mean 'train'"),
    ({"train": {"lr": "fast"}}, "train.lr: expected a number"),
    ({"train": {"lrr": 0.1}}, "Did you mean 'lr'"),
    ({"train": {"optimizer": "adagrad"}}, "optimizer must be one of"),
    ({"prune": {"sparsities": [0.5, 1.5]}}, r"prune: every sparsity must be in \[0, 1\)"),
    ({"prune": {"sparsities": [0.9, 0.5]}}, "sparsities increase"),
    ({"prune": {"criterion": "magnitud"}}, "Did you mean 'magnitude'"),
    ({"prune": {"schedule": "iterativ"}}, "Did you mean 'iterative'"),
    ({"seed": 1.5}, "seed: expected an integer"),
    ({"finetune": {"lr_factor": 0}}, "lr_factor must be in"),
    ([1, 2], "expected a mapping"),
])
def test_recipe_errors_say_what_to_do(data, message):
    with pytest.raises(pk.RecipeError, match=message):
        recipe_from_dict(data)


def test_load_recipe_file_errors(tmp_path):
    with pytest.raises(pk.RecipeError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(pk.RecipeError, match="not valid YAML"):
        load_recipe(bad)
    unsafe = tmp_path / "unsafe.yaml"
    unsafe.write_text("name: !!python/object/apply:os.system ['echo hacked']")
    with pytest.raises(pk.RecipeError):
        load_recipe(unsafe)


def test_settings_round_trip_through_yaml(tmp_path):
    recipe = load_recipe(bundled_recipe("mnist1d_cnn"))
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe.to_dict()))
    assert load_recipe(path) == recipe
