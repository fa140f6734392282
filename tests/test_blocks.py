"""Whole residual blocks: candidates, scores, masks that silence a branch, removal."""


import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit import cnn_models
from prunekit.prune import prune_blocks
from prunekit.blocks import (ZeroBranch, block_scores, find_residual_blocks, predicted_params,
                             remove_blocks)
from prunekit.compaction import relative_error

import models_zoo as zoo

pytestmark = pytest.mark.usefixtures("one_thread")


def _randomise_norms(model, seed=0):
    """Non-trivial BN scales, shifts and statistics, so a masked conv alone would not silence a branch."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen))
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return model


def resnet_small():
    torch.manual_seed(0)  # two blocks per stage: an identity block after every projection block
    return _randomise_norms(cnn_models.ResNet((2, 2, 1), (8, 16, 16), 10, stem="cifar")), torch.randn(2, 3, 16, 16)


def resnet8():
    torch.manual_seed(0)  # one block per stage: only the first stage's block keeps the identity
    return _randomise_norms(cnn_models.resnet8(width=8)), torch.randn(2, 3, 16, 16)


def mobilenet_small():
    """MobileNetV2's own blocks (cnn_models.InvertedResidual), fewer of them: the tests run fast."""
    torch.manual_seed(0)
    ir = cnn_models.InvertedResidual
    model = nn.Sequential()
    model.features = nn.Sequential(cnn_models._conv_bn(3, 8, 3), ir(8, 8, 1, 1), ir(8, 8, 1, 2), ir(8, 12, 2, 2),
                                   ir(12, 12, 1, 2), ir(12, 12, 1, 3), ir(12, 12, 1, 2), ir(12, 16, 1, 2))
    model.pool, model.flat, model.fc = nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)
    return _randomise_norms(model), torch.randn(2, 3, 8, 8)


def test_candidates_on_the_full_mobilenetv2():
    torch.manual_seed(0)
    model, x = cnn_models.mobilenetv2(10, width=0.25, stem_stride=1), torch.randn(1, 3, 8, 8)
    blocks = find_residual_blocks(model, x)
    # 10 repeated blocks, plus the first one, whose 8 → 8 channels match at width 0.25
    assert [b.name for b in blocks] == expected_branches(model) and len(blocks) == 11
    assert all(b.prunable and b.whole for b in blocks)


def zoo_mobilenet():
    torch.manual_seed(0)
    model, x = zoo.mobilenet_v2()
    return _randomise_norms(model), x


def expected_branches(model):
    """Brute force from the architecture: the branch of every block whose shortcut is the identity."""
    found = []
    for name, m in model.named_modules():
        if isinstance(m, cnn_models.BasicBlock) and isinstance(m.shortcut, nn.Identity):
            found.append(f"{name}.body")
        elif isinstance(m, cnn_models.InvertedResidual) and m.use_shortcut:
            found.append(f"{name}.body")
        elif isinstance(m, zoo.InvertedResidual) and m.use_residual:
            found.append(f"{name}.block")
    return found


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same_state(model, state):
    now = model.state_dict()
    return set(now) == set(state) and all(torch.equal(now[k], state[k]) for k in state)


@pytest.mark.parametrize("build", [resnet8, resnet_small, mobilenet_small, zoo_mobilenet])
def test_candidates_are_exactly_the_identity_shortcut_branches(build):
    model, x = build()
    model.train()
    state = _state(model)
    blocks = find_residual_blocks(model, x)
    assert [b.name for b in blocks] == expected_branches(model) and blocks
    assert all(b.prunable for b in blocks)
    # MobileNetV2 blocks are x + f(x) exactly (parent → Identity); BasicBlock applies a ReLU after the add
    whole = not any(isinstance(m, cnn_models.BasicBlock) for m in model.modules())
    assert all(b.whole == whole for b in blocks)
    # pure: weights, statistics, train flags and hooks as they were
    assert _same_state(model, state) and all(m.training for m in model.modules())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("build", [zoo.resnet_bottleneck, zoo.densenet, zoo.fused_qkv, zoo.mha_model,
                                   zoo.assorted, zoo.torch_encoder])
