"""Masked == compacted on every torchvision classifier and on HuggingFace models built from configs.

Runs in the zoo environment (`make test-zoo`: torch 2.14.1 + torchvision 0.29.1 + transformers + timm);
skipped where those are not installed, so the core package never depends on them.
For each model: prune 30 % of every prunable channel group (L2 norm), compact, and check that
the compacted model's output equals the masked model's (relative error ≤ 1e-5, float32) with
fewer parameters, and that the parameter count equals the one predicted from the masks.
"""


import warnings

import pytest
import torch

torchvision = pytest.importorskip("torchvision")

from prunekit.compaction import compact, predicted_counts  # noqa: E402
from prunekit.graph import build_graph  # noqa: E402
from prunekit.masks import named_parameters  # noqa: E402
from prunekit.prune import prune_structured  # noqa: E402

TORCHVISION_MODELS = torchvision.models.list_models(module=torchvision.models)
# Coupling does not depend on the image size, so CNNs are checked at 64×64 (fast); transformers whose
# position embeddings fix the size get 224, Inception-v3 the 75 pixels its stem needs at least.
FIXED_SIZE = ("vit_", "swin_", "maxvit_")
INPUT_SIDE = {"inception_v3": 96}


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def first_tensor(out):
    """The main output of a model (HF models return ModelOutput objects)."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "last_hidden_state"):
        return out.last_hidden_state
    return out[0]


def check_masked_equals_compacted(model, example, ratio=0.3):
    torch.manual_seed(0)
    model.eval()
    dense_params = sum(p.numel() for p in model.parameters())
    graph = build_graph(model, example)
    prune_structured(model, ratio, example, scope="local", graph=graph)
    predicted = predicted_counts(model, example, graph=graph)
    small, _ = compact(model, example, graph=graph)
    small.eval()
    with torch.no_grad():
        want = first_tensor(model(*example) if isinstance(example, tuple) else model(example))
        got = first_tensor(small(*example) if isinstance(example, tuple) else small(example))
    assert got.shape == want.shape
    assert relative_error(got, want) <= 1e-5
    small_params = sum(p.numel() for p in small.parameters())
    assert small_params == predicted["params"]
    assert small_params < dense_params, "nothing was pruned"
    return small


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", TORCHVISION_MODELS)
def test_torchvision_classifier(name):
    torch.manual_seed(0)
    kwargs = {"init_weights": False} if name in ("inception_v3", "googlenet") else {}
    model = torchvision.models.get_model(name, weights=None, **kwargs)
    side = 224 if name.startswith(FIXED_SIZE) else INPUT_SIDE.get(name, 64)
    with warnings.catch_warnings():  # batch 1: the auxiliary heads' train-mode pass falls back, with a warning
        warnings.simplefilter("ignore", UserWarning)
        check_masked_equals_compacted(model, torch.randn(1, 3, side, side))


timm = pytest.importorskip("timm")

# Weight-standardised convs normalise each filter over its inputs: their input channels cannot be
# removed exactly, so only the channels that feed no standardised conv are pruned; blur pools fix
# their group count in the code, so only their channels are kept.
TIMM_MODELS = ["nf_resnet50", "resnetv2_50x1_bit", "mobilenetv4_conv_blur_medium", "regnetz_b16_evos"]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", TIMM_MODELS)
def test_timm_model(name):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False)
    example = torch.randn(1, 3, 64, 64)
    graph = build_graph(model.eval(), example)
    if not graph.prunable():
        reasons = " ".join(g.reason for g in graph.groups)
        assert "computes a statistic over axis 1" in reasons  # blocked by the standardisation, and said so
        return
    check_masked_equals_compacted(model, example)


@pytest.mark.timeout(300)
def test_timm_vit_width_and_heads_prune():
    """timm's ViT normalises with timm's own LayerNorm class and writes its head count into its attention's
    reshapes: its width and its heads prune, exactly."""
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2).eval()
    example = torch.randn(1, 3, 224, 224)
    graph = build_graph(model, example)
    width = next(g for g in graph.groups if any(s.name == "patch_embed.proj.weight" and s.dim == 0 for s in g.slices))
    assert width.prunable, width.reason
    small = check_masked_equals_compacted(model, example)
    assert small.patch_embed.proj.out_channels < model.patch_embed.proj.out_channels == 192
    attention = small.blocks[0].attn  # whole heads go: the counts written into its reshapes follow
    assert attention.num_heads < 3 and attention.attn_dim == attention.num_heads * 64 == attention.proj.in_features


transformers = pytest.importorskip("transformers")

HF_CASES = {
    "bert": lambda: (transformers.BertModel(transformers.BertConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=100)),
        torch.randint(0, 100, (2, 12))),
    "gpt2": lambda: (transformers.GPT2Model(transformers.GPT2Config(
        n_embd=64, n_layer=2, n_head=4, vocab_size=100, n_positions=32)), torch.randint(0, 100, (2, 12))),
    "vit": lambda: (transformers.ViTModel(transformers.ViTConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, image_size=32,
        patch_size=8)), torch.randn(2, 3, 32, 32)),
    "resnet": lambda: (transformers.ResNetModel(transformers.ResNetConfig(
        embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1])), torch.randn(2, 3, 64, 64)),
    "convnext": lambda: (transformers.ConvNextModel(transformers.ConvNextConfig(
        hidden_sizes=[16, 32], depths=[1, 1], num_stages=2)), torch.randn(2, 3, 64, 64)),
    "mobilenet_v2": lambda: (transformers.MobileNetV2Model(transformers.MobileNetV2Config(
        image_size=64, depth_multiplier=0.35)), torch.randn(2, 3, 64, 64)),
    # grouped-query attention: 8 query heads share 4 key/value heads
    "llama": lambda: (transformers.LlamaModel(transformers.LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=4,
        vocab_size=100, max_position_embeddings=64)), torch.randint(0, 100, (2, 12))),
    "qwen2": lambda: (transformers.Qwen2Model(transformers.Qwen2Config(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=4,
        vocab_size=100, max_position_embeddings=64)), torch.randint(0, 100, (2, 12))),
    # a per-head relative position bias enters the attention as attn_mask (T5) or is added to it (Swin)
    "t5_encoder": lambda: (transformers.T5EncoderModel(transformers.T5Config(
        d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, vocab_size=100)), torch.randint(0, 100, (2, 12))),
    "swin": lambda: (transformers.SwinModel(transformers.SwinConfig(
        image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 4], window_size=4)),
        torch.randn(2, 3, 32, 32)),
}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", list(HF_CASES))
def test_huggingface_model_from_config(name):
    torch.manual_seed(0)
    model, example = HF_CASES[name]()
    small = check_masked_equals_compacted(model, example)
    if name in ("llama", "qwen2", "t5_encoder", "swin"):  # the heads themselves went, not only the MLPs
        graph = build_graph(model, example)
        heads = [g for g in graph.prunable() if g.kind == "head"]
        assert heads, "no prunable head group"
        names = {s.name for g in heads for s in g.slices if s.kind == "param"}
        before, after = named_parameters(model), dict(small.named_parameters())
        assert any(after[n].numel() < before[n].numel() for n in names)


@pytest.mark.timeout(300)
def test_gpt2_heads_prune_through_split_size():
    """GPT-2 cuts q, k, v with `split(self.split_size)`, a size fixed at construction: the built-in
    handler declares that count, so its heads prune whole, exactly, with the sizes updated."""
    torch.manual_seed(0)
    model, example = HF_CASES["gpt2"]()
    model.eval()
    graph = build_graph(model, example)
    heads = [g for g in graph.prunable() if g.kind == "head"]
    assert len(heads) == 2 and all(g.size == 4 for g in heads)  # one group per layer, 4 heads each
    prune_structured(model, {g.name: 0.5 for g in heads}, example, graph=graph)
    small, _ = compact(model, example, graph=graph)  # checks masked == compacted itself
    attention = small.h[0].attn
    assert attention.split_size == 32 and attention.num_heads == 2 and attention.c_attn.weight.shape == (64, 96)
    with torch.no_grad():
        assert relative_error(first_tensor(small(example)), first_tensor(model(example))) <= 1e-5


@pytest.mark.timeout(300)
def test_vit_width_follows_hidden_dim():
    """torchvision's ViT writes `self.hidden_dim` into a reshape: the built-in handler names that
    count, so the width prunes through every LayerNorm and compacts exactly, hidden_dim updated."""
    torch.manual_seed(0)
    model, x = torchvision.models.vit_b_16(weights=None).eval(), torch.randn(1, 3, 224, 224)
    graph = build_graph(model, x)
    width = next(g for g in graph.groups if any(s.name == "conv_proj.weight" and s.dim == 0 for s in g.slices))
    assert width.prunable
    prune_structured(model, 0.5, x, graph=graph)
    small, _ = compact(model, x, graph=graph)  # checks masked == compacted itself
    assert small.hidden_dim == 384 == small.encoder.ln.normalized_shape[0]
    assert sum(p.numel() for p in small.parameters()) < 0.3 * sum(p.numel() for p in model.parameters())
