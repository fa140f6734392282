"""Every registered criterion: scoring leaves the model as it was, and data-needing criteria say so."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunekit.criteria import CRITERIA, get_criterion
from prunekit.criteria.heads import attention_parameters
from prunekit.errors import PrunekitError
from prunekit.masks import apply_masks, resolve_parameters
from prunekit.prune import prune


pytestmark = pytest.mark.usefixtures("one_thread")


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(4 * 16, 3)

    def forward(self, x):
        return self.fc(self.drop(self.bn(self.conv(x)).relu()).flatten(1))


class Attn(nn.Module):
    def __init__(self):
        super().__init__()
        self.mha = nn.MultiheadAttention(8, 2, batch_first=True)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.mha(x, x, x, need_weights=False)[0].mean(1))


def _tiny_bert_classifier():
    transformers = pytest.importorskip("transformers")

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = transformers.BertModel(transformers.BertConfig(
                vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                max_position_embeddings=16, hidden_dropout_prob=0.5, attention_probs_dropout_prob=0.5))
            self.fc = nn.Linear(8, 3)

        def forward(self, ids):
            return self.fc(self.bert(input_ids=ids).last_hidden_state.mean(1))

    return Classifier()


def _setup(name):
    torch.manual_seed(0)
    if name in ("head_taylor", "head_ablation"):
        from prunekit.criteria.attention_sites import find_attention_sites
        model = _tiny_bert_classifier()
        names = [n for site in find_attention_sites(model) for n in site.head_params]
        return model, names, [(torch.randint(0, 20, (4, 5)), torch.randint(0, 3, (4,)))]
    if name == "heads":
        model = Attn()
        return model, attention_parameters(model), [(torch.randn(4, 5, 8), torch.randint(0, 3, (4,)))]
    model = Small()
    params = ["conv.weight"] if name in ("bn_scale",) else ["conv.weight", "fc.weight"]
    return model, params, [(torch.randn(4, 1, 4, 4), torch.randint(0, 3, (4,))) for _ in range(2)]


def _snapshot(model):
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "modes": [m.training for m in model.modules()],
        "grads": {n: (None if p.grad is None else p.grad.clone()) for n, p in model.named_parameters()},
        "requires": {n: p.requires_grad for n, p in model.named_parameters()},
        "hooks": [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in model.modules()],
    }


def _same(a, b):
    assert a["modes"] == b["modes"] and a["requires"] == b["requires"] and a["hooks"] == b["hooks"]
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        assert torch.equal(a["state"][k], b["state"][k]), k
    for n in a["grads"]:
        x, y = a["grads"][n], b["grads"][n]
        assert (x is None and y is None) or torch.equal(x, y), n


@pytest.mark.parametrize("name", sorted(CRITERIA))
@pytest.mark.parametrize("train_mode", [True, False])
def test_scoring_is_pure_and_shapes_match(name, train_mode):
    model, names, batches = _setup(name)
    apply_masks(model, {names[0]: torch.rand_like(resolve_parameters(model)[names[0]]) > 0.3})
    model.train(train_mode)
    first = next(iter(model.parameters()))
    first.grad = torch.full_like(first, 7.0)  # a gradient the user had accumulated
    list(model.parameters())[-1].requires_grad_(False)  # and a frozen parameter
    before = _snapshot(model)
    params = resolve_parameters(model, names)
    scores = get_criterion(name).scores(model, params, batches=batches, loss_fn=F.cross_entropy)
    _same(before, _snapshot(model))
    assert set(scores) == set(params)
    for n, p in params.items():
        assert scores[n].shape == p.shape and not torch.isnan(scores[n]).any() and not scores[n].requires_grad


@pytest.mark.parametrize("name", sorted(CRITERIA))
def test_signed_scores_are_the_scores_up_to_sign(name):
    """Norm aggregations read signed_scores (a magnitude skips its abs pass); |signed| must be the scores."""
    model, names, batches = _setup(name)
    apply_masks(model, {names[0]: torch.rand_like(resolve_parameters(model)[names[0]]) > 0.3})
    params = resolve_parameters(model, names)
    before = _snapshot(model)
    criterion = get_criterion(name)
    signed = criterion.signed_scores(model, params, batches=batches, loss_fn=F.cross_entropy)
    _same(before, _snapshot(model))
    scores = criterion.scores(model, params, batches=batches, loss_fn=F.cross_entropy)
    for n in params:
        assert torch.allclose(signed[n].abs(), scores[n].abs())
    if name == "magnitude":  # the sign is kept (that is the point), the masked entries are zero
        assert (signed["conv.weight"] < 0).any()


@pytest.mark.parametrize("name", sorted(n for n, c in CRITERIA.items() if c.needs_data))
def test_data_needing_criteria_raise_a_clear_error_without_data(name):
    model, names, batches = _setup(name)
    before = _snapshot(model)
    with pytest.raises(PrunekitError, match="calibration data"):
        prune(model, 0.5, criterion=name, params=names)
    _same(before, _snapshot(model))


@pytest.mark.parametrize("name", ["snip", "taylor", "grasp", "obd"])
def test_loss_needing_criteria_raise_a_clear_error_without_a_loss(name):
    model, names, batches = _setup(name)
    with pytest.raises(PrunekitError, match="needs a loss"):
        prune(model, 0.5, criterion=name, params=names, batches=batches)


@pytest.mark.parametrize("name", sorted(CRITERIA))
def test_every_criterion_prunes_through_prunekit_prune(name):
    model, names, batches = _setup(name)
    masks = prune(model, 0.5, criterion=name, params=names, batches=batches, loss_fn=F.cross_entropy, scope="local")
    assert masks.sparsity() == pytest.approx(0.5, abs=0.01)


def test_random_is_seeded():
    model, names, _ = _setup("random")
    params = resolve_parameters(model, names)
    a = get_criterion("random", seed=3).scores(model, params)
    b = get_criterion("random", seed=3).scores(model, params)
    c = get_criterion("random", seed=4).scores(model, params)
    assert all(torch.equal(a[n], b[n]) for n in a) and not all(torch.equal(a[n], c[n]) for n in a)


@pytest.mark.parametrize("name", sorted(n for n, c in CRITERIA.items() if c.unit_dim is not None))
def test_per_channel_criteria_are_constant_along_their_unit_slices(name):
    model, names, batches = _setup(name)
    crit = get_criterion(name)
    params = resolve_parameters(model, names)
    scores = crit.scores(model, params, batches=batches, loss_fn=F.cross_entropy)
    for n, s in scores.items():
        moved = s.movedim(crit.unit_dim, 0).reshape(s.shape[crit.unit_dim], -1)
        assert torch.equal(moved, moved[:, :1].expand_as(moved)), n


def test_channel_criteria_drive_granular_channel_pruning():
    """Out-channel pruning by APoZ removes exactly the channels with the most zeros."""
    from prunekit.prune import prune_granular
    model, _, batches = _setup("apoz")
    with torch.no_grad():
        model.bn.bias.copy_(torch.tensor([0.5, -3.0, 0.0, -1.0]))  # channel 1, then 3: mostly zero after ReLU
    apoz = get_criterion("apoz").zero_fractions(model, ["bn"], batches)["bn"]
    masks = prune_granular(model, 0.5, "out_channel", criterion="apoz", params=["conv.weight"], batches=batches)
    kept = masks["conv.weight"].flatten(1).all(1)
    assert set((~kept).nonzero().flatten().tolist()) == set(torch.argsort(apoz, descending=True)[:2].tolist())
