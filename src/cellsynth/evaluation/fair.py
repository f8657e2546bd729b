"""The fair protocol: no compared set is in-sample for the space that compares it, with spread.

The paper's space (``StandardScaler`` + PCA fitted on the training cells) makes training cells
in-sample and held-out cells out-of-sample, so real training cells look unlike real held-out cells
for that reason alone. Here every comparison has its own space, and the honest split is repeated:

For each repeat *r* (``fair.honest_repeats``; seed ``s_r = seed + r``) the test cells are split into
stratified halves A/B (:func:`~cellsynth.metrics.split_halves` with ``s_r``) and the compared set is
half B (the floor) or a type-matched subsample of the generator's cells with B's type counts
(:func:`~cellsynth.evaluation.protocol.matched_subsample` with ``s_r``). Then

- protocol ``fair`` (realism): exact duplicate cells of the compared set counted
  (``duplicate_fraction``) and dropped, scaler + PCA(``n_pca``, seed) fitted on A ∪ compared set, the
  two sets projected, and WD, CD, MMD, k-NN precision/recall and the detection AUC
  (:func:`detection_auc`) computed there. Both sets are in-sample, so neither is favoured.
- protocol ``fair`` (copying): ``memorization`` and ``memorization_close_fraction``
  (:func:`~cellsynth.metrics.memorization_score`) of the compared set against the training cells,
  relative to half B, in a space fitted on half A only: neither the training cells, nor the compared
  cells, nor the held-out B cells are fitting data. Not computed for the floor (B is its own holdout).
- protocol ``within_type``: ``c2st_auc``, the detection AUC of type-centred residuals (both sets minus
  the training cells' per-type means, :func:`type_centred`; types with ``within_type_min_cells`` on
  both sides) in a space fitted on the union of the residuals; ``correlation_r``, scDesign3's correlation preservation
  (:func:`correlation_preservation`) on the gene expression itself.
- protocol ``counts`` (only when both sets carry ``layers["counts"]``): :func:`count_realism`.

Every metric is the mean over repeats, with ``<metric>_repeat_sd`` (sd over repeats, ddof 1) beside
it and ``n_repeats``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from scipy.stats import ks_2samp

from cellsynth.config import C2STSettings, EvaluationSettings, FairSettings
from cellsynth.evaluation.protocol import (
    _rows,
    aligned_matrix,
    cell_labels,
    long_frame,
    matched_subsample,
    without_nonfinite,
)
from cellsynth.metrics import (
    ReferenceSpace,
    as_dense,
    c2st_auc,
    c2st_classifier,
    compare,
    memorization_score,
    split_halves,
)
from cellsynth.schema import ALL_TYPES, FLOOR

__all__ = [
    "COUNTS",
    "FAIR",
    "REPEAT_SD_SUFFIX",
    "WITHIN_TYPE",
    "correlation_preservation",
    "count_realism",
    "detection_auc",
    "fair_metrics",
    "fold_values",
    "mean_and_spread",
    "type_centred",
]

FAIR = "fair"
WITHIN_TYPE = "within_type"
COUNTS = "counts"
REPEAT_SD_SUFFIX = "_repeat_sd"
FAIR_REALISM = ("wd", "cd", "mmd", "precision", "recall")
COUNT_LAYER = "counts"


def detection_auc(reference: np.ndarray, candidate: np.ndarray, fair: FairSettings, c2st: C2STSettings,
                  seed: int) -> float:
    """C2ST AUC that stays meaningful on small sets; NaN ("too few cells") below ``min_detection_cells``.

    With fewer than ``c2st.small_set_cells`` cells in the smaller set the standardised logistic
    regression replaces gradient boosting (:func:`~cellsynth.metrics.c2st_classifier`).
    """
    n = min(len(reference), len(candidate))
    if n < fair.min_detection_cells:
        return float("nan")
    return c2st_auc(reference, candidate, seed=seed, n_splits=c2st.n_splits,
                    classifier=c2st_classifier(n, c2st.classifier, c2st.small_set_cells), n_threads=c2st.n_threads)


def type_centred(X: np.ndarray, labels: np.ndarray, type_means: Mapping[str, np.ndarray]) -> np.ndarray:
    """Rows of ``X`` whose label is a key of ``type_means``, each minus that type's mean.

    The pipeline passes the *training* cells' type means, an estimate independent of both compared
    sets. Removing the type means leaves the spread and co-expression inside each type, which a
    within-type gene shuffle destroys. Centring each set by its own type means would make every
    type's residuals sum to zero, and a cross-validated classifier anti-learns that dependence (the
    real-vs-real floor fell to 0.39 on PBMC3K); centring by the reference's means does the same to
    the reference alone.
    """
    keep = np.isin(labels, list(type_means))
    if not keep.any():
        return np.empty((0, X.shape[1]))
    return X[keep] - np.vstack([type_means[t] for t in labels[keep]])


def _correlation_matrix(X: np.ndarray) -> np.ndarray:
    """Pearson correlations of the columns; a constant column correlates NaN."""
    centred = X - X.mean(axis=0)
    norms = np.sqrt((centred**2).sum(axis=0))
    with np.errstate(divide="ignore", invalid="ignore"):
        unit = centred / norms
        return unit.T @ unit


def correlation_preservation(reference: np.ndarray, reference_labels: np.ndarray, candidate: np.ndarray,
                             candidate_labels: np.ndarray, n_genes: int = 100,
                             min_cells: int = 20) -> tuple[float, int]:
    """scDesign3's gene–gene correlation check, averaged over cell types.

    For every type with at least ``min_cells`` cells in both sets: the ``n_genes`` genes of highest
    mean expression in the reference cells of the type, the gene × gene Pearson matrices of the two
    sets on them, and Pearson's r between their upper triangles (pairs with a constant gene on either
    side left out). 1 = the same co-expression, 0 = none of it (a within-type gene shuffle).

    Returns
    -------
    (mean r over the types, number of types)
        ``(nan, 0)`` when no type qualifies.
    """
    reference_labels = np.asarray(reference_labels, dtype=str)
    candidate_labels = np.asarray(candidate_labels, dtype=str)
    values = []
    for cell_type in sorted(set(reference_labels) & set(candidate_labels)):
        ref = reference[reference_labels == cell_type]
        cand = candidate[candidate_labels == cell_type]
        if len(ref) < min_cells or len(cand) < min_cells:
            continue
        genes = np.argsort(-ref.mean(axis=0), kind="stable")[:n_genes]
        upper = np.triu_indices(len(genes), 1)
        a = _correlation_matrix(ref[:, genes])[upper]
        b = _correlation_matrix(cand[:, genes])[upper]
        ok = np.isfinite(a) & np.isfinite(b)
        if ok.sum() < 3 or np.std(a[ok]) == 0 or np.std(b[ok]) == 0:
            values.append(0.0)  # no co-expression left to compare (e.g. constant synthetic genes)
            continue
        values.append(float(np.corrcoef(a[ok], b[ok])[0, 1]))
    return (float(np.mean(values)), len(values)) if values else (float("nan"), 0)


def count_realism(reference_counts, candidate_counts) -> dict[str, float]:
    """Kolmogorov–Smirnov distances between raw-count summaries of two sets (0 = same distribution).

    Per cell: library size (``ks_library_size``) and detected genes (``ks_detected_genes``); per gene:
    mean, variance and detection rate (``ks_gene_mean``, ``ks_gene_variance``, ``ks_gene_detection``).
    """
    def summaries(X) -> dict[str, np.ndarray]:
        X = sp.csr_matrix(X) if not sp.issparse(X) else X.tocsr()
        mean = np.asarray(X.mean(axis=0)).ravel()
        return {
            "ks_library_size": np.asarray(X.sum(axis=1)).ravel(),
            "ks_detected_genes": np.asarray((X != 0).sum(axis=1)).ravel(),
            "ks_gene_mean": mean,
            "ks_gene_variance": np.asarray(X.multiply(X).mean(axis=0)).ravel() - mean**2,
            "ks_gene_detection": np.asarray((X != 0).mean(axis=0)).ravel(),
        }

    ref, cand = summaries(reference_counts), summaries(candidate_counts)
    return {name: float(ks_2samp(ref[name], cand[name]).statistic) for name in ref}


def fold_values(metrics: pd.DataFrame, generator: str, protocol: str, metric: str,
                cell_type: str = ALL_TYPES) -> pd.Series:
    """A metric of the long table per fold (index: fold), NaN folds dropped."""
    rows = metrics[(metrics["generator"] == generator) & (metrics["protocol"] == protocol)
                   & (metrics["cell_type"] == cell_type) & (metrics["metric"] == metric)]
    return rows.groupby("fold")["value"].mean().dropna()


def mean_and_spread(metrics: pd.DataFrame, generator: str, protocol: str, metric: str,
                    cell_type: str = ALL_TYPES) -> tuple[float, float]:
    """(mean, spread) of a metric of the long table: fold mean and fold sd with several folds, else the
    one fold's value and its sd over the repeated honest splits (``<metric>_repeat_sd``; NaN if absent)."""
    rows = metrics[(metrics["generator"] == generator) & (metrics["protocol"] == protocol)
                   & (metrics["cell_type"] == cell_type)]
    values = fold_values(metrics, generator, protocol, metric, cell_type)
    if values.empty:
        return float("nan"), float("nan")
    if len(values) > 1:
        return float(values.mean()), float(values.std(ddof=1))
    spread = rows.loc[rows["metric"] == metric + REPEAT_SD_SUFFIX, "value"]
    return float(values.iloc[0]), float(spread.iloc[0]) if len(spread) else float("nan")


