"""Structured pruning of tiny random-init Llama / Qwen2 causal LMs (GQA: 4 query / 2 KV heads):
GQA head groups and FFN channels removed through the graph and compaction, whole blocks by
block influence; the config follows so save_pretrained → from_pretrained rebuilds the model."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F

import prunekit as pk
from prunekit.cli import main
from prunekit.errors import PrunekitError
from prunekit.llm import (block_influence, calibration_tokens, load_causal_lm, prune_structure, remove_layers,
                          sync_config)
from prunekit.llm.text import LICENCE_DIR

transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install 'prunekit[llm]')")
from test_llm_cli import model_dir  # noqa: E402,F401 - fixture: a tiny saved Llama with a word-level tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = 64


def tiny(kind="llama", heads=4, kv_heads=2, layers=3, seed=0):
    torch.manual_seed(seed)
    options = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=layers, num_attention_heads=heads,
                   num_key_value_heads=kv_heads, vocab_size=VOCAB, max_position_embeddings=64)
    if kind == "llama":
        return transformers.LlamaForCausalLM(transformers.LlamaConfig(**options)).eval()
    return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**options)).eval()


def ids(sequences=4, length=12, seed=1):
    return torch.randint(0, VOCAB, (sequences, length), generator=torch.Generator().manual_seed(seed))


def logits(model, x):
    with torch.no_grad():
        return model(input_ids=x, use_cache=False).logits


def reloaded(model, folder):
    model.save_pretrained(folder)
    return transformers.AutoModelForCausalLM.from_pretrained(folder).eval()


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("structure,remove", [("heads", 0.5), ("ffn", 0.25), ("width", 0.25), ("layers", 1 / 3)])
def test_pruned_model_saves_and_reloads_with_the_same_outputs(kind, structure, remove, tmp_path):
    model, x = tiny(kind), ids(2, 10, seed=5)
    before = pk.parameter_counts(model)["total"]
    result = prune_structure(model, ids(), structure, remove)
    assert result.params_after == pk.parameter_counts(model)["total"] < before
    config = model.config
    if structure == "heads":
        assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (2, 1, 8)
    elif structure == "ffn":
        assert config.intermediate_size == 36 and all(b.mlp.intermediate_size == 36 for b in model.model.layers)
    elif structure == "width":  # 8 of 32 channels, the kept 24 a multiple of the 4 heads
        assert config.hidden_size == 24 == model.model.norm.weight.numel() == model.lm_head.in_features
        assert config.head_dim == 8 and model.model.embed_tokens.embedding_dim == 24
    else:
        assert config.num_hidden_layers == len(model.model.layers) == 2
        assert [b.self_attn.layer_idx for b in model.model.layers] == [0, 1]
        if kind == "qwen2":
            assert len(config.layer_types) == 2
    for block in model.model.layers:
        attention = block.self_attn
        assert attention.q_proj.out_features == config.num_attention_heads * attention.head_dim
        assert attention.num_key_value_groups == config.num_attention_heads // config.num_key_value_heads
    again = reloaded(model, tmp_path)
    assert torch.equal(logits(again, x), logits(model, x))
    # generation runs through the KV cache, whose slots follow layer_idx and the KV head count
    out = again.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=3, do_sample=False)
    assert out.shape == (2, 13)


def test_units_equal_the_masked_model_and_only_the_chosen_units_go():
    model = tiny()
    masked = copy.deepcopy(model)
    result = prune_structure(model, ids(), "ffn", 0.25)
    # the same channels masked (zeroed) in an uncompacted copy give the same logits
    with torch.no_grad():
        for block, removed in zip(masked.model.layers, result.removed):
            block.mlp.gate_proj.weight[removed] = 0
            block.mlp.up_proj.weight[removed] = 0
            block.mlp.down_proj.weight[:, removed] = 0
    x = ids(2, 10, seed=7)
    assert torch.allclose(logits(model, x), logits(masked, x), atol=1e-5, rtol=1e-5)
    assert all(len(r) == 12 for r in result.removed)


def recorded_norms(model, tokens):
    """‖X_j‖² of every Linear layer's input, recorded in one ordinary forward pass (no engine)."""
    norms, handles = {}, []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            def record(_m, inputs, _out, name=name):
                x = inputs[0].reshape(-1, inputs[0].shape[-1]).double()
                norms[name] = norms.get(name, 0) + x.square().sum(0)
            handles.append(module.register_forward_hook(record))
    try:
        logits(model, tokens)
    finally:
        for handle in handles:
            handle.remove()
    return norms


