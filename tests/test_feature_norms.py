"""A width pruned through LayerNorm / RMSNorm: the masked norm normalises over the kept features
only, checked against the formulas written out here, and masked == compacted on whole models."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunekit as pk
from prunekit.compaction import plain_copy, relative_error
from prunekit.errors import MaskError
from prunekit.masks import load_masked_state_dict
from prunekit.structured import group_masks
from models_zoo import transformer


def _mask_weight(norm: nn.Module, keep: torch.Tensor) -> None:
    pk.apply_masks(norm, {"weight": keep})


def _keep(n: int, removed) -> torch.Tensor:
    keep = torch.ones(n, dtype=torch.bool)
    keep[list(removed)] = False
    return keep


def test_layer_norm_statistics_come_from_the_kept_features_only():
    torch.manual_seed(0)
    norm = nn.LayerNorm(6)
    nn.init.uniform_(norm.weight, 0.5, 1.5), nn.init.uniform_(norm.bias, -0.5, 0.5)
    x = torch.randn(3, 4, 6)
    keep = _keep(6, [1, 4])
    expected = torch.zeros_like(x)
    kept = x[..., keep]
    mean = kept.mean(-1, keepdim=True)
    var = ((kept - mean) ** 2).mean(-1, keepdim=True)  # biased, as LayerNorm's
    expected[..., keep] = (kept - mean) / torch.sqrt(var + norm.eps) * norm.weight[keep] + norm.bias[keep]
    _mask_weight(norm, keep)
    assert torch.allclose(norm(x), expected, atol=1e-6)


class PlusOneRMSNorm(nn.Module):
    """An RMSNorm of another library, with a (1 + w) scale and a float32 upcast (Gemma's form)."""

    def __init__(self, n, eps=1e-6):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.randn(n) * 0.3), eps

    def forward(self, hidden_states):
        h = hidden_states.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return (h * (1.0 + self.weight)).to(hidden_states.dtype)


@pytest.mark.parametrize("plus_one", [False, True])
def test_rms_norm_statistic_comes_from_the_kept_features_only(plus_one):
    torch.manual_seed(1)
    norm = PlusOneRMSNorm(8) if plus_one else nn.RMSNorm(8, eps=1e-6)
    if not plus_one:
        nn.init.uniform_(norm.weight, 0.5, 1.5)
    keep = _keep(8, [0, 3, 7])
    x = torch.randn(2, 5, 8)
    x[..., ~keep] = 0.0  # a removed feature of a masked residual stream is zero
    scale = (1.0 + norm.weight) if plus_one else norm.weight
    kept = x[..., keep]
    expected = torch.zeros_like(x)
    expected[..., keep] = kept / torch.sqrt(kept.pow(2).mean(-1, keepdim=True) + 1e-6) * scale[keep].detach()
    _mask_weight(norm, keep)
    out = norm(x)
    assert torch.allclose(out[..., keep], expected[..., keep], atol=1e-6)
    assert not plus_one or torch.equal(out[..., ~keep], torch.zeros_like(out[..., ~keep]))


def _randomised(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.5, 0.5)
    return model.eval()


def _prune_width(model, x, fraction=0.5, name="embed:out"):
    graph = pk.build_graph(model, x)
    group = graph[name]
    keep = {name: torch.arange(group.size) % 2 == 1 if fraction == 0.5 else torch.rand(group.size) > fraction}
    pk.apply_masks(model, group_masks(graph, keep))
    return graph


def test_transformer_width_masked_equals_compacted_and_dense_copies_are_refused():
    torch.manual_seed(2)
    model, x = transformer()
    graph = _prune_width(_randomised(model), x)
    small, _ = pk.compact(model, x, graph=graph)
    with torch.no_grad():
        assert relative_error(model(x), small(x)) <= 1e-6
    assert small.norm.normalized_shape == (8,) and small.blocks[0].attn.q.in_features == 8
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(MaskError, match="compact"):
        pk.remove_masks(model)
    with pytest.raises(MaskError, match="norm"):
        plain_copy(model)  # what surgery (to_sparse, low_rank …) starts from
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing changed


