"""The dependency graph: couplings found from one forward pass, blocked ops named, model untouched."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunekit as pk
from prunekit.graph import build_graph, register_handler
from prunekit.graph import unregister_handler
from prunekit.prune import prune_structured
from prunekit.compaction import compact

from models_zoo import (ZOO, NormalisedConv2d, StdConv2d, densenet, fused_qkv, mha_model, mobilenet_v2, resnet_bottleneck,
                        scaled_standardised, stacked, standardised, transformer, unsqueeze_cat,
                        transformer_eager, transformer_einsum, untraceable)


def slices_of(group):
    return {(s.name, s.dim): s.index for s in group.slices}


def test_lenet5_chain_and_flatten_to_linear():
    model = pk.models.build_model("lenet5")
    graph = build_graph(model, torch.randn(2, 1, 28, 28))
    conv1 = slices_of(graph["0:out"])
    assert set(conv1) == {("0.weight", 0), ("0.bias", 0), ("3.weight", 1), ("3.<channels>", 0)}
    assert torch.equal(conv1[("3.weight", 1)].flatten(), torch.arange(6))
    conv2 = slices_of(graph["3:out"])
    # flatten of (16, 5, 5): channel c owns the 25 input features c·25 … c·25+24 of the Linear
    assert torch.equal(conv2[("7.weight", 1)], torch.arange(400).reshape(16, 25))
    assert not graph["11:out"].prunable and "output" in graph["11:out"].reason
    assert [g.name for g in graph.prunable()] == ["0:out", "3:out", "7:out", "9:out"]


def test_residual_add_unites_every_branch():
    model, x = resnet_bottleneck()
    graph = build_graph(model, x)
    group = next(g for g in graph.groups if ("layers.0.conv3.weight", 0) in slices_of(g))
    found = slices_of(group)
    for key in [("layers.0.downsample.0.weight", 0), ("layers.0.bn3.weight", 0), ("layers.0.bn3.running_var", 0),
                ("layers.1.conv3.weight", 0), ("layers.1.conv1.weight", 1), ("layers.2.conv1.weight", 1),
                ("layers.2.downsample.0.weight", 1)]:
        assert key in found, key
    assert group.prunable and group.size == 32
    assert found[("layers.0.bn3.running_mean", 0)].shape == (32, 1)
    kinds = {s.name: s.kind for s in group.slices}
    assert kinds["layers.0.bn3.running_mean"] == "buffer" and kinds["layers.0.bn3.weight"] == "param"


def test_concat_gives_offset_slices():
    model, x = densenet()
    graph = build_graph(model, x)
    found = slices_of(graph["block.0.conv:out"])
    # stem has 8 channels, so block.0's 6 new channels sit at 8 … 13 of every later concat
    for key in [("block.1.conv.weight", 1), ("block.2.bn.weight", 0), ("transition.2.weight", 1)]:
        assert torch.equal(found[key].flatten(), torch.arange(8, 14)), key
    assert torch.equal(slices_of(graph["block.2.conv:out"])[("transition.0.weight", 0)].flatten(),
                       torch.arange(20, 26))


def test_depthwise_and_squeeze_excitation_follow_the_expansion():
    model, x = mobilenet_v2()
    graph = build_graph(model, x)
    found = slices_of(graph["blocks.0.block.0:out"])
    for key in [("blocks.0.block.3.weight", 0), ("blocks.0.block.4.weight", 0), ("blocks.0.block.6.fc1.weight", 1),
                ("blocks.0.block.6.fc2.weight", 0), ("blocks.0.block.6.fc2.bias", 0),
                ("blocks.0.block.7.weight", 1), ("blocks.0.block.3.<channels>", 0)]:
        assert key in found, key
    # the residual stream of block 0 joins the stem's output and block 0's projection
    stem = slices_of(graph["stem.0:out"])
    assert ("blocks.0.block.7.weight", 0) in stem and ("blocks.1.block.0.weight", 1) in stem


@pytest.mark.parametrize("builder", [transformer, transformer_eager, transformer_einsum])
def test_attention_heads_are_units(builder):
    model, x = builder()
    graph = build_graph(model, x)
    heads = graph["blocks.0.attn.q:heads"]
    assert heads.kind == "head" and heads.size == 4 and heads.prunable
    found = slices_of(heads)
    assert torch.equal(found[("blocks.0.attn.q.weight", 0)], torch.arange(16).reshape(4, 4))
    assert torch.equal(found[("blocks.0.attn.out.weight", 1)], torch.arange(16).reshape(4, 4))
    assert {("blocks.0.attn.k.bias", 0), ("blocks.0.attn.v.weight", 0)} <= set(found)
    stream = graph["embed:out"]  # embedding → residual stream → every LayerNorm: one prunable width
    assert stream.prunable
    assert {("pos", 2), ("norm.weight", 0), ("blocks.1.norm2.bias", 0), ("head.weight", 1)} <= set(slices_of(stream))


def test_fused_qkv_projection_gives_heads():
    model, x = fused_qkv()
    graph = build_graph(model, x)
    heads = graph["qkv:heads"]
    assert heads.prunable and heads.size == 4
    rows = slices_of(heads)[("qkv.weight", 0)]
    assert rows.shape == (4, 12) and sorted(rows[1].tolist()) == [4, 5, 6, 7, 20, 21, 22, 23, 36, 37, 38, 39]


class SplitBySize(nn.Module):
    """GPT-2's attention layout: q, k, v cut from one projection by a size fixed at construction."""

    def __init__(self, dim=16, heads=4):
        super().__init__()
        self.split_size, self.head_dim = dim, dim // heads
        self.proj, self.qkv, self.out = nn.Linear(8, dim), nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, x):
        h = self.proj(x)
        q, k, v = self.qkv(h).split(self.split_size, dim=2)
        q, k, v = (t.view(*t.shape[:-1], -1, self.head_dim).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(*h.shape[:-1], -1)
        return self.head((h + self.out(y)).mean(1))


class SplitSizeHandler(pk.LayerHandler):
    counts = ("split_size",)

    def attributes(self, module, size):
        return {"split_size": size("qkv.weight", 0) // 3}


def test_a_size_fixed_at_construction_blocks_unless_a_handler_updates_it():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 8)
    blocked = build_graph(SplitBySize(), x)
    assert not any(g.kind == "head" for g in blocked.prunable())
    assert any("cuts a channel axis at fixed positions" in g.reason for g in blocked.groups)

    model = SplitBySize()
    handlers = {SplitBySize: SplitSizeHandler()}
    graph = build_graph(model, x, handlers=handlers)
    assert model.split_size == 16 and type(model.split_size) is int  # restored after the trace
    heads = [g for g in graph.prunable() if g.kind == "head"]
    assert len(heads) == 1 and heads[0].size == 4
    rows = slices_of(heads[0])[("qkv.weight", 0)]
    assert sorted(rows[1].tolist()) == [4, 5, 6, 7, 20, 21, 22, 23, 36, 37, 38, 39]
    prune_structured(model, {heads[0].name: 0.5}, x, graph=graph)
    small, _ = compact(model, x, graph=graph)
    assert small.split_size == 8 and small.qkv.weight.shape == (24, 16)
    with torch.no_grad():
        assert torch.allclose(small(x), model(x), atol=1e-6)


class TinyViT(nn.Module):
    """torchvision's ViT layout in miniature: the width written into a reshape as self.hidden_dim."""

    def __init__(self, hidden_dim=16, patch=4, classes=3):
        super().__init__()
        self.hidden_dim, self.patch_size = hidden_dim, patch
        self.conv_proj = nn.Conv2d(3, hidden_dim, patch, stride=patch)
        self.class_token = nn.Parameter(torch.randn(1, 1, hidden_dim))
        self.ln, self.mlp = nn.LayerNorm(hidden_dim), nn.Sequential(nn.Linear(hidden_dim, 32), nn.GELU(),
                                                                   nn.Linear(32, hidden_dim))
        self.heads = nn.Linear(hidden_dim, classes)

    def forward(self, x):
        n, _, h, w = x.shape
        x = self.conv_proj(x).reshape(n, self.hidden_dim, (h // self.patch_size) * (w // self.patch_size))
        x = torch.cat([self.class_token.expand(n, -1, -1), x.permute(0, 2, 1)], dim=1)
        x = x + self.mlp(self.ln(x))
        return self.heads(x[:, 0])


class VisionTransformer(TinyViT):
    """Under torchvision's class name."""


def test_a_torchvision_vit_width_follows_hidden_dim_without_a_handler():
    torch.manual_seed(0)
    model, x = VisionTransformer().eval(), torch.randn(2, 3, 8, 8)
    graph = build_graph(model, x)
    width = next(g for g in graph.groups if ("conv_proj.weight", 0) in slices_of(g))
    assert width.prunable and ("class_token", 2) in slices_of(width)
    with torch.no_grad():
        expected_dense = model(x)
    prune_structured(model, {width.name: 0.5}, x, graph=graph)
    small, _ = compact(model, x, graph=graph)  # checks masked == compacted itself
    assert small.hidden_dim == 8 == small.class_token.shape[2] == small.ln.normalized_shape[0]
    with torch.no_grad():
        assert torch.allclose(small(x), model(x), atol=1e-6)
        assert not torch.allclose(small(x), expected_dense, atol=1e-3)  # channels really went
    # under another name the count is not known, so the width stays blocked
    assert not next(g for g in build_graph(TinyViT().eval(), x).groups
                    if ("conv_proj.weight", 0) in slices_of(g)).prunable


class Attention(nn.Module):
    """timm's ViT attention in miniature: head count and inner width written into reshapes."""

    def __init__(self, dim=16, num_heads=4):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.attn_dim = num_heads * self.head_dim
        self.qkv, self.proj = nn.Linear(dim, 3 * self.attn_dim), nn.Linear(self.attn_dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, self.attn_dim))


def _halve_heads(attention: type, library: str, monkeypatch):
    """Prune half the heads of `attention` — a miniature of another library's class, under that
    library's module name — behind a Linear, and check masked == compacted. Returns the compacted
    attention, or None when no head group is prunable."""
    monkeypatch.setattr(attention, "__module__", library)
    torch.manual_seed(0)
    model, x = nn.Sequential(nn.Linear(6, 16), attention()).eval(), torch.randn(2, 5, 6)
    graph = build_graph(model, x)
    heads = [g for g in graph.prunable() if g.kind == "head"]
    if not heads:
        return None
    assert len(heads) == 1 and heads[0].size == 4
    prune_structured(model, {heads[0].name: 0.5}, x, graph=graph)
    small, _ = compact(model, x, graph=graph)
    with torch.no_grad():
        assert torch.allclose(small(x), model(x), atol=1e-6)
    return small[1]


def test_timm_attention_heads_prune_through_its_written_counts(monkeypatch):
    attention = _halve_heads(Attention, "timm.models.vision_transformer", monkeypatch)
    assert (attention.num_heads, attention.attn_dim, attention.qkv.out_features) == (2, 8, 24)
    assert _halve_heads(Attention, "somewhere.else", monkeypatch) is None  # unknown origin: the counts block


class Conv1D(nn.Module):
    """GPT-2's transposed linear: y = x @ W + b, W of shape (in, nf)."""

    def __init__(self, nf, nx):
        super().__init__()
        self.nf = nf
        self.weight, self.bias = nn.Parameter(torch.randn(nx, nf) * 0.2), nn.Parameter(torch.randn(nf) * 0.1)

    def forward(self, x):
        return torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight).view(x.size()[:-1] + (self.nf,))


class GPT2Attention(nn.Module):
    """HuggingFace GPT-2 attention in miniature: q, k, v cut by split(self.split_size)."""

    def __init__(self, dim=16, num_heads=4):
        super().__init__()
        self.embed_dim = self.split_size = dim
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.c_attn, self.c_proj = Conv1D(3 * dim, dim), Conv1D(dim, dim)

    def forward(self, x):
        q, k, v = (t.view(*t.shape[:-1], -1, self.head_dim).transpose(1, 2)
                   for t in self.c_attn(x).split(self.split_size, dim=2))
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2)
        return self.c_proj(out.reshape(*out.shape[:-2], -1))