def _fit_space(parts: Sequence[np.ndarray], settings: EvaluationSettings) -> ReferenceSpace:
    return ReferenceSpace(n_components=settings.n_pca, seed=settings.seed).fit(np.vstack(parts))


def _one_repeat(half_a: np.ndarray, labels_a: np.ndarray, compared: np.ndarray, labels_compared: np.ndarray,
                train, train_type_means: Mapping[str, np.ndarray], holdout: np.ndarray | None,
                settings: EvaluationSettings, seed: int) -> dict[tuple[str, str], float]:
    fair = settings.fair
    out: dict[tuple[str, str], float] = {}
    if holdout is not None:
        # Copying, in a space fitted on half A only: training, compared and holdout cells all out-of-sample.
        copy_space = _fit_space([half_a], settings)
        mem = memorization_score(copy_space.transform(compared), copy_space.transform(train),
                                 copy_space.transform(holdout))
        out[(FAIR, "memorization")], out[(FAIR, "memorization_close_fraction")] = mem.score, mem.close_fraction
    # Exact duplicates are a copying symptom (no real cell is measured twice), reported as such; the
    # realism metrics see each distinct cell once, else a cross-validated classifier recognises a
    # duplicate split across its folds and the realism number mixes both questions.
    _, first = np.unique(compared, axis=0, return_index=True)
    distinct = np.sort(first)
    out[(FAIR, "duplicate_fraction")] = 1.0 - len(distinct) / len(compared)
    compared, labels_compared = compared[distinct], labels_compared[distinct]
    space = _fit_space([half_a, compared], settings)
    z_a, z_c = space.transform(half_a), space.transform(compared)
    realism = compare(z_a, z_c, seed=seed, k=settings.knn_k, c2st=False, mmd_max_cells=settings.mmd_max_cells)
    out.update({(FAIR, m): realism[m] for m in FAIR_REALISM})
    out[(FAIR, "c2st_auc")] = detection_auc(z_a, z_c, fair, settings.c2st, seed)
    out[(FAIR, "n_cells_reference")], out[(FAIR, "n_cells_compared")] = len(half_a), len(compared)

    counts_a, counts_c = pd.Series(labels_a).value_counts(), pd.Series(labels_compared).value_counts()
    types = sorted(t for t in set(counts_a.index) & set(counts_c.index) & set(train_type_means)
                   if counts_a[t] >= fair.within_type_min_cells and counts_c[t] >= fair.within_type_min_cells)
    means = {t: train_type_means[t] for t in types}
    res_a, res_c = type_centred(half_a, labels_a, means), type_centred(compared, labels_compared, means)
    if len(res_a) >= 2 and len(res_c) >= 2:
        residual_space = _fit_space([res_a, res_c], settings)
        out[(WITHIN_TYPE, "c2st_auc")] = detection_auc(residual_space.transform(res_a),
                                                       residual_space.transform(res_c), fair, settings.c2st, seed)
    else:
        out[(WITHIN_TYPE, "c2st_auc")] = float("nan")
    out[(WITHIN_TYPE, "n_types")] = len(types)
    r, n_types = correlation_preservation(half_a, labels_a, compared, labels_compared,
                                          n_genes=fair.correlation_genes, min_cells=fair.correlation_min_cells)
    out[(WITHIN_TYPE, "correlation_r")], out[(WITHIN_TYPE, "n_types_correlation")] = r, n_types
    return out


