"""What makes the count generators' cells pass the fair test: one change at a time, on PBMC3K fold 0.

Each variant (a generator and hyperparameters over its ``default`` preset) is fitted on
``data/05_model_input/pbmc3k/fold_0/train.h5ad`` with seed 0, samples the fold's ``matched`` plan
(the test cells' types and numbers) and is scored with the evaluation's fair protocol
(:func:`cellsynth.evaluation.fair.fair_metrics`: five test half-splits, mean shown) against the
held-out cells. The variants separate the decoder (scVI's one dispersion per gene vs one per gene and
cell), where latents come from (scVI's ``N(0, I)`` prior, the aggregate posterior of training cells,
or a learned prior), what the learned prior is fitted on (posterior means or draws) and how it is
sampled (ODE steps, the temperature of its starting noise)::

    python benchmarks/count_ablation.py [--variants NAME ...] [--threads 2]

Run ``make run`` first (it writes the fold). Prints one row per variant with fit seconds and the
1-minute load average; numbers depend on the thread count (torch), not on the load.
"""

from __future__ import annotations

import argparse
import os
import time

from pbmc3k_fold import fair_scores, load_fold

SEED = 0

#: name -> (generator, hyperparameters over its default preset)
VARIANTS: dict[str, tuple[str, dict]] = {
    "scvi, z ~ N(0, I)": ("scvi", {"latent_sampling": "prior"}),
    "scvi, z from training posteriors (default)": ("scvi", {}),
    "scvi, dispersion gene-cell": ("scvi", {"dispersion": "gene-cell"}),
    "nb_latent_flow, dispersion gene": ("nb_latent_flow", {"dispersion": "gene"}),
    "nb_latent_flow, prior on posterior means": ("nb_latent_flow", {"posterior_draws": 0}),
    "nb_latent_flow (default: 3 posterior draws)": ("nb_latent_flow", {}),
    "nb_latent_flow, 10 posterior draws": ("nb_latent_flow", {"posterior_draws": 10}),
    "nb_latent_flow, ODE in 64 midpoint steps": ("nb_latent_flow", {"prior_params": {"integration_steps": 64}}),
    "nb_latent_flow, sampling_temperature 0.8": ("nb_latent_flow", {"prior_params": {"sampling_temperature": 0.8}}),
    "nb_latent_flow, sampling_temperature 1.2": ("nb_latent_flow", {"prior_params": {"sampling_temperature": 1.2}}),
    "nb_latent_maf (default)": ("nb_latent_maf", {}),
    "nb_latent_moe (default)": ("nb_latent_moe", {}),
}
SHOWN = [("fair", "c2st_auc"), ("fair", "precision"), ("fair", "recall"), ("fair", "memorization"),
         ("fair", "wd"), ("within_type", "c2st_auc"), ("within_type", "correlation_r")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), help="names of VARIANTS (default: all)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    train, test, plan = load_fold(args.threads)
    import pandas as pd

    from cellsynth.config import EvaluationSettings
    from cellsynth.generators import GENERATORS

    settings = EvaluationSettings.from_params({})

    def scores(cells, name: str) -> dict:
        values = fair_scores(train, test, cells, name, settings)
        return {f"{p[:4]}.{m}": round(values[(p, m)], 3) for p, m in SHOWN if (p, m) in values}

    rows = [{"variant": "real (B vs A floor)", **scores(None, "floor")}]
    for name in args.variants:
        generator, hyperparameters = VARIANTS[name]
        load = round(os.getloadavg()[0], 2)
        start = time.perf_counter()
        model = GENERATORS[generator](**hyperparameters)
        history = model.fit(train, seed=SEED, progress=False)
        fit_s = time.perf_counter() - start
        cells = model.sample(sum(plan.values()), cell_types=plan, seed=SEED + 10_000)
        rows.append({"variant": name, **scores(cells, name), "epochs": len(history.train_loss),
                     "fit_s": round(fit_s, 1), "load1_start": load})
        print(pd.DataFrame(rows[-1:]).to_string(index=False), flush=True)
    pd.set_option("display.width", 250)
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