def test_gpt2_attention_heads_prune_through_split_size(monkeypatch):
    attention = _halve_heads(GPT2Attention, "transformers.models.gpt2.modeling_gpt2", monkeypatch)
    assert (attention.split_size, attention.num_heads, attention.c_attn.weight.shape) == (8, 2, (16, 24))
    assert _halve_heads(GPT2Attention, "somewhere.else", monkeypatch) is None  # unknown origin: split size blocks


def test_multihead_attention_module_heads():
    model, x = mha_model()
    graph = build_graph(model, x)
    heads = graph["proj:heads"]
    found = slices_of(heads)
    assert heads.size == 4 and heads.prunable
    rows = found[("attn.in_proj_weight", 0)]
    assert rows.shape == (4, 12) and set(rows[1].tolist()) == {4, 5, 6, 7, 20, 21, 22, 23, 36, 37, 38, 39}
    assert ("attn.out_proj.weight", 1) in found and ("proj.weight", 0) in found


def test_unknown_operation_is_named_and_blocks_only_what_it_touches():
    model, x = untraceable()
    graph = build_graph(model, x)
    assert not graph["conv1:out"].prunable
    assert "fft_rfft" in graph["conv1:out"].reason
    assert graph["conv2:out"].prunable
    assert any("fft_rfft" in u for u in graph.unsupported)


