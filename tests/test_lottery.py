import re

import pytest
import torch
from torch.utils.data import TensorDataset

import prunekit.lottery.imp as imp
from prunekit import MaskSet, PrunekitError, get_masks, prune
from prunekit.augment import Rotate, Shift, make_augmentation
from prunekit.lottery import (LotteryConfig, magnitude_masks, random_masks, rewind, run_lottery, split_validation,
                              train_segment)
from prunekit.masks import effective_weight, named_parameters
from prunekit.training import TrainConfig, train


def tiny_config(**changes):
    base = dict(model="mnist1d_mlp", dataset="digits", model_options={"in_features": 64, "hidden": 16},
                train=TrainConfig(optimizer="adam", lr=3e-3, steps=40, batch_size=50), rounds=3, rate=0.2,
                validation=200, eval_every=10, seed=3)
    base.update(changes)
    return LotteryConfig(**base)


def tiny_data(n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 64, generator=g)
    return TensorDataset(x, (x[:, :3].sum(1) > 0).long())


def tiny_model(seed=0):
    torch.manual_seed(seed)
    from prunekit.models import mnist1d_mlp
    return mnist1d_mlp(num_classes=2, in_features=64, hidden=16)


def states_equal(a, b):
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


# Trainer --------------------------------------------------------------------------------

def test_segment_from_zero_is_train_bit_for_bit_with_masks():
    config = TrainConfig(optimizer="adam", lr=1e-2, steps=30, batch_size=32, weight_decay=1e-3, grad_clip=1.0)
    a, b = tiny_model(), tiny_model()
    prune(a, 0.6)
    prune(b, 0.6)
    train(a, tiny_data(), config, progress=False)
    train_segment(b, tiny_data(), config)
    assert states_equal(a.state_dict(), b.state_dict())
    assert get_masks(b) == get_masks(a)  # masks reinstalled after the fast path


def test_segment_from_k_continues_the_dense_data_order():
    # With stateless SGD, 0→k then k→T equals 0→T only if the second part sees batches k+1…T.
    config = TrainConfig(optimizer="sgd", momentum=0.0, lr=0.05, steps=25, batch_size=32)
    whole, parts = tiny_model(), tiny_model()
    train_segment(whole, tiny_data(), config)
    train_segment(parts, tiny_data(), TrainConfig(**{**config.__dict__, "steps": 9}))
    train_segment(parts, tiny_data(), config, start=9)
    assert states_equal(whole.state_dict(), parts.state_dict())
    other = tiny_model()
    train_segment(other, tiny_data(), TrainConfig(**{**config.__dict__, "seed": 1}))
    assert not states_equal(whole.state_dict(), other.state_dict())


def test_early_stopping_step_is_argmin_validation_loss():
    model = tiny_model()
    out = train_segment(model, tiny_data(), TrainConfig(steps=30, batch_size=32, lr=1e-2),
                        validation=tiny_data(100, seed=1), eval_every=7)
    steps = [e["step"] for e in out["log"]]
    assert steps == [7, 14, 21, 28, 30]
    assert out["es_val_loss"] == min(e["val_loss"] for e in out["log"])


# Masks ----------------------------------------------------------------------------------

def test_magnitude_masks_match_brute_force_and_only_shrink():
    torch.manual_seed(0)
    weights = {"a": torch.randn(10, 7), "b": torch.randn(5, 4)}
    current = MaskSet({"a": torch.rand(10, 7) > 0.3, "b": torch.rand(5, 4) > 0.3})
    kept = current.kept()
    new = MaskSet(magnitude_masks(weights, current, 0.25, "global"))
    assert new.is_subset_of(current) and new.kept() == kept - round(0.25 * kept)
    survivors = torch.cat([weights[n].abs()[current[n]] for n in weights])
    threshold = survivors.sort().values[round(0.25 * kept)]
    for n in weights:  # brute force: everything kept is ≥ the k-th smallest survivor
        assert bool((weights[n].abs()[new[n]] >= threshold).all())
    local = MaskSet(magnitude_masks(weights, current, 0.5, "local"))
    for n in weights:
        k = int(current[n].sum())
        assert int(local[n].sum()) == k - round(0.5 * k) and local.is_subset_of(current)


def test_random_masks_keep_counts_and_are_seeded():
    ref = MaskSet({"a": torch.rand(20, 5) > 0.7, "b": torch.rand(8) > 0.5})
    one = MaskSet(random_masks(ref, torch.Generator().manual_seed(1)))
    two = MaskSet(random_masks(ref, torch.Generator().manual_seed(1)))
    assert one == two and one != MaskSet(random_masks(ref, torch.Generator().manual_seed(2)))
    assert all(int(one[n].sum()) == int(ref[n].sum()) for n in ref)


