"""Physical compaction: the smaller model computes exactly what the masked one did."""

import copy
import io
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import prunekit as pk
from prunekit.compaction import CompactionRecord, apply_record, compact, predicted_counts, relative_error
from prunekit.graph import build_graph
from prunekit.prune import prune_structured
from prunekit.structured import group_masks

from models_zoo import ZOO, mha_model, resnet_bottleneck, transformer

REFERENCE = {"lenet300100": (2, 1, 28, 28), "lenet5": (2, 1, 28, 28), "mnist1d_mlp": (2, 40),
             "mnist1d_cnn": (2, 40)}
# models whose FLOPs are all in conv / linear layers that count_flops prices exactly
FLOPS_EXACT = set(REFERENCE) | {"resnet_bottleneck", "densenet", "mobilenet_v2"}


def build(name):
    torch.manual_seed(0)
    if name in REFERENCE:
        return pk.models.build_model(name), torch.randn(*REFERENCE[name])
    return ZOO[name]()


def randomise(model):
    """Non-zero norm parameters and running statistics, so a dropped statistic would show."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
        for p in model.parameters():
            if not p.any():  # biases that start at zero
                p.uniform_(-0.5, 0.5)
    return model


CASES = [(name, "local") for name in sorted(REFERENCE) + sorted(ZOO)] + [
    (name, "global") for name in ("lenet5", "mnist1d_cnn", "resnet_bottleneck", "transformer")]


@pytest.mark.parametrize("name,scope", CASES)
def test_masked_equals_compacted(name, scope):
    model, x = build(name)
    randomise(model).eval()
    graph = build_graph(model, x)
    prune_structured(model, 0.5, x, scope=scope, graph=graph)
    small, record = compact(model, x, graph=graph, check=False)
    with torch.no_grad():
        assert relative_error(model(x), small(x)) <= 1e-5
    counts = pk.parameter_counts(small)
    predicted = predicted_counts(model, x, graph=graph)
    assert counts["total"] == predicted["params"] < pk.parameter_counts(model)["total"]
    # every weight the masks kept is non-zero (random init), so the masked model's non-zero
    # count is an independent prediction of the compacted size
    assert counts["total"] == pk.parameter_counts(model)["nonzero"]
    if name in FLOPS_EXACT:
        assert pk.count_flops(small, x)["dense_flops"] == predicted["flops"]
    assert pk.count_flops(small, x)["dense_flops"] < pk.count_flops(model, x)["dense_flops"]


def test_train_mode_batch_norm_also_matches():
    model, x = resnet_bottleneck()
    randomise(model)
    prune_structured(model, 0.5, x)
    small, _ = compact(model, x)
    model.train(), small.train()
    assert relative_error(model(x), small(x)) <= 1e-5


def test_compacted_model_is_plain_saves_loads_and_exports():
    for builder in (resnet_bottleneck, transformer):
        model, x = builder()
        randomise(model)
        prune_structured(model, 0.5, x)
        small, _ = compact(model, x)
        small.eval()
        assert not any(parametrize.is_parametrized(m) for m in small.modules())
        assert not any(type(m).__module__.startswith("prunekit") for m in small.modules())
        buffer = io.BytesIO()
        torch.save(small, buffer)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=False)
        exported = torch.export.export(small, (x,))
        with torch.no_grad():
            expected = small(x)
            assert torch.equal(loaded(x), expected)
            assert relative_error(exported.module()(x), expected) <= 1e-6


def test_compacted_model_runs_without_prunekit(tmp_path):
    model, x = build("lenet5")
    prune_structured(model, 0.5, x)
    small, _ = compact(model, x)
    torch.save({"model": small, "x": x, "y": small(x).detach()}, tmp_path / "small.pt")
    code = ("import sys; sys.modules['prunekit'] = None\n"  # any import of prunekit now fails
            "import torch\n"
            f"d = torch.load(r'{tmp_path / 'small.pt'}', weights_only=False)\n"
            "assert torch.allclose(d['model'](d['x']), d['y'])\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_record_loads_a_compacted_checkpoint_into_a_fresh_instance(tmp_path):
    model, x = build("mobilenet_v2")
    randomise(model)
    prune_structured(model, 0.5, x, round_to=4)
    small, record = compact(model, x)
    record.save(tmp_path / "pruned.rec")
    with pytest.raises(pk.PrunekitError, match="exists"):
        record.save(tmp_path / "pruned.rec")
    torch.save(small.state_dict(), tmp_path / "pruned.pt")
    fresh, _ = build("mobilenet_v2")
    apply_record(fresh, CompactionRecord.load(tmp_path / "pruned.rec"))
    fresh.load_state_dict(torch.load(tmp_path / "pruned.pt", weights_only=True))
    small.eval(), fresh.eval()
    with torch.no_grad():
        assert torch.equal(small(x), fresh(x))
    assert str(small) == str(fresh)  # module attributes (channels, groups …) were recorded too


def test_apply_record_checks_before_changing():
    model, x = build("lenet5")
    prune_structured(model, 0.5, x)
    _, record = compact(model, x)
    other = pk.models.build_model("lenet300100")
    state = copy.deepcopy(other.state_dict())
    with pytest.raises(pk.PrunekitError, match="lacks"):
        apply_record(other, record)
    assert all(torch.equal(state[k], v) for k, v in other.state_dict().items())
    twice = pk.models.build_model("lenet5")
    apply_record(twice, record)
    with pytest.raises(pk.PrunekitError, match="already compacted"):
        apply_record(twice, record)


def test_compact_leaves_the_masked_model_as_it_was():
    model, x = build("lenet5")
    prune_structured(model, 0.5, x)
    masks, state = pk.get_masks(model), copy.deepcopy(model.state_dict())
    compact(model, x)
    assert pk.get_masks(model) == masks
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert model(x).shape == (2, 10)


def test_a_fully_masked_group_keeps_one_zero_unit():
    model, x = build("lenet300100")
    graph = build_graph(model, x)
    pk.apply_masks(model, group_masks(graph, {"1:out": torch.zeros(300, dtype=torch.bool)}))
    small, _ = compact(model, x, graph=graph)
    assert small[1].out_features == 1 and small[3].in_features == 1
    assert relative_error(model(x), small(x)) <= 1e-6


def test_unstructured_masks_are_not_compacted():
    model, x = build("lenet300100")
    pk.prune(model, 0.5)
    small, record = compact(model, x)
    assert not record.kept and pk.parameter_counts(small)["total"] == pk.parameter_counts(model)["total"]


def test_heads_of_multihead_attention_are_removed():
    model, x = mha_model()
    graph = build_graph(model, x)
    keep = torch.tensor([True, False, True, False])
    pk.apply_masks(model, group_masks(graph, {"proj:heads": keep}))
    small, _ = compact(model, x, graph=graph)
    assert small.attn.num_heads == 2 and small.attn.embed_dim == 8 and small.attn.in_proj_weight.shape == (24, 8)
    small.train(), model.train()  # the slow path, not the fused inference kernel
    assert relative_error(model(x), small(x)) <= 1e-5


def test_compact_command(tmp_path, capsys):
    from prunekit.cli import main

    model, x = build("lenet5")
    prune_structured(model, 0.5, x)
    torch.save(model.state_dict(), tmp_path / "masked.pt")
    out = tmp_path / "small.pt"
    assert main([("compact"), str(tmp_path / "masked.pt"), "--model", "lenet5", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "parameters" in table and "FLOPs" in table
    expected, _ = compact(model, x)
    fresh = apply_record(pk.models.build_model("lenet5"), CompactionRecord.load(str(out) + ".record"))
    fresh.load_state_dict(torch.load(out, weights_only=True))
    assert torch.equal(fresh(x), expected(x))
    assert str(pk.parameter_counts(expected)["total"]) in table
    assert main(["compact", str(tmp_path / "masked.pt"), "--model", "lenet5", "--out", str(out)]) == 2  # no overwrite


class Conv1D(nn.Module):
    """GPT-2's layer: y = x @ W + b, W of shape (in, out); its forward writes `nf` into a view."""

    def __init__(self, nf, nx):
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.1)
        self.bias = nn.Parameter(torch.randn(nf) * 0.1)

    def forward(self, x):
        size_out = x.size()[:-1] + (self.nf,)
        return torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight).view(size_out)