def test_prune_structured_on_blocked_model_raises_naming_the_op():
    class AllBlocked(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)

        def forward(self, x):
            return torch.fft.rfft(self.conv(x), dim=1).abs()

    model, x = AllBlocked(), torch.randn(1, 3, 6, 6)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(pk.GraphError, match="fft_rfft"):
        prune_structured(model, 0.5, x)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not pk.get_masks(model)


def test_failing_forward_is_a_graph_error():
    model = nn.Linear(4, 2)
    with pytest.raises(pk.GraphError, match="forward pass failed"):
        build_graph(model, torch.randn(2, 5))


@pytest.mark.parametrize("name", sorted(ZOO))
def test_model_is_untouched(name):
    torch.manual_seed(0)
    model, x = ZOO[name]()
    model.train()
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    state = copy.deepcopy(model.state_dict())
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    flags = {n: m.training for n, m in model.named_modules()}
    build_graph(model, x)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(grads[n], p.grad) for n, p in model.named_parameters())
    assert flags == {n: m.training for n, m in model.named_modules()}
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_hard_coded_channel_count_in_view_is_blocked():
    class Hard(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 8, 3), nn.Linear(8 * 16, 2)

        def forward(self, x):
            return self.fc(self.conv(x).view(x.shape[0], 8 * 16))

    graph = build_graph(Hard(), torch.randn(2, 3, 6, 6))
    assert not graph["conv:out"].prunable and "'view'" in graph["conv:out"].reason


