"""Experiment e: curvature of the masked problem vs the rewinding point τ.

For the MNIST-1D MLP's IMP ticket mask m (experiment a's run, at a chosen round) and the
dense run's weights w_τ at several iterations τ, the restricted Hessian of
L_m(w) = L(w ⊙ m) at w_τ ⊙ m on 1,000 training samples: λmax, λmin and κ = λmax/|λmin|
by Lanczos (prunekit.landscape). The unmasked network at the same points is the reference.
"""

from __future__ import annotations

from pathlib import Path

from ..landscape import restricted_spectrum
from ..lottery import Experiment
from ..masks import get_masks
from ..plots import line_plot
from .common import mean_std, mnist1d_config, pm, write_outputs
from .progress import WorkProgress


def experiment_e(out: Path, seeds, scale: str, log, progress: WorkProgress) -> str:
    folder = out / "e_landscape"
    folder.mkdir(parents=True, exist_ok=True)
    mask_round = 10 if scale == "full" else 2
    samples, steps = (1000, 40) if scale == "full" else (200, 10)
    values: dict[tuple, dict[str, list]] = {}
    taus = mnist1d_config(scale).keep_steps
    density = []
    progress.expect(len(seeds))
    for seed in seeds:
        exp = Experiment(mnist1d_config(scale, seed), out / "runs", log=log)
        exp.run()  # experiment a's run; resumes instantly when it is finished
        masks = get_masks(exp.load_state(f"round{mask_round}_ticket"))
        density.append(masks.density())
        x, y = exp.fit.tensors[0][:samples], exp.fit.tensors[1][:samples]
        for tau in taus:
            model = exp.fresh(seed)
            model.load_state_dict(exp.run_dir.load_checkpoint(f"step{tau}"))
            for which, m in (("ticket mask", masks), ("dense", None)):
                spec = restricted_spectrum(model, x, y, m if m is not None else {}, steps=steps, seed=seed)
                log(f"[landscape] seed {seed} τ={tau} {which}: λmax={spec['lambda_max']:.4g} "
                    f"λmin={spec['lambda_min']:.4g} κ={spec['condition']:.4g}")
                for key in ("lambda_max", "lambda_min", "condition", "loss"):
                    values.setdefault((which, tau), {}).setdefault(key, []).append(spec[key])
        progress.advance(f"seed {seed}")
    table = []
    for tau in taus:
        row = {"τ": tau}
        for which in ("ticket mask", "dense"):
            v = values[(which, tau)]
            row[f"{which}: λmax"] = pm(v["lambda_max"], 3)
            row[f"{which}: λmin"] = pm(v["lambda_min"], 4)
            row[f"{which}: κ=λmax/|λmin|"] = pm(v["condition"], 1)
        row["L_m(w_τ⊙m)"] = pm(values[("ticket mask", tau)]["loss"], 3)
        table.append(row)
    xs = [max(t, 1) for t in taus]
    line_plot(folder / "plot_lambda_max.png", "rewinding point τ (iteration; 0 plotted at 1)", "λmax",
              {w: (xs, [mean_std(values[(w, t)]["lambda_max"])[0] for t in taus]) for w in ("ticket mask", "dense")},
              errors={w: [mean_std(values[(w, t)]["lambda_max"])[1] for t in taus] for w in ("ticket mask", "dense")},
              x_log=True, title="Top eigenvalue of the (restricted) Hessian vs τ")
    line_plot(folder / "plot.png", "rewinding point τ (iteration; 0 plotted at 1)", "κ = λmax / |λmin|",
              {w: (xs, [mean_std(values[(w, t)]["condition"])[0] for t in taus]) for w in ("ticket mask", "dense")},
              errors={w: [mean_std(values[(w, t)]["condition"])[1] for t in taus] for w in ("ticket mask", "dense")},
              x_log=True, title="Condition number of the (restricted) Hessian vs τ")
    return write_outputs(folder, table, list(table[0]),
                         title=f"e. MNIST-1D MLP: restricted Hessian at w_τ ⊙ m vs rewinding point τ "
                               f"(mean ± std over {len(seeds)} seeds)",
                         notes=f"m = the IMP ticket mask of round {mask_round} "
                               f"({100 * mean_std(density)[0]:.1f} % of weights left); Lanczos with {steps} steps "
                               f"on {samples} training samples; 'dense' = the unmasked network at w_τ.")
