"""Checks of a user's ``.h5ad`` before any heavy work, with errors that name the file and the fix.

The validated object is a new AnnData (the user's file and the loaded object are never modified)
with raw counts in ``X`` (CSR, float32), the cell type in ``obs["cell_type"]`` and, when a batch
column is given, the batch in ``obs["batch"]``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from cellsynth.schema import BATCH_KEY, LABEL_KEY

log = logging.getLogger(__name__)

MISSING_LABELS = frozenset({"", "nan", "none", "null", "<na>", "n/a"})
"""Label strings that mean "no label" (compared stripped and lower-cased): what ``astype(str)`` makes of
a missing value, and what spreadsheets write for one."""


class InputDataError(ValueError):
    """The input data cannot be used as given; the message says why and how to fix it."""


@dataclass
class ValidationReport:
    """What validation changed, for the log and the QC summary."""

    source: str
    counts_from: str
    n_cells_in: int
    n_genes_in: int
    n_unlabelled: int = 0
    duplicate_cell_names: int = 0
    duplicate_gene_names: int = 0
    notes: list[str] = field(default_factory=list)


ORIGINAL_SOURCE = (
    "cellsynth expects raw integer counts, which cannot be recovered from normalised values: take them "
    "from the data's original source (e.g. Cell Ranger's filtered_feature_bc_matrix, or the counts deposited "
    'with the publication) and store them in X or layers["counts"] of your .h5ad.'
)


def _is_counts(matrix) -> bool:
    """Whether ``matrix`` holds non-negative integers (a sample of its values)."""
    values = matrix.data if sp.issparse(matrix) else np.asarray(matrix).ravel()
    values = np.asarray(values[:200_000], dtype=np.float64)
    return bool(np.isfinite(values).all() and (values >= 0).all() and (values == np.round(values)).all())


def _no_counts_anywhere(adata: AnnData, source: str, what: str) -> InputDataError:
    """The error for a file in which no layer, nor ``X``, nor ``.raw`` holds raw counts."""
    if adata.raw is not None and _is_counts(adata.raw.X):
        return InputDataError(
            f"{source}: {what}. Its .raw holds integer values: if those are the raw counts, save them as a "
            'layer (adata.layers["counts"] = adata.raw[:, adata.var_names].X, then write the file) and set '
            'dataset.counts_layer: counts.')
    return InputDataError(f"{source}: {what}, and no layer or .raw holds integer counts. {ORIGINAL_SOURCE}")


def _counts_matrix(adata: AnnData, counts_layer: str | None, source: str) -> tuple[sp.csr_matrix, str]:
    if counts_layer is not None:
        if counts_layer not in adata.layers:
            layers = list(adata.layers.keys())
            if layers:
                raise InputDataError(
                    f"{source}: counts_layer={counts_layer!r} is not a layer of this file (layers: {layers}). "
                    "Set dataset.counts_layer to the one that holds raw counts.")
            if adata.X is not None and _is_counts(adata.X):
                raise InputDataError(
                    f"{source}: counts_layer={counts_layer!r} is not a layer of this file (it has no layers); X "
                    "holds integer counts: set dataset.counts_layer to null to read them from X.")
            raise _no_counts_anywhere(adata, source, f"counts_layer={counts_layer!r} is not a layer of this file "
                                      "(it has no layers) and X does not hold raw counts")
        matrix, where = adata.layers[counts_layer], f'layers["{counts_layer}"]'
    elif "counts" in adata.layers:
        matrix, where = adata.layers["counts"], 'layers["counts"]'
    else:
        matrix, where = adata.X, "X"
    if matrix is None:
        raise InputDataError(f"{source}: {where} is empty; cellsynth expects raw counts there.")
    matrix = sp.csr_matrix(matrix, dtype=np.float32)
    return matrix, where


def _check_raw_counts(matrix: sp.csr_matrix, where: str, source: str, adata: AnnData | None = None) -> None:
    other_layers = [k for k in (adata.layers.keys() if adata is not None else []) if f'"{k}"' not in where]
    values = matrix.data
    if not np.isfinite(values).all():
        raise InputDataError(f"{source}: {where} holds NaN or infinite values; cellsynth expects raw counts.")
    if values.size and values.min() < 0 and adata is not None and not other_layers:
        raise _no_counts_anywhere(adata, source, f"{where} holds negative values (min {values.min():g})")
    if values.size and values.min() < 0:
        raise InputDataError(
            f"{source}: {where} holds negative values (min {values.min():g}). cellsynth expects raw, "
            "non-negative integer counts: point dataset.counts_layer at the layer that holds them "
            '(often layers["counts"]), or export the raw counts from your pipeline.'
        )
    fractional = values != np.round(values)
    if fractional.any() and adata is not None and not other_layers:
        raise _no_counts_anywhere(adata, source, f"{where} holds non-integer values (e.g. {values[fractional][0]:g}): "
                                  "it looks normalised or log-transformed")
    if fractional.any():
        example = values[fractional][0]
        raise InputDataError(
            f"{source}: {where} holds non-integer values (e.g. {example:g}): it looks normalised or "
            "log-transformed. cellsynth expects raw integer counts (it normalises them itself): point "
            f'dataset.counts_layer at the layer that holds them (layers: {other_layers}).'
        )


def validate_counts(
    adata: AnnData,
    *,
    source: str,
    label_key: str | None,
    batch_key: str | None = None,
    counts_layer: str | None = None,
) -> tuple[AnnData, ValidationReport]:
    """Validate a raw-count AnnData and return a clean copy.

    Reads ``X`` (or ``layers[counts_layer]``, or ``layers["counts"]`` when present),
    ``obs[label_key]`` and ``obs[batch_key]``. Raises :class:`InputDataError` for: an empty matrix,
    a missing label or batch column (listing the available ``obs`` columns), values that are not raw
    counts (negative or non-integer), fewer than two cell types. Makes duplicate cell or gene names
    unique (warned). Cells without a label keep ``NaN`` in ``obs["cell_type"]`` (counted in the
    report) so that gene filters see every cell; :func:`drop_unusable_cells` drops them after QC.
    ``label_key=None`` (unlabelled data, to be labelled by :mod:`cellsynth.data.clustering` after QC):
    every cell is unlabelled and the label checks are left to that step.

    Returns
    -------
    A new AnnData with counts in ``X`` (CSR float32), ``obs["cell_type"]`` (categorical) and
    ``obs["batch"]`` if ``batch_key`` was given; and a :class:`ValidationReport`.
    """
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise InputDataError(f"{source}: the expression matrix is empty ({adata.n_obs} cells × {adata.n_vars} genes).")
    for key, setting in ((label_key, "dataset.label_key"), (batch_key, "dataset.batch_key")):
        if key is not None and key not in adata.obs.columns:
            raise InputDataError(
                f"{source}: obs has no column {key!r} (set by {setting}). "
                f"Available obs columns: {list(adata.obs.columns)}."
            )
    matrix, where = _counts_matrix(adata, counts_layer, source)
    _check_raw_counts(matrix, where, source, adata)
    report = ValidationReport(source=source, counts_from=where, n_cells_in=adata.n_obs, n_genes_in=adata.n_vars)

    obs = pd.DataFrame(index=adata.obs_names.astype(str))
    if label_key is None:
        labels = pd.Series(np.nan, index=adata.obs_names, dtype=object)
    else:
        labels = adata.obs[label_key]
    labelled = labels.notna().to_numpy() & ~labels.astype(str).str.strip().str.lower().isin(MISSING_LABELS).to_numpy()
    obs[LABEL_KEY] = labels.astype(str).to_numpy()
    if batch_key is not None:
        obs[BATCH_KEY] = adata.obs[batch_key].astype(str).to_numpy()
    var = pd.DataFrame(index=adata.var_names.astype(str))
    clean = AnnData(X=matrix, obs=obs, var=var)

    report.n_unlabelled = int((~labelled).sum())
    if not labelled.any() and label_key is not None:
        raise InputDataError(
            f"{source}: no cell has a label in obs[{label_key!r}]. Point dataset.label_key at the cell-type "
            "column, or, for unlabelled data, set dataset.label_key: null and dataset.cluster_if_unlabelled: "
            "true (Leiden clusters as labels).")
    # Unlabelled cells stay through QC (as in the Seurat tutorial, gene filters see every cell)
    # and are dropped with a count by drop_unusable_cells().
    clean.obs.loc[~labelled, LABEL_KEY] = np.nan

    report.duplicate_cell_names = int(clean.obs_names.duplicated().sum())
    if report.duplicate_cell_names:
        log.warning("%s: %d duplicate cell names made unique", source, report.duplicate_cell_names)
        clean.obs_names_make_unique()
    report.duplicate_gene_names = int(clean.var_names.duplicated().sum())
    if report.duplicate_gene_names:
        log.warning("%s: %d duplicate gene names made unique", source, report.duplicate_gene_names)
        clean.var_names_make_unique()

    clean.obs[LABEL_KEY] = pd.Categorical(clean.obs[LABEL_KEY])
    n_types = clean.obs[LABEL_KEY].nunique(dropna=True)
    if n_types < 2 and label_key is not None:
        raise InputDataError(
            f"{source}: obs[{label_key!r}] has {n_types} cell type(s); cellsynth needs at least 2 "
            "(it stratifies folds and evaluates per type)."
        )
    clean.uns["cellsynth_input"] = {"source": source, "label_key": label_key, "counts_from": where}
    return clean, report


def drop_unusable_cells(
    adata: AnnData, min_cells: int, *, source: str, n_folds: int
) -> tuple[AnnData, dict[str, int], int]:
    """Drop unlabelled cells and cell types with fewer than ``max(min_cells, n_folds)`` cells.

    Both are logged. Every kept type then has at least one cell in each fold's test part. Raises
    :class:`InputDataError` when fewer than two types remain. Returns the kept cells, the dropped
    types with their sizes, and the number of unlabelled cells dropped.
    """
    labels = adata.obs[LABEL_KEY]
    unlabelled = int(labels.isna().sum())
    if unlabelled:
        log.warning("%s: dropped %d cells without a cell-type label", source, unlabelled)
    threshold = max(int(min_cells), int(n_folds))
    counts = labels.value_counts(dropna=True)
    rare = {str(t): int(c) for t, c in counts.items() if c < threshold}
    if rare:
        log.warning("%s: dropped cell types with fewer than %d cells: %s", source, threshold, rare)
    keep = labels.notna().to_numpy() & ~labels.isin(list(rare)).to_numpy()
    if not keep.all():
        adata = adata[keep].copy()
    adata.obs[LABEL_KEY] = adata.obs[LABEL_KEY].cat.remove_unused_categories()
    remaining = adata.obs[LABEL_KEY].nunique()
    if remaining < 2:
        raise InputDataError(
            f"{source}: only {remaining} cell type(s) have at least {threshold} cells after QC "
            f"(dropped: {rare}). Lower min_cells_per_type, or use a dataset with more labelled cells."
        )
    return adata, rare, unlabelled