def test_masked_norm_survives_deepcopy_and_training_and_goes_with_its_last_mask():
    torch.manual_seed(3)
    model, x = transformer()
    _prune_width(_randomised(model), x)
    replica = copy.deepcopy(model)
    with torch.no_grad():
        assert torch.equal(model(x), replica(x))
    optimizer = torch.optim.SGD(replica.parameters(), lr=0.1)
    F.cross_entropy(replica(x), torch.tensor([0, 1])).backward()
    optimizer.step()
    removed = ~pk.get_masks(replica)["norm.weight"]
    assert not replica.norm.weight[removed].any()
    small, _ = pk.compact(replica, x)  # still exact after a training step
    with torch.no_grad():
        assert relative_error(replica(x), small(x)) <= 1e-6
    norm = nn.LayerNorm(4)
    _mask_weight(norm, torch.ones(4, dtype=torch.bool))
    pk.remove_masks(norm)  # nothing removed: baking is allowed, and the plain class is back
    assert type(norm) is nn.LayerNorm


class FunctionalNorm(nn.Module):
    """F.layer_norm written in the forward: no module to make exact, so its features stay blocked."""

    def __init__(self):
        super().__init__()
        self.fc1, self.scale, self.fc2 = nn.Linear(4, 6), nn.Parameter(torch.ones(6)), nn.Linear(6, 2)

    def forward(self, x):
        return self.fc2(F.layer_norm(self.fc1(x), (6,), self.scale))


def test_functional_layer_norm_still_blocks_its_features():
    graph = pk.build_graph(FunctionalNorm(), torch.randn(3, 4))
    group = graph["fc1:out"]
    assert not group.prunable and "layer_norm" in group.reason


class LayerNorm2d(nn.LayerNorm):
    """Channels-first LayerNorm as torchvision's and timm's ConvNeXt write it."""

    def forward(self, x):
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias,
                            self.eps).permute(0, 3, 1, 2)


class ConvNeXtish(nn.Module):
    def __init__(self, dim=8):
        super().__init__()
        self.stem, self.stem_norm = nn.Conv2d(3, dim, 2, 2), LayerNorm2d(dim)
        self.dw, self.norm = nn.Conv2d(dim, dim, 3, padding=1, groups=dim), nn.LayerNorm(dim)
        self.up, self.down = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, x):
        x = self.stem_norm(self.stem(x))
        y = self.norm(self.dw(x).permute(0, 2, 3, 1))
        x = x + self.down(F.gelu(self.up(y))).permute(0, 3, 1, 2)
        return self.head(x.mean((2, 3)))


def test_channels_first_layer_norm_width_is_exact():
    torch.manual_seed(4)
    model, x = _randomised(ConvNeXtish()), torch.randn(2, 3, 8, 8)
    graph = pk.build_graph(model, x)
    assert graph["stem:out"].prunable
    pk.prune_structured(model, 0.5, x, graph=graph)
    small, _ = pk.compact(model, x, graph=graph)
    with torch.no_grad():
        assert relative_error(model(x), small(x)) <= 1e-6
    assert small.stem.out_channels == small.stem_norm.normalized_shape[0] < 8


class TimmLayerNorm(nn.LayerNorm):
    """timm's LayerNorm (timm.layers.norm): its own forward, F.layer_norm over the last axis."""

    def forward(self, x):
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


TimmLayerNorm.__name__ = TimmLayerNorm.__qualname__ = "LayerNorm"


class Residual(nn.Module):
    def __init__(self, norm: type, dim=8):
        super().__init__()
        self.embed, self.norm, self.mlp = nn.Linear(5, dim), norm(dim), nn.Linear(dim, dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, x):
        x = self.embed(x)
        return self.head(x + self.mlp(self.norm(x)))


@pytest.mark.parametrize("library", ["timm.layers.norm", "somewhere.else"])
def test_timm_layer_norm_is_known_and_exact(library, monkeypatch):
    monkeypatch.setattr(TimmLayerNorm, "__module__", library)
    torch.manual_seed(5)
    model, x = _randomised(Residual(TimmLayerNorm)), torch.randn(4, 5)
    graph = pk.build_graph(model, x)
    if library != "timm.layers.norm":  # a LayerNorm subclass of unknown origin: its forward is not trusted
        assert not graph["embed:out"].prunable and "layer_norm" in graph["embed:out"].reason
        return
    assert graph["embed:out"].prunable
    pk.prune_structured(model, 0.5, x, graph=graph)
    small, _ = pk.compact(model, x, graph=graph)
    with torch.no_grad():
        assert relative_error(model(x), small(x)) <= 1e-6
    assert small.norm.normalized_shape[0] == small.embed.out_features < 8


def test_a_masked_checkpoint_brings_the_exact_norms_back():
    # the transformer's position table `pos` is a parameter of the root module: its mask key has no module prefix
    torch.manual_seed(5)
    model, x = transformer()
    _prune_width(_randomised(model), x)
    fresh, _ = transformer()
    load_masked_state_dict(fresh, model.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), model(x))
    assert pk.get_masks(fresh) == pk.get_masks(model)
