"""Metrics beyond the paper: an unbiased MMD, a classifier two-sample test, k-NN precision and recall,
a memorisation score, and the stratified split of held-out cells that gives the honest real-vs-real floor.

All functions take already-projected arrays (cells × features, normally the PCA space of
:class:`~cellsynth.metrics.ReferenceSpace`) and are deterministic given ``seed``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from cellsynth.metrics.paper import (
    PAPER_GAMMAS,
    _check_gammas,
    _pair,
    mmd_from_sums,
    mmd_kernel_sums,
    squared_distance_block,
)

__all__ = [
    "Memorization",
    "PrecisionRecall",
    "c2st_auc",
    "c2st_classifier",
    "knn_precision_recall",
    "memorization_score",
    "mmd_unbiased",
    "split_halves",
]

# Query rows per block of exact pairwise distances (block = rows × n_reference float64 entries).
_BLOCK_ENTRIES = 4_000_000


def _blockwise(
    queries: np.ndarray, reference: np.ndarray, reduce: Callable[[np.ndarray, slice], np.ndarray]
) -> np.ndarray:
    """Apply ``reduce(squared_distances_block, row_slice)`` to squared Euclidean distance blocks
    between ``queries`` and ``reference`` (:func:`~cellsynth.metrics.paper.squared_distance_block`)
    and concatenate the per-row results."""
    rows = max(1, _BLOCK_ENTRIES // max(1, len(reference)))
    sq_queries = np.einsum("ij,ij->i", queries, queries)
    sq_reference = np.einsum("ij,ij->i", reference, reference)
    out = []
    for start in range(0, len(queries), rows):
        rows_slice = slice(start, min(start + rows, len(queries)))
        d2 = squared_distance_block(queries[rows_slice], reference, sq_queries[rows_slice], sq_reference)
        out.append(reduce(d2, rows_slice))
    return np.concatenate(out)


def _nearest_distance(queries: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Euclidean distance from each query to its nearest reference point (exact, blockwise)."""
    return np.sqrt(_blockwise(queries, reference, lambda d2, _: d2.min(axis=1)))


def _kth_neighbour_radius(x: np.ndarray, k: int) -> np.ndarray:
    """Distance from each point of ``x`` to its k-th nearest *other* point of ``x``."""

    def reduce(d2: np.ndarray, rows: slice) -> np.ndarray:
        # Exclude the point itself (duplicates of it still count as neighbours at distance 0).
        d2[np.arange(d2.shape[0]), np.arange(rows.start, rows.stop)] = np.inf
        # a copy: a view of the partitioned block would keep the whole block alive until the end
        # (all blocks together: the n x n matrix the blocking avoids)
        return np.partition(d2, k - 1, axis=1)[:, k - 1].copy()

    return np.sqrt(_blockwise(x, x, reduce))


def mmd_unbiased(a, b, gammas: Sequence[float] = PAPER_GAMMAS) -> float:
    """Unbiased (U-statistic) squared MMD with RBF kernels, averaged over ``gammas``.

    .. math::  \\mathrm{MMD}^2_u = \\frac{1}{|\\Gamma|} \\sum_{\\gamma \\in \\Gamma} \\Big[
               \\frac{1}{n(n-1)} \\sum_{i \\ne i'} k_\\gamma(a_i, a_{i'})
               + \\frac{1}{m(m-1)} \\sum_{j \\ne j'} k_\\gamma(b_j, b_{j'})
               - \\frac{2}{nm} \\sum_{i,j} k_\\gamma(a_i, b_j) \\Big],
               \\quad k_\\gamma(x, y) = e^{-\\gamma \\|x-y\\|^2}

    (Gretton et al. 2012, eq. 3). **Lower is better**; its expectation is 0 when both sets come from
    one distribution, whatever their sizes, so small negative values are noise. Unlike the paper's
    biased estimator it does not depend on the set sizes through the kernel diagonal. Needs at least
    2 cells per set.

    Parameters
    ----------
    a, b : array-like, shape (n, d) and (m, d)
    gammas : sequence of float, default :data:`~cellsynth.metrics.PAPER_GAMMAS`

    Returns
    -------
    float
    """
    a, b = _pair(a, b)
    gammas = _check_gammas(gammas)
    return mmd_from_sums(mmd_kernel_sums(a, b, gammas), len(a), len(b), unbiased=True)


def _make_classifier(classifier: str, seed: int):
    if classifier == "hist_gb":
        return HistGradientBoostingClassifier(random_state=seed)
    if classifier == "logistic":
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    raise ValueError(f"unknown classifier {classifier!r}; use 'hist_gb' or 'logistic'")


def c2st_classifier(n_cells: int, classifier: str = "hist_gb", small_set_cells: int | None = None) -> str:
    """The C2ST classifier for sets of ``n_cells`` (the smaller side): ``"logistic"`` below ``small_set_cells``.

    ``HistGradientBoostingClassifier`` needs 20 samples per leaf: on ~24 vs 24 cells it never splits
    and returns exactly 0.5, even for two sets 3 SD apart in every dimension; the standardised
    logistic regression still sees such differences. ``None`` keeps ``classifier`` at every size.
    """
    return "logistic" if small_set_cells is not None and n_cells < small_set_cells else classifier


