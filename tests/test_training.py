"""The training loop on every kind of data a user has: checked against hand-written loops."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

import prunekit as pk
from prunekit.masks import effective_weight
from prunekit.training import TrainConfig, accuracy, evaluate, finetune, train

pytestmark = pytest.mark.usefixtures("one_thread")

SGD = TrainConfig(optimizer="sgd", momentum=0.0, lr=0.1, batch_size=16)


def toy_data(n=100, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return TensorDataset(x, (x[:, 0] + x[:, 1] > 0).long())


def toy_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))


def by_hand(model, batch_list, lr, passes):
    """Plain SGD over the batches in order, `passes` times: the truth for the loop."""
    for _ in range(passes):
        for x, y in batch_list:
            model.zero_grad()
            F.cross_entropy(model(x), y).backward()
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(p.grad, alpha=-lr)


def same_weights(a, b):
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_list_of_batches_for_epochs_is_plain_sgd_over_them():
    data = toy_data()
    batch_list = list(zip(data.tensors[0].split(16), data.tensors[1].split(16)))  # last batch of 4
    a, b = toy_model(), toy_model()
    out = train(a, batch_list, SGD, epochs=3, progress=False)
    by_hand(b, batch_list, SGD.lr, 3)
    assert same_weights(a, b)
    assert out["steps"] == 3 * len(batch_list) and out["epochs"] == 3


def test_dataloader_without_shuffle_equals_the_same_list():
    data = toy_data()
    loader = DataLoader(data, batch_size=16, shuffle=False)
    a, b = toy_model(), toy_model()
    train(a, loader, SGD, epochs=2, progress=False)
    train(b, list(loader), SGD, epochs=2, progress=False)
    assert same_weights(a, b)


def test_steps_run_past_the_end_of_a_loader_into_the_next_pass():
    batch_list = [(torch.randn(4, 8), torch.randint(0, 2, (4,))) for _ in range(3)]
    seen = []
    def loss(out, y):
        seen.append(y)
        return F.cross_entropy(out, y)
    train(toy_model(), batch_list, SGD, steps=7, loss_fn=loss, progress=False)
    expected = [batch_list[i % 3][1] for i in range(7)]
    assert len(seen) == 7 and all(torch.equal(s, e) for s, e in zip(seen, expected))


def test_tensor_dataset_epochs_count_whole_batches():
    steps = []
    out = train(toy_model(), toy_data(100), SGD, epochs=2, on_step=lambda s, m: steps.append(s), progress=False)
    assert steps == list(range(1, 2 * (100 // 16) + 1)) and out["epochs"] == 2


class Squares(Dataset):
    """A map-style dataset that is not a TensorDataset: items are collated by the loop."""

    def __init__(self, data):
        self.x, self.y = data.tensors

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def test_any_map_style_dataset_draws_the_same_batches_as_a_tensor_dataset():
    data = toy_data()
    a, b = toy_model(), toy_model()
    train(a, data, SGD, steps=20, progress=False)
    train(b, Squares(data), SGD, steps=20, progress=False)
    assert same_weights(a, b)


def test_masks_hold_through_a_dataloader_with_momentum_and_weight_decay():
    model = toy_model()
    pk.prune(model, 0.8)
    masks = pk.get_masks(model)
    before = {name: effective_weight(model, name).detach().clone() for name in masks}
    config = TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-2)
    train(model, DataLoader(toy_data(), batch_size=10, shuffle=True), config, epochs=2, progress=False)
    for name, mask in masks.items():
        w = effective_weight(model, name)
        assert torch.all(w[~mask] == 0)
        assert torch.all(w[mask] != before[name][mask])  # the kept weights did train
    assert pk.get_masks(model) == masks


def test_metric_is_reported_for_training_and_named_after_its_function():
    data = toy_data()
    out = train(toy_model(), data, SGD, steps=5, metric=accuracy, progress=False)
    assert 0 <= out["train_accuracy"] <= 1
    def error_rate(outputs, targets):
        return 1 - accuracy(outputs, targets)
    model = toy_model()
    result = evaluate(model, data, metric=error_rate)
    assert set(result) == {"loss", "error_rate"}
    assert result["error_rate"] == pytest.approx(1 - evaluate(model, data)["accuracy"])
    assert set(evaluate(model, data, metric=lambda o, t: accuracy(o, t))) == {"loss", "metric"}


def test_evaluate_weights_uneven_batches_by_their_size():
    data = toy_data(101)
    model = toy_model()
    x, y = data.tensors
    with torch.no_grad():
        out = model(x)
    truth = {"loss": F.cross_entropy(out, y).item(), "accuracy": (out.argmax(1) == y).float().mean().item()}
    for source in (data, DataLoader(data, batch_size=10), Squares(data)):
        result = evaluate(model, source, batch_size=7)
        assert result == pytest.approx(truth, rel=1e-6)


def test_custom_loss_and_dict_inputs():
    class Named(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(8, 1)

        def forward(self, features):
            return self.linear(features).squeeze(1)

    x = torch.randn(32, 8)
    batch_list = [({"features": x}, x.sum(1))]
    model = Named()
    before = evaluate(model, batch_list, loss_fn=F.mse_loss, metric=None)["loss"]
    train(model, batch_list, SGD, steps=50, loss_fn=F.mse_loss, progress=False)
    assert evaluate(model, batch_list, loss_fn=F.mse_loss, metric=None)["loss"] < 0.1 * before


def test_finetune_is_training_at_a_fraction_of_the_learning_rate():
    data = toy_data()
    a, b = toy_model(), toy_model()
    finetune(a, data, SGD, lr_factor=0.5, steps=10, progress=False)
    train(b, data, TrainConfig(**{**SGD.__dict__, "lr": 0.05}), steps=10, progress=False)
    assert same_weights(a, b)
    c = toy_model()  # no config: a tenth of the default learning rate, for whole epochs
    assert finetune(c, list(zip(*[t.split(20) for t in data.tensors])), epochs=2, progress=False)["steps"] == 10


def test_device_argument_moves_the_model_and_batches_stay_put_on_cpu():
    model = toy_model()
    out = train(model, toy_data(), SGD, steps=3, device="cpu", progress=False)
    assert out["steps"] == 3 and next(model.parameters()).device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_masks_hold_on_cuda_with_cpu_batches():
    model = toy_model()
    pk.prune(model, 0.8)
    masks = pk.get_masks(model)
    train(model, DataLoader(toy_data(), batch_size=10), SGD, epochs=2, device="cuda", progress=False)
    assert next(model.parameters()).is_cuda
    for name, mask in masks.items():
        assert torch.all(effective_weight(model, name)[~mask.cuda()] == 0)
    assert evaluate(model, toy_data())["accuracy"] > 0.5


class Stream(IterableDataset):
    def __iter__(self):
        yield from zip(*toy_data().tensors)


@pytest.mark.parametrize("data, steps, epochs, message", [
    (pk.data.Dataset("toy", toy_data(), toy_data(), 2, (8,)), 1, None, "data.train"),
    (Stream(), 1, None, "DataLoader"),
    (torch.randn(4, 8), 1, None, "TensorDataset"),
    ((b for b in [(torch.randn(4, 8), torch.zeros(4, dtype=torch.long))]), None, 1, "steps instead"),
    ([(torch.randn(4, 8),)], 1, None, "pair"),
    (toy_data(), 1, 1, "not both"),
    (toy_data(), -1, None, "steps must be"),
])
def test_bad_input_says_what_to_do_and_leaves_the_model_untouched(data, steps, epochs, message):
    model = toy_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(pk.PrunekitError, match=message):
        train(model, data, SGD, steps=steps, epochs=epochs, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_an_endless_generator_serves_steps_and_an_exhausted_one_is_explained():
    def endless():
        while True:
            yield torch.randn(4, 8), torch.zeros(4, dtype=torch.long)
    assert train(toy_model(), endless(), SGD, steps=5, progress=False)["steps"] == 5
    once = (b for b in [(torch.randn(4, 8), torch.zeros(4, dtype=torch.long))])
    with pytest.raises(pk.PrunekitError, match="only once"):
        train(toy_model(), once, SGD, steps=2, progress=False)


def test_fastest_threads_times_every_candidate_on_a_copy_and_restores_the_setting():
    from prunekit.training import fastest_threads

    model = toy_model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    threads_before = torch.get_num_threads()
    best, times = fastest_threads(model, toy_data(), SGD, candidates=[1, 2], steps=1, rounds=1)
    assert set(times) == {1, 2} and best == min(times, key=times.get) and all(t > 0 for t in times.values())
    assert torch.get_num_threads() == threads_before
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    with pytest.raises(pk.PrunekitError, match="thread counts"):
        fastest_threads(model, toy_data(), candidates=[0])