def test_no_candidate_where_no_module_is_added_to_its_own_input(build):
    # bottleneck and fused_qkv: the branch is written inline (no single module computes f);
    # mha_model: nn.MultiheadAttention returns a tuple; torch_encoder: PyTorch's fused layer
    model, x = build()
    assert find_residual_blocks(model, x) == []


class _Residual(nn.Module):
    def __init__(self, body, mode="plain"):
        super().__init__()
        self.body, self.mode = body, mode
        self.other = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        if self.mode == "plain":
            return x + self.body(x)
        if self.mode == "scaled":  # the shortcut is 0.5·x, not x
            return 0.5 * x + self.body(x)
        if self.mode == "reused":  # f(x) also feeds another layer
            y = self.body(x)
            return x + y + self.other(y)
        if self.mode == "broadcast":  # f(x) is [B, 1, H, W]: not the same shape as x
            return x + self.body(x)[:, :1]
        raise AssertionError


def _net(body, mode="plain"):
    return nn.Sequential(nn.Conv2d(3, 4, 1), _Residual(body, mode), nn.Conv2d(4, 2, 1))


def test_rules_for_what_is_a_removable_branch():
    x = torch.randn(2, 3, 5, 5)
    conv_bn = lambda: nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4))  # noqa: E731
    (b,) = find_residual_blocks(_net(conv_bn()), x)
    assert (b.name, b.parent, b.prunable) == ("1.body", "1", True)
    assert not b.whole  # the parent owns a parameter outside the branch (self.other)
    assert find_residual_blocks(_net(conv_bn(), "scaled"), x) == []
    assert find_residual_blocks(_net(conv_bn(), "reused"), x) == []
    # the body changes its input in place, so the shortcut carries relu(x), not the body's input x;
    # the conv after the ReLU is what is added to its own (rectified) input
    blocks = find_residual_blocks(_net(nn.Sequential(nn.ReLU(inplace=True), nn.Conv2d(4, 4, 1))), x)
    assert [(b.name, b.whole) for b in blocks] == [("1.body.1", False)]
    # masks cannot make sigmoid(·) zero, nor a parameter-free branch
    (b,) = find_residual_blocks(_net(nn.Sequential(nn.Conv2d(4, 4, 1), nn.Sigmoid())), x)
    assert not b.prunable and "Sigmoid" in b.reason
    (b,) = find_residual_blocks(_net(nn.Tanh()), x)
    assert not b.prunable and "no parameters" in b.reason
    with pytest.raises(pk.PrunekitError, match="No residual block"):
        prune_blocks(_net(nn.Tanh()), 1, x)


@pytest.mark.parametrize("build", [resnet_small, mobilenet_small])
def test_masked_branch_output_is_exactly_zero_in_eval_and_train_mode(build):
    model, x = build()
    removed = prune_blocks(model, 1.0, x)
    assert removed == expected_branches(model)
    outputs = {}
    hooks = [model.get_submodule(n).register_forward_hook(
        lambda m, a, out, n=n: outputs.__setitem__(n, out.detach().clone())) for n in removed]
    for train in (False, True):
        model.train(train)
        outputs.clear()
        with torch.no_grad():
            model(x)
        assert set(outputs) == set(removed)
        assert all(torch.equal(out, torch.zeros_like(out)) for out in outputs.values())
    for h in hooks:
        h.remove()
    # what the BN masks are for: with only the conv weights zero, each branch would output its BN shift
    fresh, _ = build()
    with torch.no_grad():
        for n in removed:
            for m in fresh.get_submodule(n).modules():
                if isinstance(m, nn.Conv2d):
                    m.weight.zero_()
    fresh.eval()
    y = fresh.get_submodule(removed[0])(torch.zeros(1, fresh.get_submodule(removed[0] + ".0.0").in_channels, 4, 4))
    assert y.abs().max() > 0


@pytest.mark.parametrize("build,amount", [(resnet8, 1.0), (resnet_small, 0.5), (mobilenet_small, 0.5), (mobilenet_small, 3),
                                          (zoo_mobilenet, 1)])