def test_split_with_fixed_sizes_is_blocked_and_chunk_couples_halves():
    class Splits(nn.Module):
        def __init__(self, chunk):
            super().__init__()
            self.chunk = chunk
            self.conv, self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(4, 2, 1), nn.Conv2d(4, 2, 1)

        def forward(self, x):
            y = self.conv(x)
            left, right = y.chunk(2, 1) if self.chunk else y.split([4, 4], 1)
            return self.a(left) + self.b(right)

    x = torch.randn(1, 3, 4, 4)
    fixed = build_graph(Splits(False), x)
    assert not fixed["conv:out"].prunable and "split" in fixed["conv:out"].reason
    halves = build_graph(Splits(True), x)["conv:out"]
    assert halves.prunable and halves.size == 4
    assert torch.equal(slices_of(halves)[("conv.weight", 0)], torch.tensor([[0, 4], [1, 5], [2, 6], [3, 7]]))


def test_custom_module_handler():
    class Mystery(nn.Module):
        """Per-channel, but through an operation prunekit does not know."""

        def forward(self, x):
            return torch.special.i0(x)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.odd, self.conv2 = nn.Conv2d(3, 6, 1), Mystery(), nn.Conv2d(6, 2, 1)

        def forward(self, x):
            return self.conv2(self.odd(self.conv1(x)))

    x = torch.randn(1, 3, 4, 4)
    assert not build_graph(Net(), x)["conv1:out"].prunable

    def per_channel(trace, module, name, args, kwargs, output):
        trace.set_labels(output, trace.labels(args[0]))

    register_handler(Mystery, per_channel)
    try:
        assert build_graph(Net(), x)["conv1:out"].prunable
    finally:
        unregister_handler(Mystery)


def test_keyword_inputs_and_masked_model():
    class KW(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 2)

        def forward(self, *, features):
            return self.fc2(F.relu(self.fc1(features)))

    model = KW()
    pk.prune(model, 0.5)  # unstructured masks: the graph must see through the parametrization
    graph = build_graph(model, {"features": torch.randn(3, 4)})
    assert ("fc2.weight", 1) in slices_of(graph["fc1:out"])