def test_gpt2_style_conv1d_is_described_as_a_whole():
    model = nn.Sequential(nn.Linear(6, 8), Conv1D(16, 8), nn.GELU(), Conv1D(8, 16), nn.Linear(8, 3))
    x = torch.randn(2, 5, 6)
    graph = build_graph(model, x)
    assert graph["1:out"].prunable and graph["1:out"].size == 16
    assert {(s.name, s.dim) for s in graph["1:out"].slices} == {("1.weight", 1), ("1.bias", 0), ("3.weight", 0)}
    prune_structured(model, 0.5, x, graph=graph)
    small, _ = compact(model, x, graph=graph)
    assert small[1].nf == 8 and small[3].weight.shape == (8, 4)
    assert relative_error(model(x), small(x)) <= 1e-5


def test_compacted_model_exports_to_onnx(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    for builder in (resnet_bottleneck, transformer):
        model, x = builder()
        prune_structured(model, 0.5, x)
        small, _ = compact(model, x)
        small.eval()
        path = tmp_path / f"{builder.__name__}.onnx"
        torch.onnx.export(small, (x,), str(path), dynamo=True)
        import onnx

        onnx.checker.check_model(onnx.load(str(path)))


def test_the_output_check_refuses_a_wrong_model(monkeypatch):
    import prunekit.compaction as compact_module

    model, x = build("lenet5")
    prune_structured(model, 0.5, x)
    real = compact_module.materialise

    def corrupting(target, source, record):
        real(target, source, record)
        with torch.no_grad():
            target[0].bias.add_(1.0)  # what a wrong slice would do
        return target

    monkeypatch.setattr(compact_module, "materialise", corrupting)
    with pytest.raises(pk.GraphError, match="differ"):
        compact(model, x)
    small, _ = compact(model, x, check=False)  # the check is what caught it
    assert relative_error(model(x), small(x)) > 1e-3


def test_any_exception_of_the_compacted_forward_is_a_graph_error():
    class Fixed(nn.Module):
        """A size the graph cannot see: the forward checks a channel count against a number."""

        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 8, 1), nn.Linear(8, 2)

        def forward(self, x):
            y = self.conv(x)
            if y.shape[1] != 8:
                raise ValueError("expected 8 channels")
            return self.fc(y.mean((2, 3)))

    model, x = Fixed(), torch.randn(2, 3, 4, 4)
    prune_structured(model, 0.5, x)
    masks = pk.get_masks(model)
    with pytest.raises(pk.GraphError, match="cannot run.*ValueError: expected 8 channels") as info:
        compact(model, x)
    assert isinstance(info.value.__cause__, ValueError)
    assert pk.get_masks(model) == masks and model(x).shape == (2, 2)  # the masked model still works


