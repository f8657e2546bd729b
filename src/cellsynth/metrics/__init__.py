"""Metrics of synthetic single-cell data (plain numpy/scipy/scikit-learn; no Kedro imports).

Space
    :class:`ReferenceSpace` — StandardScaler + PCA(50, seed) fitted on a fold's real training cells;
    every distribution metric is computed in it.
The paper's metrics (lower is better)
    :func:`wd` (mean 1-D Wasserstein-1 over PCs), :func:`cd` (mean |ΔPearson| over the PC×PC matrix),
    :func:`mmd_biased` (RBF, averaged over :data:`PAPER_GAMMAS`); :func:`paper_metrics` runs all three.
Beyond the paper
    :func:`mmd_unbiased`, :func:`c2st_auc` (classifier two-sample test, 0.5 = indistinguishable),
    :func:`knn_precision_recall` (Kynkäänniemi et al. 2019), :func:`memorization_score` (≈1 healthy,
    ≪1 copying), :func:`split_halves` (stratified halves A/B of the held-out cells: the honest floor
    is B vs A).
All at once
    :func:`compare`, :func:`compare_by_type`; :data:`METRIC_DIRECTIONS` says which way is better.
Classification utility (paper 4.4)
    :func:`classification_utility` (random forest on real, or real + synthetic, cells; scored on the
    test cells), :func:`upsample_counts` (the paper's top-up of rare types to the Q3 class size).
"""

from cellsynth.metrics.beyond import (
    Memorization,
    PrecisionRecall,
    c2st_auc,
    c2st_classifier,
    knn_precision_recall,
    memorization_score,
    mmd_unbiased,
    split_halves,
)
from cellsynth.metrics.compare import (
    METRIC_DIRECTIONS,
    METRIC_TARGETS,
    compare,
    compare_by_type,
    metric_direction,
)
from cellsynth.metrics.paper import PAPER_GAMMAS, cd, mmd_biased, paper_metrics, wd
from cellsynth.metrics.space import ReferenceSpace, as_dense
from cellsynth.metrics.utility import classification_utility, upsample_counts, utility_frame

__all__ = [
    "METRIC_DIRECTIONS",
    "METRIC_TARGETS",
    "PAPER_GAMMAS",
    "Memorization",
    "PrecisionRecall",
    "ReferenceSpace",
    "as_dense",
    "c2st_auc",
    "c2st_classifier",
    "cd",
    "classification_utility",
    "compare",
    "compare_by_type",
    "knn_precision_recall",
    "memorization_score",
    "metric_direction",
    "mmd_biased",
    "mmd_unbiased",
    "paper_metrics",
    "split_halves",
    "upsample_counts",
    "utility_frame",
    "wd",
]