def test_layers_used_only_in_training_are_coupled_too():
    class WithAux(nn.Module):
        """An auxiliary head that only runs in training (GoogLeNet / Inception style)."""

        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.head = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Linear(8, 2)
            self.aux = nn.Conv2d(8, 2, 1)

        def forward(self, x):
            y = F.relu(self.bn(self.conv(x)))
            out = self.head(y.mean((2, 3)))
            return (out, self.aux(y).mean((2, 3))) if self.training else out

    model, x = WithAux(), torch.randn(2, 3, 6, 6)
    state = copy.deepcopy(model.state_dict())
    rng = torch.random.get_rng_state()
    graph = build_graph(model.eval(), x)
    assert ("aux.weight", 1) in slices_of(graph["conv:out"]) and not graph.unused
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # BN statistics restored
    assert torch.equal(rng, torch.random.get_rng_state()) and not model.training
    lone = nn.ModuleDict({"used": nn.Linear(3, 2), "spare": nn.Linear(3, 2)})
    lone.forward = lambda x: lone["used"](x)
    assert build_graph(lone, torch.randn(1, 3)).unused == ["spare.bias", "spare.weight"]


def test_sizes_read_from_the_tensor_follow_it():
    class Shuffle(nn.Module):
        """torchvision's channel_shuffle and an SE block written with x.view(b, c)."""

        def __init__(self):
            super().__init__()
            self.conv, self.fc, self.out = nn.Conv2d(3, 8, 1), nn.Linear(8, 8), nn.Conv2d(8, 4, 1)

        def forward(self, x):
            y = self.conv(x)
            b, c, h, w = y.size()
            y = y.view(b, 2, c // 2, h, w).transpose(1, 2).contiguous().view(b, -1, h, w)
            gate = torch.sigmoid(self.fc(y.mean((2, 3)).view(b, c)))
            return self.out(y * gate.view(b, c, 1, 1))

    model, x = Shuffle(), torch.randn(2, 3, 4, 4)
    graph = build_graph(model, x)
    group = graph["conv:out"]
    assert group.prunable and group.size == 4
    # the shuffle keeps 2 groups: unit j owns channel j of each group
    assert torch.equal(slices_of(group)[("conv.weight", 0)], torch.tensor([[0, 4], [1, 5], [2, 6], [3, 7]]))
    prune_structured(model, 0.5, x, graph=graph)
    small, _ = compact(model, x, graph=graph)
    assert small.conv.out_channels == 4


def test_a_count_read_from_other_channels_blocks_both_groups():
    class WidthSizedAttention(nn.Module):
        """torchvision's MaxViT: the attention's inner size reshaped back to the width read from its input."""

        def __init__(self):
            super().__init__()
            self.embed, self.norm = nn.Linear(3, 8), nn.LayerNorm(8)
            self.qkv, self.merge, self.head = nn.Linear(8, 24), nn.Linear(8, 8), nn.Linear(8, 2)

        def forward(self, x):
            x = self.norm(self.embed(x))
            b, n, d = x.shape
            q, k, v = self.qkv(x).chunk(3, dim=-1)
            out = torch.softmax(q @ k.transpose(1, 2), -1) @ v
            return self.head(x + self.merge(out.reshape(b, n, d)))

    torch.manual_seed(0)
    model, x = WidthSizedAttention(), torch.randn(2, 5, 3)
    graph = build_graph(model, x)
    for name in ("embed:out", "qkv:out"):
        assert not graph[name].prunable and "sizes a tensor of other channels" in graph[name].reason


def test_normalising_over_channels_blocks_them():
    class Norm(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.out = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.out(F.normalize(self.conv(x)))  # default dim=1: the channel axis

    graph = build_graph(Norm(), torch.randn(1, 3, 4, 4))
    assert not graph["conv:out"].prunable and "normalize" in graph["conv:out"].reason


@pytest.mark.parametrize("builder", [standardised, scaled_standardised])
def test_standardised_weights_keep_their_output_channels(builder):
    model, x = builder()
    graph = build_graph(model, x)
    # the stem's filters are normalised over their inputs (the image): that side is blocked, named
    assert "statistic over axis 1 of stem.weight" in graph["stem:in"].reason
    # the depthwise conv normalises each filter over its own kernel: the stem's channels stay free
    stem = slices_of(graph["stem:out"])
    assert graph["stem:out"].prunable and {("stem.weight", 0), ("dw.weight", 0), ("expand.weight", 1)} <= set(stem)
    assert graph["expand:out"].prunable
    prune_structured(model, 0.5, x, graph=graph)
    small, _ = compact(model, x, graph=graph)
    assert small.stem.out_channels == small.dw.groups == 4 and small.expand.out_channels == 6


def test_a_statistic_over_input_channels_blocks_them_a_norm_does_not():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), StdConv2d(8, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1))
    reason = build_graph(model, torch.randn(1, 3, 6, 6))["0:out"].reason
    assert "'mean' in 2 computes a statistic over axis 1 of 2.weight" in reason
    model[2] = NormalisedConv2d(8, 4, 3)  # w / ‖w‖: masked zeros leave the norm unchanged
    group = build_graph(model, torch.randn(1, 3, 6, 6))["0:out"]
    assert group.prunable and ("2.weight", 1) in slices_of(group)