def direct_scores(model, tokens, structure, output_only=False):
    """Σ|W|·‖X‖ per unit from inputs recorded in one ordinary forward pass (no engine)."""
    norms = recorded_norms(model, tokens)
    scores = []
    for i, block in enumerate(model.model.layers):
        prefix = f"model.layers.{i}."
        def term(layer, rows=None, cols=None):
            w = (layer.weight.detach().double().abs() * norms[prefix + path[layer]].sqrt())
            if rows is not None:  # an input-side slice
                return torch.zeros((), dtype=torch.float64) if output_only else w[rows].sum()
            return w[:, cols].sum()
        if structure == "width":  # every block's reading columns and writing rows of each residual channel
            a, mlp = block.self_attn, block.mlp
            path = {a.q_proj: "self_attn.q_proj", a.k_proj: "self_attn.k_proj", a.v_proj: "self_attn.v_proj",
                    a.o_proj: "self_attn.o_proj", mlp.gate_proj: "mlp.gate_proj", mlp.up_proj: "mlp.up_proj",
                    mlp.down_proj: "mlp.down_proj"}
            scores.append(torch.stack([sum(term(layer, cols=j) for layer in (a.q_proj, a.k_proj, a.v_proj,
                                                                              mlp.gate_proj, mlp.up_proj))
                                       + term(a.o_proj, rows=j) + term(mlp.down_proj, rows=j)
                                       for j in range(a.q_proj.in_features)]))
        elif structure == "ffn":
            mlp = block.mlp
            path = {mlp.gate_proj: "mlp.gate_proj", mlp.up_proj: "mlp.up_proj", mlp.down_proj: "mlp.down_proj"}
            scores.append(torch.stack([term(mlp.gate_proj, rows=c) + term(mlp.up_proj, rows=c)
                                       + term(mlp.down_proj, cols=c) for c in range(mlp.gate_proj.out_features)]))
        else:
            a, d = block.self_attn, block.self_attn.head_dim
            path = {a.q_proj: "self_attn.q_proj", a.k_proj: "self_attn.k_proj", a.v_proj: "self_attn.v_proj",
                    a.o_proj: "self_attn.o_proj"}
            q_per_kv = a.num_key_value_groups
            units = []
            for u in range(a.k_proj.out_features // d):
                q = slice(u * q_per_kv * d, (u + 1) * q_per_kv * d)
                kv = slice(u * d, (u + 1) * d)
                units.append(term(a.q_proj, rows=q) + term(a.k_proj, rows=kv) + term(a.v_proj, rows=kv)
                             + term(a.o_proj, cols=q))
            scores.append(torch.stack(units))
    return scores


@pytest.mark.parametrize("criterion", ["wanda", "wanda-out"])
@pytest.mark.parametrize("structure,remove,heads", [("ffn", 0.25, 4), ("heads", 0.5, 8), ("width", 0.25, 4)])
def test_wanda_unit_scores_match_a_direct_computation(structure, remove, heads, criterion):
    # 8 query / 4 KV heads for the head case, so the lowest of four units is a real choice
    model, tokens = tiny(heads=heads, kv_heads=heads // 2), ids()
    expected = direct_scores(model, tokens, structure, output_only=criterion == "wanda-out")
    result = prune_structure(model, tokens, structure, remove, criterion=criterion)
    if structure == "width":  # one group for the whole model: the blocks' scores summed
        expected = [sum(expected)]
    assert len(result.removed) == len(expected)
    for block_scores, removed in zip(expected, result.removed):
        lowest = sorted(torch.argsort(block_scores, stable=True)[:result.removed_per_block].tolist())
        assert removed == lowest


@pytest.mark.parametrize("structure,remove,heads", [("ffn", 0.25, 4), ("heads", 0.5, 8), ("width", 0.25, 4)])
def test_activation_scores_are_the_units_own_input_norms(structure, remove, heads):
    model, tokens = tiny(heads=heads, kv_heads=heads // 2), ids()
    norms = {name: value.sqrt() for name, value in recorded_norms(model, tokens).items()}
    blocks = []
    for i, block in enumerate(model.model.layers):
        at = f"model.layers.{i}."
        if structure == "ffn":  # channel c's own activation, read by down_proj
            blocks.append(norms[at + "mlp.down_proj"])
        elif structure == "heads":  # the o_proj columns of the KV group's query heads
            width = block.self_attn.num_key_value_groups * block.self_attn.head_dim
            blocks.append(norms[at + "self_attn.o_proj"].reshape(-1, width).sum(1))
        else:  # the normalised hidden state, once for q/k/v and once for gate/up
            blocks.append(norms[at + "self_attn.q_proj"] + norms[at + "mlp.gate_proj"])
    expected = [sum(blocks)] if structure == "width" else blocks
    result = prune_structure(model, tokens, structure, remove, criterion="activation")
    assert len(result.removed) == len(expected)
    for block_scores, removed in zip(expected, result.removed):
        assert removed == sorted(torch.argsort(block_scores, stable=True)[:result.removed_per_block].tolist())


def test_magnitude_criterion_ignores_the_calibration_activations():
    model = tiny()
    expected = [sorted(torch.argsort(b.mlp.gate_proj.weight.abs().sum(1) + b.mlp.up_proj.weight.abs().sum(1)
                                     + b.mlp.down_proj.weight.abs().sum(0), stable=True)[:12].tolist())
                for b in model.model.layers]
    assert prune_structure(model, ids(), "ffn", 0.25, criterion="magnitude").removed == expected


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_block_influence_matches_a_direct_computation(kind):
    model, tokens = tiny(kind, layers=4), ids()
    pairs, handles = {}, []
    for i, block in enumerate(model.model.layers):
        def record(_m, args, kwargs, out, i=i):
            x = args[0] if args else kwargs["hidden_states"]
            y = out[0] if isinstance(out, tuple) else out
            pairs[i] = (x.double(), y.double())
        handles.append(block.register_forward_hook(record, with_kwargs=True))
    try:
        logits(model, tokens)
    finally:
        for handle in handles:
            handle.remove()
    expected = torch.tensor([1 - F.cosine_similarity(*pairs[i], dim=-1).mean() for i in range(4)],
                            dtype=torch.float64)
    influence = block_influence(model, tokens, batch_size=3)  # batches of unequal size: a mean over tokens
    assert torch.allclose(influence, expected, atol=1e-10)
    result = remove_layers(model, tokens, 0.5)
    assert result.removed == sorted(torch.argsort(expected)[:2].tolist())


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.1, "0.5", True, 0.01])
@pytest.mark.parametrize("structure", ["heads", "ffn", "layers"])
def test_bad_amounts_leave_the_model_untouched(structure, bad):
    model = tiny()
    before = state(model)
    with pytest.raises(PrunekitError):
        prune_structure(model, ids(), structure, bad)
    after = state(model)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert model.config.num_hidden_layers == 3 and not pk.get_masks(model)


@pytest.mark.parametrize("structure", ["heads", "ffn", "width"])
def test_a_failed_compaction_check_leaves_the_model_untouched(structure, monkeypatch):
    import prunekit.llm.structured as structured

    monkeypatch.setattr(structured, "COMPACTION_RTOL", -1.0)  # no output can pass: the check must fail
    model = tiny()
    before = state(model)
    with pytest.raises(pk.PrunekitError):
        prune_structure(model, ids(), structure, 0.5)
    after = state(model)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not pk.get_masks(model) and model.config.intermediate_size == 48 and model.config.hidden_size == 32
    assert type(model.model.norm).__name__ == "LlamaRMSNorm"  # the plain class again


def test_bad_structure_criterion_and_tokens_are_refused():
    model = tiny()
    with pytest.raises(PrunekitError, match="structure"):
        prune_structure(model, ids(), "depth", 0.5)
    with pytest.raises(PrunekitError, match="criterion"):
        prune_structure(model, ids(), "ffn", 0.5, criterion="taylor")
    with pytest.raises(PrunekitError, match="token"):
        prune_structure(model, torch.randn(2, 5), "ffn", 0.5)
    assert model.config.intermediate_size == 48 and model.model.layers[0].mlp.gate_proj.out_features == 48


def test_sizes_the_config_class_rejects_are_refused_before_anything_changes():
    # no GQA: 4 heads of 8; removing 1 of 4 leaves 3 heads, and LlamaConfig demands hidden_size % heads == 0
    model = tiny(heads=4, kv_heads=4)
    before = state(model)
    with pytest.raises(PrunekitError, match="multiple"):
        prune_structure(model, ids(), "heads", 0.25)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert model.config.num_attention_heads == 4


def test_blocks_of_different_sizes_are_never_written_into_the_config():
    model, x = tiny(), ids(2, 10)
    graph = pk.build_graph(model, {"input_ids": x, "use_cache": False})
    name = "model.layers.0.mlp.gate_proj:out"
    keep = torch.ones(graph[name].size, dtype=torch.bool)
    keep[:8] = False
    pk.apply_masks(model, pk.structured.group_masks(graph, {name: keep}))
    pk.compact(model, {"input_ids": x, "use_cache": False}, graph=graph, inplace=True)
    with pytest.raises(PrunekitError, match="allocation='uniform'"):
        sync_config(model)
    assert model.config.intermediate_size == 48



needs_licences = pytest.mark.skipif(not (LICENCE_DIR / "GPL-3").is_file(), reason="needs /usr/share/common-licenses")


@needs_licences
def test_cli_writes_a_run_folder_and_a_model_that_reloads(model_dir, tmp_path, capsys):
    out = tmp_path / "small"
    args = ["llm", "--model", str(model_dir), "--calibration-samples", "4", "--seq-len", "32", "--window", "256",
            "--output-dir", str(tmp_path / "runs"), "--no-progress", "--structure", "ffn", "--remove", "0.25"]
    assert main([*args, "--out", str(out)]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    rows = json.loads((run / "metrics.json").read_text())
    assert [r["stage"] for r in rows] == ["dense", "pruned"] and rows[1]["params"] < rows[0]["params"]
    again = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert again.config.intermediate_size == 96 and (out / "tokenizer.json").is_file()
    x = torch.randint(0, 256, (1, 16))
    original = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()
    prune_structure(original, calibration_tokens(load_causal_lm(str(model_dir))[1], 4, 32), "ffn", 0.25)
    assert torch.equal(logits(again, x), logits(original, x))  # same units, same weights
    capsys.readouterr()
    assert main(args) == 0 and "already done" in capsys.readouterr().out


@needs_licences
def test_cli_width_with_recovery_writes_three_rows_and_a_narrower_model(model_dir, tmp_path):
    out = tmp_path / "narrow"
    assert main(["llm", "--model", str(model_dir), "--calibration-samples", "4", "--seq-len", "32", "--window", "256",
                 "--output-dir", str(tmp_path / "runs"), "--no-progress", "--structure", "width", "--remove", "0.25",
                 "--recover-steps", "2", "--out", str(out)]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    rows = json.loads((run / "metrics.json").read_text())
    assert [r["stage"] for r in rows] == ["dense", "pruned", "recovered"] and rows[2]["params"] == rows[1]["params"]
    assert json.loads((run / "settings.json").read_text())["criterion"] == "activation"
    again = transformers.AutoModelForCausalLM.from_pretrained(out)
    width = again.config.hidden_size
    assert width < transformers.AutoConfig.from_pretrained(model_dir).hidden_size
    assert width % again.config.num_attention_heads == 0 and again.model.norm.weight.numel() == width


@needs_licences
@pytest.mark.parametrize("extra,message", [(["--structure", "ffn"], "--remove"),
                                           (["--criterion", "activation"], "--structure"),
                                           (["--structure", "ffn", "--remove", "1.2"], "--remove"),
                                           (["--remove", "0.5"], "--structure"),
                                           (["--structure", "heads", "--remove", "0.5", "--sparsity", "0.5"],
                                            "--sparsity"),
                                           (["--structure", "layers", "--remove", "0.5", "--save-model"], "--out")])
def test_cli_refuses_mixed_or_missing_options(model_dir, tmp_path, capsys, extra, message):
    assert main(["llm", "--model", str(model_dir), "--output-dir", str(tmp_path), *extra]) != 0
    assert message in capsys.readouterr().err and not any(tmp_path.iterdir())


@needs_licences
def test_cli_never_writes_into_an_existing_folder(model_dir, tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    assert main(["llm", "--model", str(model_dir), "--output-dir", str(tmp_path / "runs"), "--structure", "ffn",
                 "--remove", "0.25", "--out", str(tmp_path / "taken")]) != 0
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine" and not (tmp_path / "runs").exists()