# Experiment -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("lottery")
    config = tiny_config(keep_steps=(0, 10))
    return config, run_lottery(config, root, log=lambda *_: None)


def test_rounds_rows_and_masks_only_shrink(finished):
    config, run = finished
    rows = run.rows()
    assert [(r["round"], r["variant"]) for r in rows] == [(0, "dense")] + [
        (r, v) for r in (1, 2, 3) for v in ("ticket", "reinit", "random")]
    exp = imp.Experiment(config, run.path.parent, log=lambda *_: None)
    masks = [get_masks(exp.load_state(f"round{r}_ticket")) for r in (1, 2, 3)]
    assert all(b.is_subset_of(a) for a, b in zip(masks, masks[1:]))
    for r, m in enumerate(masks, start=1):
        assert [row["density"] for row in rows if row["round"] == r] == [m.density()] * 3
        random = get_masks(exp.load_state(f"round{r}_random"))
        assert all(int(random[n].sum()) == int(m[n].sum()) for n in m) and random != m
        assert get_masks(exp.load_state(f"round{r}_reinit")) == m
    assert masks[-1].density() == pytest.approx(0.8 ** 3, abs=0.01)


def test_ticket_is_rewound_bit_for_bit_and_retrains_to_the_saved_ticket(finished):
    config, run = finished
    exp = imp.Experiment(config, run.path.parent, log=lambda *_: None)
    init = run.load_checkpoint("init")
    assert states_equal(init, run.load_checkpoint("step0"))
    masks = get_masks(exp.load_state("round2_ticket"))
    model = rewind(exp.fresh(99), init, masks)  # a different init, overwritten by the rewind
    for name in masks:
        assert torch.equal(effective_weight(model, name), torch.where(masks[name], init[name], 0.0))
        assert torch.equal(named_parameters(model)[name], torch.where(masks[name], init[name], 0.0))
    exp._train(model, 0)  # the ticket's training, redone by hand: same data order, same result
    assert states_equal(model.state_dict(), run.load_checkpoint("round2_ticket"))


def test_same_seed_same_results_other_seed_differs(finished, tmp_path):
    config, run = finished
    again = run_lottery(config, tmp_path, log=lambda *_: None)
    assert again.path.name == run.path.name and again.path != run.path
    assert again.rows() == run.rows()
    assert states_equal(again.load_checkpoint("round3_ticket"), run.load_checkpoint("round3_ticket"))
    other = run_lottery(config.replace(seed=4, rounds=1), tmp_path, log=lambda *_: None)
    assert other.rows()[0]["accuracy"] != run.rows()[0]["accuracy"] or \
        not states_equal(other.load_checkpoint("dense"), run.load_checkpoint("dense"))