def test_tied_weights_stay_tied():
    class Tied(nn.Module):
        """A language-model head that reuses the embedding table (weight tying)."""

        def __init__(self):
            super().__init__()
            self.embed, self.mix = nn.Embedding(20, 8), nn.Linear(8, 8)
            self.head = nn.Linear(8, 20, bias=False)
            self.head.weight = self.embed.weight

        def forward(self, tokens):
            return self.head(torch.relu(self.mix(self.embed(tokens))) + self.embed(tokens))

    model, x = Tied(), torch.randint(0, 20, (2, 5))
    graph = build_graph(model, x)
    assert graph["embed:out"].prunable
    prune_structured(model, 0.5, x, graph=graph)
    small, _ = compact(model, x, graph=graph)
    assert small.head.weight is small.embed.weight and small.embed.weight.shape == (20, 4)
    assert relative_error(model(x), small(x)) <= 1e-5


def _tiny_decoder(kind):
    transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install transformers)")
    config = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=8,
                  num_key_value_heads=4, vocab_size=50, max_position_embeddings=32)
    if kind == "llama":
        return transformers.LlamaModel(transformers.LlamaConfig(**config))
    return transformers.Qwen2Model(transformers.Qwen2Config(**config))


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_grouped_query_attention_heads_are_removed_exactly(kind):
    torch.manual_seed(0)
    model = randomise(_tiny_decoder(kind)).eval()
    tokens = torch.randint(0, 50, (2, 7))
    graph = build_graph(model, tokens)
    heads = graph["layers.0.self_attn.q_proj:heads"]
    # 4 key/value heads, each shared by 2 query heads of size 4: one unit = 2 query heads + 1 KV head
    assert heads.kind == "head" and heads.size == 4 and heads.prunable
    found = {(s.name, s.dim): s.index for s in heads.slices}
    assert torch.equal(found[("layers.0.self_attn.q_proj.weight", 0)][1], torch.arange(8, 16))
    assert torch.equal(found[("layers.0.self_attn.k_proj.weight", 0)][1], torch.arange(4, 8))
    assert torch.equal(found[("layers.0.self_attn.o_proj.weight", 1)][1], torch.arange(8, 16))
    pk.apply_masks(model, group_masks(graph, {heads.name: torch.tensor([True, False, True, False])}))
    small, _ = compact(model, tokens, graph=graph)
    attn = small.layers[0].self_attn
    assert attn.q_proj.weight.shape == (16, 32) and attn.k_proj.weight.shape == attn.v_proj.weight.shape == (8, 32)
    assert attn.o_proj.weight.shape == (32, 16)
    with torch.no_grad():
        assert relative_error(model(tokens).last_hidden_state, small(tokens).last_hidden_state) <= 1e-5