def test_removed_blocks_give_the_masked_outputs_and_predicted_size(build, amount):
    model, x = build()
    candidates = expected_branches(model)
    removed = prune_blocks(model, amount, x)
    n = amount if isinstance(amount, int) else round(amount * len(candidates))
    assert len(removed) == n and set(removed) <= set(candidates)
    dense = sum(p.numel() for p in model.parameters())
    gone = sum(p.numel() for name in removed for p in model.get_submodule(name).parameters())
    small = remove_blocks(model, x)
    assert sum(p.numel() for p in small.parameters()) == predicted_params(model, x) == dense - gone
    names = dict(small.named_modules())
    for name in removed:
        parent = name.rpartition(".")[0]
        assert isinstance(names.get(name), ZeroBranch) or isinstance(names[parent], nn.Identity)
    for train in (False, True):  # train mode: batch statistics, the removed BNs still output 0
        model.train(train), small.train(train)
        with torch.no_grad():
            x2 = torch.randn(3, *x.shape[1:])
            torch.manual_seed(1)  # the same dropout draws in both
            y_masked = model(x2)
            torch.manual_seed(1)
            assert relative_error(y_masked, small(x2)) <= 1e-5
    assert pk.get_masks(model)  # the original keeps its masks
    assert not any(hasattr(m, "parametrizations") for m in small.modules())


def test_blocks_go_in_order_of_relative_branch_norm():
    model, x = mobilenet_small()
    batches = [x, torch.randn(3, 3, 8, 8)]
    # brute force: run the feature stages one by one and measure each branch directly
    f2, x2 = {}, {}
    with torch.no_grad():
        model.eval()
        for batch in batches:
            h = batch
            for i, stage in enumerate(model.features):
                name = f"features.{i}.body"
                if name in expected_branches(model):
                    f2[name] = f2.get(name, 0.0) + float(stage.body(h).double().pow(2).sum())
                    x2[name] = x2.get(name, 0.0) + float(h.double().pow(2).sum())
                h = stage(h)
    truth = {n: (f2[n] / x2[n]) ** 0.5 for n in f2}
    blocks = find_residual_blocks(model, x)
    scores = block_scores(model, blocks, batches)
    assert scores.keys() == truth.keys() and all(abs(scores[n] - truth[n]) <= 1e-9 * truth[n] for n in truth)
    removed = prune_blocks(model, 2, x, batches=[(batches[0], None), batches[1]])  # (x, y) pairs or bare x
    assert set(removed) == set(sorted(truth, key=truth.get)[:2])
    # pruning again counts the blocks already gone: 4 in all, the first 2 among them
    again = prune_blocks(model, 4, x, batches=batches)
    assert len(again) == 4 and set(removed) <= set(again)


@pytest.mark.parametrize("amount", [1.5, -0.1, 99, "half", None, True])
def test_bad_amount_is_refused_and_the_model_is_untouched(amount):
    model, x = zoo_mobilenet()
    state = _state(model)
    with pytest.raises(pk.PrunekitError):
        prune_blocks(model, amount, x)
    assert _same_state(model, state) and len(pk.get_masks(model)) == 0
    with pytest.raises(pk.PrunekitError, match="batches is empty"):
        prune_blocks(model, 1, x, batches=[])
    assert _same_state(model, state) and len(pk.get_masks(model)) == 0


def test_remove_blocks_leaves_the_model_and_refuses_a_wrong_result():
    model, x = resnet_small()
    prune_blocks(model, 1, x)
    masks = pk.get_masks(model)
    small = remove_blocks(model, x)
    assert pk.get_masks(model) == masks and small is not model
    # a block wrongly described as owning only its (masked) first conv: its branch still runs,
    # so replacing it changes the outputs and the check must refuse
    blocks = find_residual_blocks(model, x)
    alive = next(b for b in blocks if f"{b.name}.0.0.weight" not in masks)
    first = f"{alive.name}.0.0.weight"
    pk.apply_masks(model, {first: torch.zeros(pk.named_parameters(model)[first].shape, dtype=torch.bool)})
    alive.params = [first]
    with pytest.raises(pk.GraphError, match="differs from the masked one"):
        remove_blocks(model, x, blocks=blocks)


