"""The latent prior's sampling temperature: a precision/recall knob, and where real data sits on it.

``nb_latent_flow`` is fitted (seed 0) on 75 % of the training cells of PBMC3K fold 0; the other 25 %
(stratified by cell type) are calibration cells that no fit sees. For each temperature of the
flow-matching prior (``prior_params.sampling_temperature``, the scale of the ODE's starting noise) the
model samples

- as many cells as the calibration cells, with their type counts (3 sampling seeds): k-NN precision and
  recall (k = 5) against them, in a scaler + PCA space fitted on both sets (``cal_*`` columns);
- the fold's ``matched`` plan, scored against the held-out test cells by the evaluation's fair
  protocol (:func:`cellsynth.evaluation.fair.fair_metrics`, five test half-splits).

Two sets drawn from one distribution have equal expected k-NN precision and recall, so the
temperature where ``cal_precision`` meets ``cal_recall`` is the one a user can choose without touching
the test cells. The temperature only changes sampling, and every fit is seeded, so each row refits the
same model (the public API has no way to change a fitted prior's temperature)::

    python benchmarks/temperature_sweep.py [--temperatures 0.8 1.0 1.2 ...] [--threads 2]

Run ``make run`` first (it writes the fold). Prints one row per temperature with the 1-minute load
average.
"""

from __future__ import annotations

import argparse
import os
import time

from pbmc3k_fold import fair_scores, load_fold

SEED = 0
CALIBRATION_FRACTION = 0.25
CALIBRATION_SEEDS = (500, 501, 502)
TEST_SAMPLE_SEED = 10_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--temperatures", nargs="*", type=float, default=[0.8, 1.0, 1.2, 1.4, 1.7, 2.0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    train, test, plan = load_fold(args.threads)
    import numpy as np
    import pandas as pd
    from sklearn.model_selection import train_test_split

    from cellsynth.config import EvaluationSettings
    from cellsynth.generators import GENERATORS
    from cellsynth.metrics import ReferenceSpace, as_dense, compare

    settings = EvaluationSettings.from_params({})
    labels = train.obs["cell_type"].astype(str).to_numpy()
    fit_idx, cal_idx = train_test_split(np.arange(train.n_obs), test_size=CALIBRATION_FRACTION,
                                        stratify=labels, random_state=SEED)
    fit_cells, calibration = train[fit_idx].copy(), train[cal_idx]
    X_cal = as_dense(calibration.X)
    cal_plan = pd.Series(labels[cal_idx]).value_counts().to_dict()

    rows = []
    for temperature in args.temperatures:
        load = round(os.getloadavg()[0], 2)
        start = time.perf_counter()
        model = GENERATORS["nb_latent_flow"](prior_params={"sampling_temperature": temperature})
        model.fit(fit_cells, seed=SEED, progress=False)
        fit_s = time.perf_counter() - start
        scores = []
        for seed in CALIBRATION_SEEDS:
            X_syn = as_dense(model.sample(len(cal_idx), cell_types=cal_plan, seed=seed)[:, train.var_names].X)
            space = ReferenceSpace(n_components=settings.n_pca, seed=seed).fit(np.vstack([X_cal, X_syn]))
            knn = compare(space.transform(X_cal), space.transform(X_syn), seed=seed, k=settings.knn_k, c2st=False)
            scores.append((knn["precision"], knn["recall"]))
        cal_precision, cal_recall = np.mean(scores, axis=0)
        cells = model.sample(sum(plan.values()), cell_types=plan, seed=TEST_SAMPLE_SEED)
        values = fair_scores(train, test, cells, "nb_latent_flow", settings)
        rows.append({
            "temperature": temperature, "cal_precision": round(cal_precision, 3), "cal_recall": round(cal_recall, 3),
            "test_detection_auc": round(values[("fair", "c2st_auc")], 3),
            "test_precision": round(values[("fair", "precision")], 3),
            "test_recall": round(values[("fair", "recall")], 3),
            "test_within_type_auc": round(values[("within_type", "c2st_auc")], 3),
            "memorisation": round(values[("fair", "memorization")], 3),
            "fit_s": round(fit_s, 1), "load1_start": load,
        })
        print(pd.DataFrame(rows[-1:]).to_string(index=False), flush=True)
    pd.set_option("display.width", 250)
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