def test_per_channel_bookkeeping_for_computed_weights():
    """Weights computed from parameters are followed by axis, never per weight element."""
    from prunekit.graph.handlers import dispatch
    from prunekit.graph.registry import Handlers
    from prunekit.graph.tracer import run_trace

    model = nn.Sequential(StdConv2d(64, 256, 3), nn.ReLU(), StdConv2d(256, 256, 3))
    trace = run_trace(model, torch.randn(1, 64, 8, 8), dispatch, Handlers())
    weights = sum(p.numel() for p in model.parameters())
    assert not trace.element_atoms and len(trace.atoms) < 2000 < weights


def test_weight_norm_parametrization_is_followed_by_the_graph():
    wn = nn.utils.parametrizations.weight_norm
    model = nn.Sequential(wn(nn.Conv2d(3, 8, 3)), nn.ReLU(), wn(nn.Conv2d(8, 6, 3)), nn.Flatten(), nn.LazyLinear(2))
    x = torch.randn(2, 3, 8, 8)
    model(x)
    group = build_graph(model, x)["0:out"]
    assert group.prunable and group.size == 8
    found = {(s.name, s.dim): s.kind for s in group.slices}
    # g (the scale) is masked; v's rows are only sliced (a masked row of v would divide 0 by 0)
    assert found[("0.parametrizations.weight.original0", 0)] == "param"
    assert found[("0.parametrizations.weight.original1", 0)] == "buffer"
    assert found[("2.parametrizations.weight.original1", 1)] == "param"


def test_a_group_count_written_in_the_code_blocks_its_channels():
    class Blur(nn.Module):
        """A fixed blur filter applied per channel with groups written as a number."""

        def __init__(self, channels):
            super().__init__()
            self.channels = channels
            self.register_buffer("filt", torch.ones(channels, 1, 3, 3) / 9)

        def forward(self, x):
            return F.conv2d(x, self.filt, padding=1, groups=self.channels)

    model = nn.Sequential(nn.Conv2d(3, 8, 1), Blur(8), nn.Conv2d(8, 4, 1), nn.ReLU(), nn.Conv2d(4, 2, 1))
    graph = build_graph(model, torch.randn(1, 3, 6, 6))
    assert not graph["0:out"].prunable
    assert "groups=8 is written in the code of 1" in graph["0:out"].reason and "conv2d" in graph["0:out"].reason
    assert graph["2:out"].prunable  # only the channels the constant fixes


@pytest.mark.parametrize("builder", [stacked, unsqueeze_cat])
def test_branches_stacked_on_a_new_axis_are_one_unit(builder):
    model, x = builder()
    graph = build_graph(model, x)
    group = graph["a:out"]
    assert group.prunable and group.size == 6
    found = slices_of(group)
    assert torch.equal(found[("a.weight", 0)].flatten(), found[("b.weight", 0)].flatten())
    # flatten of (2, 6): unit j owns input features j (branch a) and 6 + j (branch b) of fc
    assert torch.equal(found[("fc.weight", 1)], torch.stack([torch.arange(6), torch.arange(6, 12)], 1))


