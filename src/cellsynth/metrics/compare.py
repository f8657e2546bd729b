"""All distribution metrics of one comparison, overall and per cell type.

The evaluation calls :func:`compare` in one projected space (:class:`~cellsynth.metrics.ReferenceSpace`
fitted on the fold's real training cells) for

- the paper's protocol: ``compare(test, synthetic)`` and ``compare(test, train)`` ("train vs test");
- the honest protocol: with ``a, b = split_halves(test_labels, seed)``, the floor
  ``compare(test[a], test[b], train=train)`` and each generator ``compare(test[a], synthetic_n_b, train=train)``
  (synthetic cells as many as B, so every value is comparable with the floor);
- per cell type: :func:`compare_by_type` with the same arguments plus labels.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from cellsynth.metrics.beyond import c2st_auc, c2st_classifier, knn_precision_recall, memorization_score
from cellsynth.metrics.paper import (
    PAPER_GAMMAS,
    _check_gammas,
    _pair,
    cd,
    mmd_from_sums,
    mmd_kernel_sums,
    mmd_subsample,
    wd,
)

__all__ = ["METRIC_DIRECTIONS", "METRIC_TARGETS", "compare", "compare_by_type", "metric_direction"]

METRIC_DIRECTIONS: dict[str, str] = {
    # the paper's distribution metrics
    "wd": "lower",
    "cd": "lower",
    "mmd": "lower",
    # beyond the paper
    "mmd_unbiased": "lower",
    "c2st_auc": "lower",  # optimum 0.5 (indistinguishable); below 0.5 is noise
    "precision": "higher",
    "recall": "higher",
    "memorization": "higher",  # up to ≈1 (a real held-out cell); ≫1 is poor fidelity, not better
    "memorization_close_fraction": "lower",  # ≈0.05 for real held-out cells
    # classification utility
    "accuracy": "higher",
    "precision_macro": "higher",
    "recall_macro": "higher",
    "f1_macro": "higher",
    "precision_weighted": "higher",
    "recall_weighted": "higher",
    "f1_weighted": "higher",
}
"""Whether a lower or a higher value of each metric is better (``f1[<type>]`` are all "higher")."""

METRIC_TARGETS: dict[str, float] = {"c2st_auc": 0.5, "memorization": 1.0, "memorization_close_fraction": 0.05}
"""Values a perfect generator reaches in expectation, where that is not simply 0 or 1."""


def metric_direction(name: str) -> str:
    """``"lower"`` or ``"higher"`` for a metric name, including per-type keys such as ``f1[B cells]``."""
    if name in METRIC_DIRECTIONS:
        return METRIC_DIRECTIONS[name]
    if name.startswith("f1[") and name.endswith("]"):
        return "higher"
    raise KeyError(f"unknown metric {name!r}")


def compare(
    reference,
    candidate,
    *,
    train=None,
    holdout=None,
    seed: int = 0,
    k: int = 5,
    gammas: Sequence[float] = PAPER_GAMMAS,
    c2st: bool = True,
    classifier: str = "hist_gb",
    n_splits: int = 5,
    n_threads: int | None = 1,
    mmd_max_cells: int | None = None,
    small_set_cells: int | None = None,
) -> dict[str, float]:
    """Every distribution metric between a real ``reference`` set and a ``candidate`` set.

    Both must already be in one projected space. Returns (see each function for its formula)

    - ``wd``, ``cd``, ``mmd`` — the paper's metrics (:func:`wd`, :func:`cd`, :func:`mmd_biased`), lower better;
    - ``mmd_unbiased`` — :func:`mmd_unbiased`, lower better;
    - ``c2st_auc`` — :func:`c2st_auc` (reference = "real"), lower better down to 0.5; only if ``c2st``;
    - ``precision``, ``recall`` — :func:`knn_precision_recall` with the reference as the real set, higher better;
    - ``memorization``, ``memorization_close_fraction`` — :func:`memorization_score` of the candidate
      against ``train``, relative to ``holdout`` (default: the reference itself, which must then be real
      cells the generator did not see); only when ``train`` is given. Leave ``train`` out when the
      candidate *is* the training set (the paper's "train vs test"), where the score is trivially 0.

    Parameters
    ----------
    reference : array-like, shape (n, d)
        Real cells the candidate should resemble (held-out test cells, or half A of them).
    candidate : array-like, shape (m, d)
        Synthetic cells, or real cells for a floor (half B, or the training cells).
    train : array-like, shape (n_train, d), optional
        The generator's training cells, for the memorisation score.
    holdout : array-like, optional
        Real cells unseen by the generator, for the memorisation score; defaults to ``reference``.
    seed : int
        Seeds the C2ST (subsampling, folds, classifier); every other metric is deterministic.
    k : int, default 5
        Neighbours for precision/recall.
    gammas : sequence of float
        RBF coefficients for both MMDs.
    c2st, classifier, n_splits, n_threads :
        Whether and how to run the classifier two-sample test (see :func:`c2st_auc`).
    mmd_max_cells : int, optional
        Both MMDs of a set larger than this use a seeded subsample of it
        (:func:`~cellsynth.metrics.paper.mmd_subsample`); every other metric uses all cells.
    small_set_cells : int, optional
        With fewer cells than this in the smaller set the C2ST uses the logistic regression
        (:func:`~cellsynth.metrics.beyond.c2st_classifier`); ``None``: ``classifier`` at every size.

    Returns
    -------
    dict[str, float]
    """
    reference, candidate = _pair(reference, candidate)
    ref_mmd, cand_mmd = mmd_subsample(reference, candidate, mmd_max_cells, seed)
    kernel_sums = mmd_kernel_sums(ref_mmd, cand_mmd, _check_gammas(gammas))  # once for both MMDs
    n, m = len(ref_mmd), len(cand_mmd)
    out = {
        "wd": wd(reference, candidate),
        "cd": cd(reference, candidate),
        "mmd": mmd_from_sums(kernel_sums, n, m, unbiased=False),
        "mmd_unbiased": mmd_from_sums(kernel_sums, n, m, unbiased=True),
    }
    if c2st:
        chosen = c2st_classifier(min(len(reference), len(candidate)), classifier, small_set_cells)
        out["c2st_auc"] = c2st_auc(
            reference, candidate, seed=seed, n_splits=n_splits, classifier=chosen, n_threads=n_threads
        )
    out.update(knn_precision_recall(reference, candidate, k=k)._asdict())
    if train is not None:
        mem = memorization_score(candidate, train, reference if holdout is None else holdout)
        out["memorization"] = mem.score
        out["memorization_close_fraction"] = mem.close_fraction
    return out


def compare_by_type(
    reference,
    reference_labels,
    candidate,
    candidate_labels,
    *,
    min_cells: int = 20,
    train=None,
    holdout=None,
    holdout_labels=None,
    measure: Callable[..., Mapping[str, float]] | None = None,
    **kwargs,
) -> pd.DataFrame:
    """:func:`compare` within each cell type that has at least ``min_cells`` cells on both sides.

    For every label present at least ``min_cells`` times in ``reference_labels`` and in
    ``candidate_labels``, the cells of that type are compared with :func:`compare` (same keyword
    arguments, e.g. ``seed``). For the memorisation score the candidate cells of the type are measured
    against *all* training cells (copying any training cell counts), relative to the held-out cells of
    the same type (``holdout``/``holdout_labels``, default the reference cells of that type).
    ``measure(reference_cells, candidate_cells, **kwargs)`` replaces :func:`compare` when given
    (e.g. :func:`~cellsynth.metrics.paper_metrics`, when only the paper's metrics are wanted:
    ``train`` and ``holdout`` are then unused).

    Returns
    -------
    pandas.DataFrame
        One row per compared type (sorted): ``cell_type``, ``n_reference``, ``n_candidate``, then
        one column per metric. Types below ``min_cells`` on either side are left out (empty frame
        if none qualifies).
    """
    reference, candidate = _pair(reference, candidate)
    ref_labels = np.asarray(reference_labels, dtype=object).astype(str)
    cand_labels = np.asarray(candidate_labels, dtype=object).astype(str)
    if len(ref_labels) != len(reference) or len(cand_labels) != len(candidate):
        raise ValueError("labels must have one entry per cell")
    if min_cells <= kwargs.get("k", 5):
        raise ValueError("min_cells must exceed k (precision/recall needs more than k cells)")
    if holdout is not None:
        if holdout_labels is None:
            raise ValueError("holdout_labels is required with holdout")
        holdout = np.asarray(holdout)
        hold_labels = np.asarray(holdout_labels, dtype=object).astype(str)
    rows: list[Mapping[str, object]] = []
    ref_counts = pd.Series(ref_labels).value_counts()
    cand_counts = pd.Series(cand_labels).value_counts()
    for cell_type in sorted(set(ref_counts.index) & set(cand_counts.index)):
        if ref_counts[cell_type] < min_cells or cand_counts[cell_type] < min_cells:
            continue
        ref_t = reference[ref_labels == cell_type]
        hold_t = None if holdout is None else holdout[hold_labels == cell_type]
        if hold_t is not None and len(hold_t) == 0:
            hold_t = None
        if measure is None:
            metrics = compare(ref_t, candidate[cand_labels == cell_type], train=train, holdout=hold_t, **kwargs)
        else:
            metrics = measure(ref_t, candidate[cand_labels == cell_type], **kwargs)
        rows.append(
            {
                "cell_type": cell_type,
                "n_reference": int(ref_counts[cell_type]),
                "n_candidate": int(cand_counts[cell_type]),
                **metrics,
            }
        )
    return pd.DataFrame(rows, columns=None if rows else ["cell_type", "n_reference", "n_candidate"])