def test_killed_run_resumes_to_identical_results(finished, tmp_path, monkeypatch):
    config, run = finished
    calls = {"n": 0}
    real = imp.train_segment

    def dies_in_round_two(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:  # dense, 3 of round 1, ticket of round 2, then killed
            raise KeyboardInterrupt("simulated kill")
        return real(*args, **kwargs)

    monkeypatch.setattr(imp, "train_segment", dies_in_round_two)
    with pytest.raises(KeyboardInterrupt):
        run_lottery(config, tmp_path, log=lambda *_: None)
    partial = list((tmp_path).iterdir())[0]
    assert (partial / "round1.done").exists() and not (partial / "round2.done").exists()
    monkeypatch.setattr(imp, "train_segment", real)
    resumed = run_lottery(config, tmp_path, log=lambda *_: None)
    assert resumed.rows() == run.rows()
    for tag in ("dense", "round2_ticket", "round3_random", "round3_reinit"):
        assert states_equal(resumed.load_checkpoint(tag), run.load_checkpoint(tag))


def test_rewind_to_k_starts_from_the_dense_weights_at_k(tmp_path):
    config = tiny_config(rounds=1, rewind_step=10, controls=())
    run = run_lottery(config, tmp_path, log=lambda *_: None)
    exp = imp.Experiment(config, tmp_path, log=lambda *_: None)
    masks = get_masks(exp.load_state("round1_ticket"))
    model = rewind(exp.fresh(0), run.load_checkpoint("step10"), masks)
    assert not states_equal(run.load_checkpoint("step10"), run.load_checkpoint("init"))
    exp._train(model, 10)
    assert states_equal(model.state_dict(), run.load_checkpoint("round1_ticket"))
    assert [r["variant"] for r in run.rows()] == ["dense", "ticket"]


def test_config_and_split_reject_bad_input():
    with pytest.raises(PrunekitError):
        tiny_config(rate=1.0)
    with pytest.raises(PrunekitError):
        tiny_config(rewind_step=40)
    with pytest.raises(PrunekitError):
        tiny_config(controls=("nope",))
    with pytest.raises(PrunekitError):
        tiny_config(model="lenet")
    with pytest.raises(ValueError):
        split_validation(tiny_data(10), 10)


def test_augmentations():
    x = torch.arange(12.0).reshape(2, 6)
    shifted = Shift(2)(x, torch.Generator().manual_seed(0))
    for row, orig in zip(shifted, x):  # a circular shift of each row by some s in [−2, 2]
        assert any(torch.equal(row, orig.roll(s)) for s in range(-2, 3))
    img = torch.zeros(1, 1, 9, 9)
    img[0, 0, 4, :] = 1.0  # a horizontal bar through the centre
    turned = Rotate(90)(img.repeat(200, 1, 1, 1), torch.Generator().manual_seed(0))
    assert turned[:, 0, 4, 4].min() > 0.99  # the centre stays put
    assert Rotate(0)(img, torch.Generator()).allclose(img, atol=1e-6)
    assert make_augmentation(None) is None
    with pytest.raises(PrunekitError):
        make_augmentation("flip")


def test_cli_lottery_and_experiment_errors(tmp_path, capsys):
    from prunekit.cli import main
    code = main(["lottery", "--model", "mnist1d_mlp", "--dataset", "digits", "--rounds", "1", "--rate", "0.5",
                 "--steps", "20", "--batch-size", "50", "--validation", "200", "--eval-every", "10",
                 "--controls", "reinit", "--output-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "in_features=64" in err  # digits are 8×8; the default MLP expects 40 inputs
    assert not any(tmp_path.iterdir())  # no run folder left behind
    code = main(["experiment", "nope", "--output-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "Unknown experiment" in err


def test_cli_lottery_runs_and_resumes(tmp_path, capsys):
    from prunekit.cli import main
    argv = ["lottery", "--model", "mnist1d_mlp", "--dataset", "digits", "--model-option", "in_features=64",
            "--model-option", "hidden=8", "--rounds", "2", "--rate", "0.5", "--steps", "20", "--batch-size", "50",
            "--validation", "200", "--eval-every", "10", "--controls", "random", "--output-dir", str(tmp_path)]
    assert main(argv) == 0
    first = capsys.readouterr().out
    folder = next(tmp_path.iterdir())
    assert (folder / "table.md").is_file() and (folder / "plots" / "accuracy_vs_density.png").is_file()
    import json
    rows = json.loads((folder / "metrics.json").read_text())
    assert [(r["round"], r["variant"]) for r in rows] == [(0, "dense"), (1, "ticket"), (1, "random"),
                                                          (2, "ticket"), (2, "random")]
    assert f"{rows[-1]['accuracy']:.4g}" in first
    assert main(argv) == 0  # a rerun finds the finished folder, says so, and prints the same table
    again = capsys.readouterr().out
    assert again.startswith("resuming ") and again.split("\n", 1)[1] == first


def test_cli_lottery_takes_the_papers_init_and_output_rate(tmp_path):
    from prunekit.cli import main
    argv = ["lottery", "--model", "mnist1d_mlp", "--dataset", "digits", "--model-option", "in_features=64",
            "--model-option", "hidden=8", "--rounds", "1", "--steps", "10", "--batch-size", "50", "--validation",
            "200", "--eval-every", "10", "--controls", "--scope", "local", "--output-rate", "0.1", "--init",
            "glorot_normal", "--output-dir", str(tmp_path)]
    assert main(argv) == 0
    import json
    settings = json.loads((next(tmp_path.iterdir()) / "settings.json").read_text())
    assert settings["init"] == "glorot_normal" and settings["output_rate"] == 0.1 and settings["scope"] == "local"


@pytest.mark.slow
def test_all_experiments_run_at_quick_scale(tmp_path):
    from prunekit.experiments import EXPERIMENTS, run_experiment
    for name in EXPERIMENTS:
        lines = []
        text = run_experiment(name, tmp_path, seeds=(0, 1, 2), scale="quick", log=lines.append)
        assert "±" in text
        counts = [re.search(r"\] (\d+)/(\d+) ", line) for line in lines if line.startswith(f"[experiment {name}]")]
        done = [(int(m[1]), int(m[2])) for m in counts if m]
        assert done and [d for d, _ in done] == list(range(1, len(done) + 1)) and done[-1][0] == done[-1][1], name
    folders = {p.name for p in tmp_path.iterdir()}
    assert {"a_tickets", "b_rewind", "c_augment", "d_dropout", "e_landscape", "runs"} <= folders
    assert all(any(p.glob("**/plot*.png")) for p in tmp_path.iterdir() if p.name != "runs")