def _aggregate(repeats: Sequence[Mapping[tuple[str, str], float]], **key: Any) -> list[dict[str, Any]]:
    frame = pd.DataFrame(repeats)
    rows: list[dict[str, Any]] = []
    for protocol in dict.fromkeys(p for p, _ in frame.columns):
        columns = [c for c in frame.columns if c[0] == protocol]
        values: dict[str, float] = {}
        for _, metric in columns:
            series = frame[(protocol, metric)].astype(float)
            values[metric] = float(series.mean()) if series.notna().any() else float("nan")
            if not metric.startswith("n_"):
                values[metric + REPEAT_SD_SUFFIX] = float(series.std(ddof=1)) if series.notna().sum() > 1 else float("nan")
        values["n_repeats"] = len(frame)
        rows += _rows(values, protocol=protocol, **key)
    return rows


def _dense_cells(adata: AnnData, var_names) -> np.ndarray:
    return as_dense(aligned_matrix(adata, var_names))


def fair_metrics(train: AnnData, test: AnnData, synthetic: AnnData | None, settings: EvaluationSettings, *,
                 dataset: str, fold: int, generator: str = FLOOR) -> pd.DataFrame:
    """Protocols ``fair``, ``within_type`` (and ``counts``) of one generator on one fold, or of the floor.

    Parameters
    ----------
    train, test : AnnData
        The fold's real cells (``obs["cell_type"]`` required on ``test``).
    synthetic : AnnData or None
        The generator's ``matched`` cells; ``None`` scores the floor (half B against half A).
        Cells with non-finite values are left out.
    settings : EvaluationSettings

    Returns
    -------
    pandas.DataFrame
        Long format (:data:`~cellsynth.evaluation.protocol.COLUMNS`), ``cell_type = "all"``.
    """
    labels_test = cell_labels(test)
    if labels_test is None:
        raise ValueError("the fair protocol needs obs['cell_type'] on the test cells")
    genes = train.var_names
    X_test = _dense_cells(test, genes)
    X_train = aligned_matrix(train, genes)
    labels_train = cell_labels(train)
    train_type_means = {} if labels_train is None else {
        t: np.asarray(X_train[labels_train == t].mean(axis=0), dtype=np.float64).ravel()
        for t in np.unique(labels_train)}
    counts_test = test.layers.get(COUNT_LAYER) if COUNT_LAYER in test.layers else None
    if synthetic is not None:
        synthetic, _ = without_nonfinite(synthetic, f"{generator} synthetic")
        labels_synth = cell_labels(synthetic)
        X_synth = _dense_cells(synthetic, genes)
        counts_synth = synthetic[:, genes].layers[COUNT_LAYER] if COUNT_LAYER in synthetic.layers else None
    repeats = []
    for r in range(settings.fair.honest_repeats):
        seed = settings.seed + r
        idx_a, idx_b = split_halves(labels_test, seed=seed)
        if synthetic is None:
            compared, labels_compared, holdout = X_test[idx_b], labels_test[idx_b], None
            counts_compared = None if counts_test is None else counts_test[idx_b]
        else:
            target = pd.Series(labels_test[idx_b]).value_counts().to_dict()
            if labels_synth is None:
                raise ValueError(f"{generator}: the synthetic cells have no obs['cell_type']")
            chosen = matched_subsample(labels_synth, target, seed)
            compared, labels_compared, holdout = X_synth[chosen], labels_synth[chosen], X_test[idx_b]
            counts_compared = None if counts_synth is None else counts_synth[chosen]
        values = _one_repeat(X_test[idx_a], labels_test[idx_a], compared, labels_compared, X_train, train_type_means,
                             holdout, settings, seed)
        if counts_test is not None and counts_compared is not None:
            values.update({(COUNTS, m): v for m, v in count_realism(counts_test[idx_a], counts_compared).items()})
        repeats.append(values)
    return long_frame(_aggregate(repeats, dataset=dataset, generator=generator, fold=fold))