def test_train_mode_pass_that_cannot_run_falls_back_to_the_eval_graph():
    class AuxAtBatchOne(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.head = nn.Conv2d(3, 8, 3), nn.Linear(8, 2)
            self.aux = nn.Sequential(nn.Linear(8, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))

        def forward(self, x):
            y = F.relu(self.conv(x)).mean((2, 3))
            return (self.head(y), self.aux(y)) if self.training else self.head(y)

    model, x = AuxAtBatchOne(), torch.randn(1, 3, 6, 6)  # BatchNorm1d cannot train on one sample
    state = copy.deepcopy(model.state_dict())
    with pytest.warns(UserWarning, match="(?s)train-mode pass.*more than 1 value.*aux.0.weight"):
        graph = build_graph(model, x)
    assert graph["conv:out"].prunable and "more than 1 value" in graph.train_pass_error
    assert graph.unused == sorted(n for n, _ in model.named_parameters() if n.startswith("aux"))
    assert all("aux" not in s.name for g in graph for s in g.slices)  # nothing of the failed pass is left
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items()) and model.training
    assert not build_graph(model, torch.randn(2, 3, 6, 6)).unused  # with a batch of two it couples them


def test_handlers_are_scoped_and_serve_graph_compaction_and_flops():
    from prunekit.compaction import predicted_counts
    from prunekit.graph import LayerHandler, layer_handlers

    class Scale(nn.Module):
        """A per-channel scale through an op prunekit does not know, with its own width attribute."""

        def __init__(self, channels):
            super().__init__()
            self.width = channels
            self.weight = nn.Parameter(torch.rand(channels) + 0.5)

        def forward(self, x):
            return torch.special.i0(x) * self.weight.view(1, self.width, 1, 1)

    class ScaleHandler(LayerHandler):
        def trace(self, trace, module, name, args, kwargs, output):
            atoms = trace.axis_atoms(trace.labels(args[0]), 1, "Scale")
            trace.couple(f"{name}.weight", 0, atoms)
            trace.set_labels(output, trace.labels(args[0]))

        def attributes(self, module, size):
            return {"width": size("weight", 0)}

        def macs(self, module, inputs, output):
            per = output.numel() // module.width
            return per * module.width, per * int(torch.count_nonzero(module.weight))

    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 8, 1), Scale(8), nn.Conv2d(8, 2, 1))

    x = torch.randn(2, 3, 4, 4)
    handlers = {Scale: ScaleHandler()}
    assert not build_graph(net(), x)["0:out"].prunable           # nothing registered: blocked
    model = net()
    graph = build_graph(model, x, handlers=handlers)              # this call only
    assert graph["0:out"].prunable and ("1.weight", 0) in slices_of(graph["0:out"])
    assert not build_graph(net(), x)["0:out"].prunable           # it did not leak
    prune_structured(model, 0.5, x, graph=graph)
    small, _ = compact(model, x, graph=graph)                     # the graph's handlers resize `width`
    assert small[1].width == 4 and small[1].weight.shape == (4,)
    with layer_handlers(handlers):                                # a block: every call inside
        flops = pk.count_flops(model, x)
        assert predicted_counts(model, x)["flops"] == flops["sparse_flops"]
    assert flops["layers"]["1"] == {"dense_macs": 2 * 16 * 8, "sparse_macs": 2 * 16 * 4}
    assert "1" not in pk.count_flops(model, x)["layers"]


def test_example_inputs_are_one_type_everywhere():
    from prunekit.compaction import predicted_counts
    from prunekit.nested import ExampleInputs

    class KW(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 2)

        def forward(self, features, *, scale):
            return self.fc2(F.relu(self.fc1(features))) * scale

    x, scale = torch.randn(3, 4), torch.tensor(2.0)
    forms = [{"features": x, "scale": scale}, ExampleInputs(x, scale=scale)]
    expected = 2 * 3 * (4 * 6 + 6 * 2)
    for example in forms:
        model = KW()
        assert pk.count_flops(model, example)["dense_flops"] >= expected
        prune_structured(model, 0.5, example)
        counts = predicted_counts(model, example)
        small, _ = compact(model, example)
        assert counts["params"] == sum(p.numel() for p in small.parameters()) == 4 * 3 + 3 + 3 * 2 + 2


