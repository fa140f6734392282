"""The sequential engine and one-shot pruning end to end on tiny random-init Llama and Qwen2
models with grouped-query attention (4 query heads, 2 KV heads), built from configs."""

import os
import tempfile

import pytest
import torch

from prunekit.errors import PrunekitError
from prunekit.llm import (OWL, InputStatistics, LayerMethod, SparseGPT, Wanda, block_linears, decoder_layers,
                          evaluate_lm, prune_oneshot, recover, run_blockwise, sparsegpt_prune)
from prunekit.llm.evaluate import windows
from prunekit.llm.targets import nm_mask, parse_nm, row_mask
from prunekit.masks import apply_masks, effective_weight, get_masks, remove_masks

transformers = pytest.importorskip("transformers", reason="the LLM tests need transformers (pip install 'prunekit[llm]')")
pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = 96


def tiny(kind: str, layers: int = 2):
    options = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    torch.manual_seed(0)
    if kind == "llama":
        return transformers.LlamaForCausalLM(transformers.LlamaConfig(**options)).eval()
    return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**options)).eval()


def tokens(samples=6, length=24, seed=1):
    return torch.randint(0, VOCAB, (samples, length), generator=torch.Generator().manual_seed(seed))


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def block_inputs_of_full_forward(model, ids):
    """Every decoder block's hidden-state input in one ordinary forward pass of `model`."""
    _, layers = decoder_layers(model)
    seen = {}
    hooks = [layer.register_forward_pre_hook(
        lambda m, args, kwargs, i=i: seen.__setitem__(i, args[0] if args else kwargs["hidden_states"]),
        with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
    finally:
        for hook in hooks:
            hook.remove()
    return [seen[i] for i in range(len(layers))]


def linear_inputs_of_full_forward(model, ids, block_index):
    """Every Linear input of one block, over all of `ids`, from one ordinary forward pass."""
    _, layers = decoder_layers(model)
    inputs = {}
    hooks = [layer.register_forward_hook(lambda m, args, out, n=name: inputs.setdefault(n, []).append(args[0]))
             for name, layer in block_linears(layers[block_index]).items()]
    try:
        with torch.no_grad():
            for batch in ids.split(4):
                model(input_ids=batch, use_cache=False)
    finally:
        for hook in hooks:
            hook.remove()
    return {name: torch.cat([x.reshape(-1, x.shape[-1]) for x in xs]) for name, xs in inputs.items()}


# ------------------------------------------------------------------------------------------ engine

@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_engine_block_inputs_equal_a_full_forward_of_the_pruned_model(kind):
    model, ids = tiny(kind), tokens()
    path, _ = decoder_layers(model)
    recorded, masks = {}, {}

    def prune_by_magnitude(run):
        recorded[run.index] = torch.cat(run.inputs)
        substitutes = {}
        for name, layer in block_linears(run.block).items():
            mask = row_mask(layer.weight.abs(), 0.5)
            masks[f"{path}.{run.index}.{name}.weight"] = mask
            substitutes[f"{name}.weight"] = layer.weight * mask
        return substitutes

    run_blockwise(model, ids, prune_by_magnitude, batch_size=4)
    apply_masks(model, masks)
    expected = block_inputs_of_full_forward(model, ids)
    for index, hidden in enumerate(expected):
        assert torch.allclose(recorded[index], hidden, atol=1e-5), index


def test_engine_frees_each_blocks_activations_once_the_next_block_has_its_inputs():
    import weakref

    model = tiny("llama", layers=4)
    seen = []

    def check(run):
        seen.append(weakref.ref(run.hidden))
        if run.index >= 2:  # the inputs of two blocks back are gone; only this block's are held
            assert seen[run.index - 2]() is None, run.index
        return None

    run_blockwise(model, tokens(), check, batch_size=4)
    assert len(seen) == 4  # the check ran at blocks 2 and 3


def test_engine_falls_back_to_the_cpu_and_refuses_a_missing_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the fallback is not exercised")
    results = []
    for device in ("cpu", "auto"):
        model = tiny("llama")
        prune_oneshot(model, tokens(), "sparsegpt", sparsity=0.5, device=device)
        results.append(state(model))
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])
    model = tiny("llama")
    before = state(model)
    with pytest.raises(PrunekitError, match="no CUDA GPU"):
        prune_oneshot(model, tokens(), "wanda", sparsity=0.5, device="cuda")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# ------------------------------------------------------------------------------------------ methods