class _InPlaceSum(nn.Module):
    def __init__(self, first_operand):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4))
        self.first_operand = first_operand

    def forward(self, x):
        y = self.body(x)
        if self.first_operand == "branch":
            y += x
            return y
        x = x.clone()  # the model input must not be changed in place
        x += y
        return x


@pytest.mark.parametrize("first_operand", ["branch", "shortcut"])
def test_in_place_residual_sums(first_operand):
    torch.manual_seed(0)
    model, x = _randomise_norms(nn.Sequential(nn.Conv2d(3, 4, 1), _InPlaceSum(first_operand), nn.Conv2d(4, 2, 1))), \
        torch.randn(2, 3, 6, 6)
    blocks = find_residual_blocks(model, x)
    if first_operand == "shortcut":  # x.clone() is what the branch adds to, not the branch's input
        assert blocks == []
        return
    assert [(b.name, b.prunable) for b in blocks] == [("1.body", True)]
    prune_blocks(model, 1, x)
    small = remove_blocks(model, x)
    assert isinstance(small[1], nn.Identity)  # y += x; return y is x + F(x) exactly
    with torch.no_grad():
        model.eval(), small.eval()
        assert torch.equal(model(x), small(x)) and torch.equal(model(x), model[2](model[0](x)))


@pytest.mark.parametrize("build", [resnet_small, mobilenet_small])
def test_blocks_then_channels(build):
    """Channel pruning and block pruning together: remove the blocks keeping the channel masks,
    then compact the channels; the result computes what the masked model computes."""
    model, x = build()
    from prunekit.compaction import compact, predicted_counts
    from prunekit.prune import prune_structured
    prune_structured(model, 0.25, x)
    removed = prune_blocks(model, 0.5, x)
    assert removed
    without = remove_blocks(model, x, keep_masks=True)
    assert len(pk.get_masks(without)) and not any(n.startswith(tuple(removed)) for n in pk.get_masks(without))
    predicted = predicted_counts(without, x)["params"]
    tiny, _ = compact(without, x)
    assert sum(p.numel() for p in tiny.parameters()) == predicted < predicted_params(model, x)
    with torch.no_grad():
        model.eval(), tiny.eval()
        assert relative_error(model(x), tiny(x)) <= 1e-5


def transformer_blocks(model):
    """Brute force for the zoo transformer: both pre-norm branches of every encoder block."""
    return [(f"{name}.{f}", f"{name}.{p}") for name, m in model.named_modules() if isinstance(m, zoo.EncoderBlock)
            for f, p in (("attn", "norm1"), ("mlp", "norm2"))]


@pytest.mark.parametrize("build", [zoo.transformer, zoo.transformer_eager])
def test_pre_norm_transformer_branches(build):
    torch.manual_seed(0)
    model, x = build()
    blocks = find_residual_blocks(model, x)
    assert [(b.name, b.pre) for b in blocks] == transformer_blocks(model) and all(b.prunable for b in blocks)
    removed = prune_blocks(model, 0.5, x)
    assert len(removed) == 2
    gone = sum(p.numel() for b in blocks if b.name in removed
               for owner in (b.name, b.pre) for p in model.get_submodule(owner).parameters())
    small = remove_blocks(model, x)
    assert sum(p.numel() for p in small.parameters()) == predicted_params(model, x) == \
        sum(p.numel() for p in model.parameters()) - gone
    with torch.no_grad():
        model.eval(), small.eval()
        tokens = torch.randint(0, 50, (3, 6))
        assert relative_error(model(tokens), small(tokens)) <= 1e-5


class _DivideByNorm(nn.Module):
    def forward(self, x):
        return x / x.abs().sum()  # 0 / 0 once the conv before it is masked


def test_a_branch_that_masks_cannot_silence_is_refused():
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(4, 4, 1), _DivideByNorm(), nn.BatchNorm2d(4))
    model, x = _net(body), torch.randn(2, 3, 5, 5)
    (b,) = find_residual_blocks(model, x)
    assert b.prunable  # the structure is fine; only masking reveals the NaN
    state = _state(model)
    with pytest.raises(pk.GraphError, match="still does not output zeros"):
        prune_blocks(model, 1, x)
    assert _same_state(model, state) and len(pk.get_masks(model)) == 0