def c2st_auc(
    real,
    synth,
    seed: int = 0,
    n_splits: int = 5,
    classifier: str = "hist_gb",
    n_threads: int | None = 1,
) -> float:
    """Classifier two-sample test: cross-validated ROC-AUC of a classifier telling real from synthetic.

    The larger set is first subsampled (without replacement, seeded) to the size *n* of the smaller
    one, so the task is balanced. Cells are labelled 0 (real) / 1 (synthetic), split by
    ``StratifiedKFold(n_splits, shuffle=True, random_state=seed)``, and

    .. math::  \\mathrm{C2ST} = \\frac{1}{K} \\sum_{k=1}^{K} \\mathrm{AUC}\\big(y_{\\text{fold } k},
               \\hat p_{\\text{fold } k}(\\text{synthetic} \\mid x)\\big)

    with the classifier fitted on the other folds (Lopez-Paz & Oquab 2017, with AUC instead of
    accuracy). 0.5 = the classifier cannot tell the sets apart, 1 = perfectly separable. **Lower is
    better, down to 0.5**; values below 0.5 are noise. Unlike WD/CD/MMD it sees the joint
    distribution of all features, with a flexible decision boundary.

    Parameters
    ----------
    real, synth : array-like, shape (n, d) and (m, d)
    seed : int
        Seeds the subsampling, the folds, and the classifier.
    n_splits : int, default 5
        Number of folds; reduced to the balanced set size *n* if that is smaller (needs *n* ≥ 2).
    classifier : {"hist_gb", "logistic"}
        ``HistGradientBoostingClassifier(random_state=seed)`` (default), or a standardised
        ``LogisticRegression`` (only sees linear differences, e.g. mean shifts).
    n_threads : int or None, default 1
        OpenMP/BLAS threads while fitting (``threadpoolctl``); ``None`` leaves the libraries' default.
        One thread is fast for the usual sizes (hundreds to a few thousand cells × 50 PCs), is immune
        to the heavy slowdown of OpenMP on oversubscribed cores, and gives the same value on any machine.

    Returns
    -------
    float
        Mean ROC-AUC over the folds.
    """
    real, synth = _pair(real, synth)
    rng = np.random.default_rng(seed)
    n = min(len(real), len(synth))
    if n < 2:
        raise ValueError("c2st_auc needs at least 2 cells in each set")
    if len(real) > n:
        real = real[np.sort(rng.choice(len(real), n, replace=False))]
    if len(synth) > n:
        synth = synth[np.sort(rng.choice(len(synth), n, replace=False))]
    X = np.vstack([real, synth])
    y = np.repeat([0, 1], n)
    folds = StratifiedKFold(n_splits=min(n_splits, n), shuffle=True, random_state=seed)
    aucs = []
    with threadpool_limits(limits=n_threads):
        for train_idx, test_idx in folds.split(X, y):
            model = _make_classifier(classifier, seed).fit(X[train_idx], y[train_idx])
            aucs.append(roc_auc_score(y[test_idx], model.predict_proba(X[test_idx])[:, 1]))
    return float(np.mean(aucs))


class PrecisionRecall(NamedTuple):
    """k-NN precision (fidelity) and recall (coverage), both in [0, 1], higher is better."""

    precision: float
    recall: float


def knn_precision_recall(real, synth, k: int = 5) -> PrecisionRecall:
    """Improved precision and recall of Kynkäänniemi et al. (2019) with k-NN manifolds.

    The manifold of a set :math:`S` is the union of balls around its points, each with radius the
    distance to that point's k-th nearest other point of :math:`S`:

    .. math::  f(x, S) = \\mathbb{1}\\big[\\exists\\, s \\in S:\\ \\|x - s\\| \\le \\|s - \\mathrm{NN}_k(s, S)\\|\\big]

    .. math::  \\mathrm{precision} = \\frac{1}{m} \\sum_{j} f(\\text{synth}_j, \\text{real}), \\qquad
               \\mathrm{recall} = \\frac{1}{n} \\sum_{i} f(\\text{real}_i, \\text{synth})

    Precision is the fraction of synthetic cells that fall on the real manifold (fidelity); recall
    the fraction of real cells that fall on the synthetic manifold (coverage, e.g. low for a
    collapsed generator). **Both higher is better**; two samples of one distribution give high values
    but not 1 (see the measured real-vs-real floor). Distances are exact Euclidean, computed blockwise.

    Parameters
    ----------
    real, synth : array-like, shape (n, d) and (m, d)
        Each needs more than ``k`` cells.
    k : int, default 5

    Returns
    -------
    PrecisionRecall
        ``(precision, recall)``.
    """
    real, synth = _pair(real, synth)
    if k < 1:
        raise ValueError("k must be >= 1")
    if len(real) <= k or len(synth) <= k:
        raise ValueError(f"knn_precision_recall needs more than k={k} cells in each set")

    def covered(queries: np.ndarray, reference: np.ndarray) -> np.ndarray:
        radius2 = _kth_neighbour_radius(reference, k) ** 2
        return _blockwise(queries, reference, lambda d2, _: (d2 <= radius2[None, :]).any(axis=1))

    return PrecisionRecall(
        precision=float(np.mean(covered(synth, real))), recall=float(np.mean(covered(real, synth)))
    )