def test_vectorised_union_find_matches_a_plain_one():
    from prunekit.graph.atoms import AtomSet

    gen = torch.Generator().manual_seed(0)
    atoms = AtomSet()
    ids = atoms.new(300)
    parent = list(range(301))

    def find(a):
        while parent[a] != a:
            a = parent[a]
        return a

    for _ in range(20):
        a = ids[torch.randint(0, 300, (25,), generator=gen)]
        b = ids[torch.randint(0, 300, (25,), generator=gen)]
        atoms.union_pairs(a, b)
        for x, y in zip(a.tolist(), b.tolist()):
            parent[find(x)] = find(y)
        atoms.block(ids[:1], "first")
        ours, theirs = atoms.roots(ids), torch.tensor([find(i) for i in ids.tolist()])
        # same partition: two atoms share a root in one exactly when they do in the other
        assert torch.equal(ours[:, None] == ours[None], theirs[:, None] == theirs[None])
        sizes = torch.bincount(theirs)[theirs]
        assert torch.equal(atoms.merged(ids), (sizes > 1) | (ours == ours[0]))
    assert atoms.reasons(int(ids[0])) == ["first"]


def test_a_handler_that_fails_blocks_and_names_the_op(monkeypatch):
    from prunekit.graph import handlers

    def broken(trace, name, func, args, kwargs, out):
        raise IndexError("unexpected layout")

    monkeypatch.setitem(handlers.TABLE, "prelu", broken)
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.PReLU(8), nn.Conv2d(8, 4, 1), nn.ReLU(), nn.Conv2d(4, 2, 1))
    graph = build_graph(model, torch.randn(1, 3, 4, 4))  # the trace goes on
    assert not graph["0:out"].prunable
    assert "'prelu' in 1 could not be followed by prunekit (IndexError: unexpected layout)" in graph["0:out"].reason
    assert graph["2:out"].prunable


def test_trace_frees_activations_as_the_forward_drops_them():
    """The trace's bookkeeping holds no activation: a layer's output is freed once the next layers
    no longer need it (holding them all cost about the model's size again on a CNN at 224 px)."""
    import weakref

    from prunekit.graph.live import LiveTensorMap

    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
    first, freed = [], []
    model[0].register_forward_hook(lambda m, i, out: first.append(weakref.ref(out)))
    model[4].register_forward_pre_hook(lambda m, i: freed.append(first[-1]() is None))
    graph = build_graph(model, torch.randn(1, 3, 12, 12))
    assert freed and all(freed)
    assert graph["0:out"].prunable

    table = LiveTensorMap()
    t = torch.zeros(3)
    table[t] = "labels"
    assert table.get(t) == "labels" and t in table
    del t
    assert len(table) == 0  # dropped when the tensor died: a new tensor reusing its id finds nothing


@pytest.mark.parametrize("collide", [False, True])
def test_unit_families_equal_a_unique_over_padded_rows(collide, monkeypatch):
    """Families of units (same run codes in order, same reason and head tag) found by hashing equal
    torch.unique over the padded code matrix — also when the hash collides (every weight 1 makes
    runs [1, 2] and [2, 1] one key), where the exact check must fall back."""
    from prunekit.graph import groups as G

    if collide:
        monkeypatch.setattr(G.torch, "randint", lambda low, high, size, generator=None: torch.ones(size, dtype=torch.long))
    g = torch.Generator().manual_seed(1)
    runs_per_unit = torch.randint(1, 4, (40,), generator=g)
    run_code = torch.randint(1, 3, (int(runs_per_unit.sum()),), generator=g)
    reason, head = torch.randint(0, 2, (40,), generator=g), torch.zeros(40, dtype=torch.long)
    first_run = torch.cumsum(runs_per_unit, 0) - runs_per_unit
    unit_of_run = torch.repeat_interleave(torch.arange(40), runs_per_unit)
    within = torch.arange(len(run_code)) - first_run[unit_of_run]
    reps, family = G._families(run_code, unit_of_run, within, runs_per_unit, first_run, reason, head)

    padded = torch.full((40, 5), -1, dtype=torch.long)
    padded[unit_of_run, within] = run_code
    padded[:, 3], padded[:, 4] = reason, head
    _, truth = torch.unique(padded, dim=0, return_inverse=True)
    same = family.unsqueeze(0) == family.unsqueeze(1)
    assert torch.equal(same, truth.unsqueeze(0) == truth.unsqueeze(1))       # the same partition
    assert torch.equal(family[reps], torch.arange(len(reps)))                 # each representative in its family
    assert torch.equal(reps, reps.sort().values)                             # a deterministic order
