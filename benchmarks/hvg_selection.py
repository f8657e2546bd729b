"""Which cells choose the HVGs, and what that does to the fair protocol's k-NN precision and recall.

PBMC3K fold 0 (the cells and folds ``make run`` writes), 2,000 HVGs (seurat_v3) chosen on

- ``train``: the fold's training cells (``splitting.hvg_cells: train``, the default);
- ``all``: every cell, test cells included (``splitting.hvg_cells: all``, the paper's PBMC3K);
- ``test``: the test cells alone (a diagnostic, not an option: it turns the effect around).

For each gene set the evaluation's fair protocol (:func:`cellsynth.evaluation.fair.fair_metrics`, five
test half-splits) scores the floor (half B against half A), the real training cells (subsampled to B's
type counts in each repeat), and each generator fitted on the training cells (``--fit-seeds``, default 0)
and sampled with the fold's ``matched`` plan (seed 10,000). Real training cells are what a perfect model
of them would sample, so their row is the best any fitted generator can expect. Also prints, per gene set, the training cells' total
variance over the test cells' in the chosen genes and in the other expressed genes::

    python benchmarks/hvg_selection.py [--generators nb_latent_flow scvi] [--choices train all test]
                                       [--fit-seeds 0 1 ...] [--threads 2]

Prints one row per gene set and compared set, with the 1-minute load average.
"""

from __future__ import annotations

import argparse
import os
import time

from pbmc3k_fold import FOLD_DIR, ROOT, fair_scores, load_fold

SAMPLE_SEED = 10_000
GENE_CHOICES = ("train", "all", "test")


def fold_parts(cells, folds, is_test, choice: str):
    """``(train, test)`` of fold 0 on the 2,000 HVGs chosen by ``choice``'s cells."""
    from cellsynth.data import make_fold
    from cellsynth.data.splits import select_hvgs

    if choice != "test":
        return make_fold(cells, folds, fold=0, n_top_genes=2000, hvg_cells=choice)
    genes = select_hvgs(cells[is_test], n_top_genes=2000)
    return cells[~is_test][:, genes].copy(), cells[is_test][:, genes].copy()


def gene_variances(cells, is_test):
    """Per gene: variance of the log-normalised ``X`` in the training and in the test cells, and
    whether the gene is expressed in at least 1 % of the cells."""
    from cellsynth.metrics import as_dense

    X = as_dense(cells.X)
    return X[~is_test].var(axis=0), X[is_test].var(axis=0), (X > 0).mean(axis=0) >= 0.01


def variance_ratio(variances, chosen) -> tuple[float, float]:
    """Total training-cell variance ÷ total test-cell variance over the ``chosen`` genes (a mask) and
    over the other expressed genes."""
    var_train, var_test, expressed = variances
    others = ~chosen & expressed
    return (float(var_train[chosen].sum() / var_test[chosen].sum()),
            float(var_train[others].sum() / var_test[others].sum()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--generators", nargs="*", default=["nb_latent_flow", "scvi"])
    parser.add_argument("--choices", nargs="*", default=list(GENE_CHOICES), choices=GENE_CHOICES)
    parser.add_argument("--fit-seeds", nargs="*", type=int, default=[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    _, _, plan = load_fold(args.threads)
    import anndata as ad
    import pandas as pd

    from cellsynth.config import EvaluationSettings
    from cellsynth.generators import GENERATORS

    cells = ad.read_h5ad(ROOT / "data" / "03_primary" / "pbmc3k" / "normalised_cells.h5ad")
    folds = pd.read_parquet(ROOT / "data" / "04_feature" / "pbmc3k" / "fold_assignments.parquet")
    settings = EvaluationSettings.from_params({})
    is_test = folds.loc[cells.obs_names.astype(str), "test_fold"].to_numpy() == 0
    variances = gene_variances(cells, is_test)
    rows = []

    def score(choice: str, name: str, train, test, compared, fit_s: float, load: float, seed: int | None = None) -> None:
        values = fair_scores(train, test, compared, name, settings)
        rows.append({
            "hvgs_chosen_on": choice, "compared": name, "fit_seed": "" if seed is None else seed,
            "detection_auc": round(values[("fair", "c2st_auc")], 3),
            "precision": round(values[("fair", "precision")], 3),
            "recall": round(values[("fair", "recall")], 3),
            "within_type_auc": round(values[("within_type", "c2st_auc")], 3),
            "fit_s": round(fit_s, 1), "load1_start": load,
        })
        print(pd.DataFrame(rows[-1:]).to_string(index=False, header=len(rows) == 1), flush=True)

    for choice in args.choices:
        train, test = fold_parts(cells, folds, is_test, choice)
        chosen, others = variance_ratio(variances, cells.var_names.isin(train.var_names))
        print(f"HVGs chosen on {choice}: variance of the training cells / of the test cells {chosen:.3f} over "
              f"the 2,000 HVGs, {others:.3f} over the other expressed genes", flush=True)
        score(choice, "real (B vs A floor)", train, test, None, 0.0, round(os.getloadavg()[0], 2))
        score(choice, "real training cells", train, test, train, 0.0, round(os.getloadavg()[0], 2))
        for name in args.generators:
            for seed in args.fit_seeds:
                load = round(os.getloadavg()[0], 2)
                start = time.perf_counter()
                model = GENERATORS[name]()
                model.fit(train, seed=seed, progress=False)
                fit_s = time.perf_counter() - start
                synthetic = model.sample(sum(plan.values()), cell_types=plan, seed=SAMPLE_SEED)
                score(choice, name, train, test, synthetic, fit_s, load, seed)
    pd.set_option("display.width", 250)
    print(f"\nPBMC3K fold 0 ({FOLD_DIR.relative_to(ROOT)}'s cells), fair protocol, means over five half-splits")
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