class Memorization(NamedTuple):
    """Result of :func:`memorization_score`."""

    score: float
    """median synthetic-to-train distance ÷ median holdout-to-train distance (≈1 healthy, ≪1 copying)."""
    close_fraction: float
    """fraction of synthetic cells closer to a training cell than 5% of held-out real cells are."""
    median_synthetic: float
    median_holdout: float


def memorization_score(synth, train, holdout, quantile: float = 0.05) -> Memorization:
    """Does the generator copy its training cells? Nearest-training-cell distances, relative to real.

    With :math:`d(x) = \\min_{t \\in \\text{train}} \\|x - t\\|` the distance to the closest
    training cell,

    .. math::  \\mathrm{score} = \\frac{\\operatorname{median}_{s \\in \\text{synth}} d(s)}
                                      {\\operatorname{median}_{h \\in \\text{holdout}} d(h)}, \\qquad
               \\mathrm{close\\_fraction} = \\frac{1}{m} \\sum_{s} \\mathbb{1}\\big[d(s) < q_{0.05}\\big]

    where :math:`q_{0.05}` is the ``quantile`` (default 5th percentile) of :math:`d` over the held-out
    real cells. Held-out real cells come from the same distribution as the training cells without
    being them, so a generator that generalises gives **score ≈ 1** and close_fraction ≈ 0.05; a
    generator that copies training cells gives score ≪ 1 (0 for exact copies) and close_fraction → 1.
    Score ≫ 1 means the samples are far from every training cell (poor fidelity, not privacy): read it
    with precision/recall. **Closer to 1 is better** (below 1 is the concern). The holdout must not
    overlap the training cells (score is inf/nan if their median distance is 0).

    Parameters
    ----------
    synth, train, holdout : array-like, shape (m, d), (n_train, d), (n_holdout, d)
        In one common space (e.g. the fold's PCA space); ``holdout`` are real cells not used to train
        the generator, ideally as many as ``synth``.
    quantile : float, default 0.05

    Returns
    -------
    Memorization
        ``(score, close_fraction, median_synthetic, median_holdout)``.
    """
    synth, train = _pair(synth, train)
    _, holdout = _pair(train, holdout)
    d_synth = _nearest_distance(synth, train)
    d_holdout = _nearest_distance(holdout, train)
    med_s, med_h = float(np.median(d_synth)), float(np.median(d_holdout))
    with np.errstate(divide="ignore", invalid="ignore"):
        score = float(np.float64(med_s) / np.float64(med_h))
    threshold = np.quantile(d_holdout, quantile)
    return Memorization(
        score=score,
        close_fraction=float(np.mean(d_synth < threshold)),
        median_synthetic=med_s,
        median_holdout=med_h,
    )


def split_halves(labels, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split cells into two disjoint halves A and B, stratified by label and seeded.

    Within each label (in sorted order) the cells are shuffled with ``numpy.random.default_rng(seed)``
    and ⌊n/2⌋ go to each half. For a label with an odd count n ≥ 3 the extra cell goes to the half
    that is smaller so far (a seeded coin flip on a tie), so |A| and |B| differ by at most one apart
    from singletons; a label with a single cell goes to A (the reference half), so B never holds a
    type that A lacks. The honest floor of a metric is then ``metric(A, B)``, and a generator's
    samples (n = |B|, or with B's label counts) are compared with A in the same way.

    Parameters
    ----------
    labels : array-like, shape (n,)
        Cell-type labels (any hashable values; missing values form their own group).
    seed : int

    Returns
    -------
    idx_a, idx_b : np.ndarray of int64
        Sorted positional indices into ``labels``; disjoint, and together all cells.
    """
    codes, _ = pd.factorize(pd.Series(np.asarray(labels, dtype=object)), sort=True, use_na_sentinel=False)
    rng = np.random.default_rng(seed)
    half_a, half_b = [], []
    size_a = size_b = 0
    for code in range(codes.max() + 1 if len(codes) else 0):
        idx = rng.permutation(np.flatnonzero(codes == code))
        n = len(idx)
        if n == 1:
            to_a = 1
        else:
            to_a = n // 2
            if n % 2:
                extra_to_a = size_a < size_b or (size_a == size_b and rng.integers(2) == 0)
                to_a += int(extra_to_a)
        half_a.append(idx[:to_a])
        half_b.append(idx[to_a:])
        size_a += to_a
        size_b += n - to_a
    empty = np.array([], dtype=np.int64)
    idx_a = np.sort(np.concatenate(half_a)).astype(np.int64) if half_a else empty
    idx_b = np.sort(np.concatenate(half_b)).astype(np.int64) if half_b else empty
    return idx_a, idx_b