@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_wanda_masks_equal_wanda_recomputed_from_full_forwards(kind):
    """Block i is scored on the inputs it gets when blocks < i are pruned and block i is dense."""
    model, ids = tiny(kind), tokens()
    dense = state(model)
    result = prune_oneshot(model, ids, "wanda", sparsity=0.6, batch_size=4)
    path, layers = decoder_layers(model)
    for index in range(len(layers)):
        check = tiny(kind)
        check.load_state_dict(dense)
        apply_masks(check, {n: m for n, m in result.masks.items() if int(n.split(".")[2]) < index})
        inputs = linear_inputs_of_full_forward(check, ids, index)
        for name, layer in block_linears(decoder_layers(check)[1][index]).items():
            expected = row_mask(layer.weight.abs() * inputs[name].norm(dim=0), 0.6)
            assert torch.equal(result.masks[f"{path}.{index}.{name}.weight"], expected)
            assert (result.masks[f"{path}.{index}.{name}.weight"].sum(1) == 64 - round(0.6 * 64)).all() or \
                layer.in_features != 64


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_sparsegpt_weights_equal_sparsegpt_on_inputs_from_full_forwards(kind):
    model, ids = tiny(kind), tokens()
    dense = state(model)
    prune_oneshot(model, ids, "sparsegpt", nm="2:4", batch_size=4)
    path, layers = decoder_layers(model)
    pruned = {name: effective_weight(model, name).detach() for name in get_masks(model)}
    for index in range(len(layers)):
        check = tiny(kind)
        check.load_state_dict(dense)
        with torch.no_grad():  # blocks before `index` as pruned, the rest dense
            for name, weight in pruned.items():
                if int(name.split(".")[2]) < index:
                    check.get_parameter(name).copy_(weight)
        inputs = linear_inputs_of_full_forward(check, ids, index)
        for name, layer in block_linears(decoder_layers(check)[1][index]).items():
            mask, weight = sparsegpt_prune(layer.weight, inputs[name].T @ inputs[name], parse_nm("2:4"))
            full = f"{path}.{index}.{name}.weight"
            assert torch.equal(get_masks(model)[full], mask)
            assert torch.allclose(pruned[full], weight, atol=1e-4)
            assert (mask.reshape(mask.shape[0], -1, 4).sum(-1) == 2).all()


def test_magnitude_needs_no_data_and_prunes_every_decoder_linear_exactly():
    model = tiny("llama")
    dense = state(model)
    result = prune_oneshot(model, None, "magnitude", nm="4:8")
    assert len(result.masks) == 2 * 7 and result.sparsity == pytest.approx(0.5)
    for name, mask in result.masks.items():
        assert torch.equal(mask, nm_mask(dense[name].abs(), parse_nm("4:8")))
        assert (mask.reshape(mask.shape[0], -1, 8).sum(-1) == 4).all()
    assert torch.equal(model.get_input_embeddings().weight, dense["model.embed_tokens.weight"])


def test_owl_block_sparsities_average_to_the_target_and_are_installed():
    model = tiny("qwen2")
    result = prune_oneshot(model, tokens(), "wanda", sparsity=0.5, owl=OWL(outlier_multiple=3.0, spread=0.1))
    assert sum(result.block_sparsities) / 2 == pytest.approx(0.5)
    assert result.block_sparsities[0] != result.block_sparsities[1]
    for name, mask in result.masks.items():
        block = int(name.split(".")[2])
        assert 1 - mask.float().mean().item() == pytest.approx(result.block_sparsities[block], abs=1 / 64)


# ------------------------------------------------------------------------------------------ bad input

BAD = [
    (dict(method="wanda", sparsity=1.0), "outside"),
    (dict(method="wanda", nm="3:5"), "multiple of m=5"),
    (dict(method="wanda", nm="2:4", owl=True), "OWL"),
    (dict(method="wanda", sparsity=0.5, tokens=torch.zeros(0, 8, dtype=torch.long)), "No calibration tokens"),
    (dict(method="sparsegpt", sparsity=0.5, tokens=torch.zeros(4, 0, dtype=torch.long)), "No calibration tokens"),
    (dict(method="wanda", sparsity=0.5, tokens=None), "needs calibration"),
    (dict(method="sparsegpt", sparsity=0.5, tokens=torch.randn(2, 8)), "integer ids"),
    (dict(method="obs", sparsity=0.5), "Unknown method"),
    (dict(method="wanda", sparsity=0.5, batch_size=0), "batch_size"),
]