def test_in_place_compaction_turns_the_model_itself_into_the_small_one():
    model, x = build("resnet_bottleneck")
    randomise(model).eval()
    graph = build_graph(model, x)
    prune_structured(model, 0.5, x, graph=graph)
    with torch.no_grad():
        expected = model(x)
    kept_fc_bias = model.fc.bias  # an unmasked tensor that keeps its shape keeps its identity
    before = pk.parameter_counts(model)["total"]
    small, record = compact(model, x, graph=graph, inplace=True)
    assert small is model and not pk.get_masks(model)
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert model.fc.bias is kept_fc_bias and pk.parameter_counts(model)["total"] < before
    with torch.no_grad():
        assert relative_error(expected, model(x)) <= 1e-5


def test_the_copy_is_streamed_from_a_tensorless_skeleton():
    from prunekit.compaction import plain_copy, skeleton_copy

    model, x = build("transformer")
    pk.prune(model, 0.5)
    skeleton = skeleton_copy(model)
    own = [t for n, t in list(skeleton.named_parameters()) + list(skeleton.named_buffers()) if "parametrizations" not in n]
    assert own and all(t.numel() == 0 for t in own)
    plain = plain_copy(model)  # masks baked in, nothing sliced, nothing shared with the original
    assert not any(parametrize.is_parametrized(m) for m in plain.modules())
    assert torch.equal(plain.blocks[0].attn.q.weight, model.blocks[0].attn.q.weight)
    assert plain.blocks[0].attn.q.weight.data_ptr() != model.blocks[0].attn.q.weight.data_ptr()
    with torch.no_grad():
        assert torch.equal(plain(x), model(x))