@pytest.mark.parametrize("kwargs,message", BAD)
def test_bad_input_raises_and_changes_nothing(kwargs, message):
    model = tiny("llama")
    before = state(model)
    kwargs = dict(kwargs)
    ids = kwargs.pop("tokens") if "tokens" in kwargs else tokens()
    with pytest.raises(PrunekitError, match=message):
        prune_oneshot(model, ids, **kwargs)
    assert not len(get_masks(model))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_failure_in_a_later_block_leaves_the_model_untouched():
    class FailsOnSecondBlock(LayerMethod):  # the first block's weights are rewritten in place before it fails
        name, needs, calls = "fails", "gram", 0

        def prune(self, weight, stats, target):
            self.calls += 1
            if self.calls > 7:
                raise PrunekitError("planted failure")
            return SparseGPT().prune(weight, stats, target)

    model = tiny("llama")
    before = state(model)
    with pytest.raises(PrunekitError, match="planted"):
        prune_oneshot(model, tokens(), FailsOnSecondBlock(), sparsity=0.5)
    assert not len(get_masks(model))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_an_already_masked_model_is_refused():
    model = tiny("llama")
    prune_oneshot(model, None, "magnitude", sparsity=0.5)
    with pytest.raises(PrunekitError, match="remove_masks"):
        prune_oneshot(model, tokens(), "wanda", sparsity=0.6)
    remove_masks(model)
    assert prune_oneshot(model, tokens(), "wanda", sparsity=0.6).sparsity == pytest.approx(0.6, abs=1 / 64)


# ------------------------------------------------------------------------------------------ evaluation

def test_perplexity_equals_the_models_own_loss_over_disjoint_windows():
    model, stream = tiny("llama"), tokens(1, 100, seed=3).flatten()
    result = evaluate_lm(model, stream, window=32)
    total = count = 0
    with torch.no_grad():
        for begin in range(0, 100, 32):
            ids = stream[begin:begin + 32].unsqueeze(0)
            if ids.shape[1] < 2:
                continue
            total += float(model(input_ids=ids, labels=ids).loss) * (ids.shape[1] - 1)
            count += ids.shape[1] - 1
    assert result.tokens == count
    assert result.perplexity == pytest.approx(torch.tensor(total / count).exp().item(), rel=1e-5)
    assert evaluate_lm(model, stream, window=32, reference=result).agreement == 1.0


def test_windows_score_each_token_once_with_context_or_skip_each_windows_first_when_disjoint():
    for length, window, stride in [(100, 32, 8), (33, 32, 1), (64, 16, 15), (100, 32, 32), (64, 16, 16)]:
        scored = []
        for begin, end, first in windows(length, window, stride):
            assert end - begin <= window
            scored += list(range(begin + first, end))
        no_context = set(range(0, length, window)) if stride == window else {0}
        assert scored == [t for t in range(length) if t not in no_context]


def test_recovery_keeps_the_masks_and_lowers_the_calibration_loss():
    model, ids = tiny("llama"), tokens(8, 24)
    prune_oneshot(model, ids, "wanda", sparsity=0.7)
    masks = get_masks(model)
    with pytest.warns(UserWarning, match="memorise"):
        losses = recover(model, ids, steps=30, lr=3e-3, batch_size=4)
    assert sum(losses[-5:]) < sum(losses[:5])
    for name, mask in masks.items():
        assert (effective_weight(model, name)[~mask] == 0).all()
    assert all(not p.requires_grad or p.grad is None for p in model.parameters())
    assert get_masks(model) == masks


def test_recovery_of_a_structurally_pruned_model_trains_its_decoder_linears_only():
    from prunekit.llm import prune_structure

    model, ids = tiny("llama"), tokens(8, 24)
    prune_structure(model, ids, "ffn", 0.5, progress=False)
    frozen = {name: p.detach().clone() for name, p in model.named_parameters()
              if not (".layers." in name and name.endswith("proj.weight"))}
    with pytest.warns(UserWarning, match="memorise"):  # 30 steps × 4 over 8 sequences: 15 passes
        losses = recover(model, ids, steps=30, lr=3e-3, batch_size=4)
    assert sum(losses[-5:]) < sum(losses[:5])
    assert all(torch.equal(p, frozen[name]) for name, p in model.named_parameters() if name in frozen)
    assert not get_masks(model)


def test_distillation_loss_is_the_teachers_kl_and_recovery_closes_it():
    """With a teacher, recovery's loss is mean over tokens of Σ_v p_t(v)(log p_t(v) − log p_s(v)), written
    out here with an explicit loop; it is 0 against the model itself and falls as the pruned model
    learns the dense one's distributions, masks held."""
    import copy

    dense, ids = tiny("llama"), tokens(8, 24)
    assert recover(copy.deepcopy(dense), ids[:2], steps=1, lr=1e-12, batch_size=2, teacher=dense)[0] < 1e-6

    model = copy.deepcopy(dense)
    prune_oneshot(model, ids, "wanda", sparsity=0.7)
    masks = get_masks(model)
    with torch.no_grad():
        t = dense(input_ids=ids[:2]).logits.log_softmax(-1)
        s = model(input_ids=ids[:2]).logits.log_softmax(-1)
    first = recover(copy.deepcopy(model), ids[:2], steps=1, lr=1e-12, batch_size=2, seed=0, teacher=dense)[0]
    # batch_size=2 over 2 sequences draws them with replacement: compare with the draw it made
    drawn = torch.randint(0, 2, (2,), generator=torch.Generator().manual_seed(0))
    per_sequence = [sum(float((t[b, i].exp() * (t[b, i] - s[b, i])).sum()) for i in range(ids.shape[1]))
                    for b in range(2)]
    assert first == pytest.approx(sum(per_sequence[int(b)] for b in drawn) / (2 * ids.shape[1]), rel=1e-4)
    assert min(per_sequence) > 0

    with pytest.warns(UserWarning, match="memorise"):
        losses = recover(model, ids, steps=30, lr=3e-3, batch_size=4, teacher=dense)
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5])
    for name, mask in masks.items():
        assert (effective_weight(model, name)[~mask] == 0).all()
    assert all(p.grad is None for p in dense.parameters())


def test_input_statistics_add_up_over_batches():
    x = torch.randn(50, 8)
    whole, parts = InputStatistics(8, gram=True), InputStatistics(8, gram=True)
    whole.add(x)
    for part in x.split(7):
        parts.add(part)
    assert torch.allclose(whole.norms, x.norm(dim=0)) and torch.allclose(parts.gram, x.T @ x, atol=1e-4)


def test_layers_fed_the_same_tensor_share_one_accumulator_with_their_own_inputs():
    model, ids = tiny("llama"), tokens()
    captured = {}

    def check(run):
        stats = run.input_statistics(gram=True)
        captured.update(stats)
        return None

    run_blockwise(model, ids, check, batch_size=4)  # the last block's statistics stay in `captured`
    attn, mlp = "self_attn.", "mlp."
    assert captured[attn + "q_proj"] is captured[attn + "k_proj"] is captured[attn + "v_proj"]
    assert captured[mlp + "gate_proj"] is captured[mlp + "up_proj"]
    assert captured[attn + "o_proj"] is not captured[attn + "q_proj"]
    inputs = linear_inputs_of_full_forward(model, ids, 1)
    for name, x in inputs.items():
        assert captured[name].tokens == x.shape[0]
        assert torch.allclose(captured[name].gram, x.T @ x, rtol=1e-4, atol=1e-3)


def test_disk_undo_restores_every_saved_tensor_and_leaves_no_file():
    from prunekit.llm.undo import DiskUndo

    def undo_folders():
        return {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("prunekit-undo-")}

    before = undo_folders()
    a, b = torch.randn(4, 3), torch.randn(5)
    original = (a.clone(), b.clone())
    with pytest.raises(RuntimeError, match="later"):
        with DiskUndo() as undo:
            undo.save({"a": a})
            a.mul_(0)
            undo.save({"b": b})
            b.add_(1)
            assert len(undo_folders() - before) == 1
            raise RuntimeError("later failure")
    assert torch.equal(a, original[0]) and torch.equal(b, original[1])
    assert undo_folders() == before
    with DiskUndo() as undo:  # success: the changes stay
        undo.save({"a": a})
        a.mul_(2)
    assert torch.equal(a, 2 * original[0])
