"""Stratified K-fold splits and per-fold HVG selection on the training part only."""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import pandas as pd
import scanpy as sc
from anndata import AnnData
from sklearn.model_selection import StratifiedKFold

from cellsynth.data.validation import InputDataError
from cellsynth.schema import LABEL_KEY

log = logging.getLogger(__name__)

MIN_CELLS_FOR_HVGS = 20
"""Fewer training cells than this cannot give a stable mean–variance fit (scikit-misc's loess fails)."""


def check_enough_cells(n_cells: int, *, n_folds: int, source: str) -> None:
    """Refuse, right after QC, data whose training parts would be too small to choose HVGs from.

    Each fold trains on ``(n_folds - 1) / n_folds`` of the cells; fewer than :data:`MIN_CELLS_FOR_HVGS`
    there would fail inside scikit-misc's loess later, after the QC and the splitting have run.
    """
    smallest_training = n_cells - -(-n_cells // n_folds)  # n_cells minus the largest test part
    if smallest_training < MIN_CELLS_FOR_HVGS:
        raise InputDataError(
            f"{source}: {n_cells} cells remain after QC and the cell-type filter, so a fold would train on "
            f"{smallest_training} (at least {MIN_CELLS_FOR_HVGS} are needed to choose HVGs): relax preprocessing.qc "
            "(qc_summary.csv says what each step removed), lower preprocessing.min_cells_per_type or "
            "splitting.n_folds, or use a larger dataset."
        )


def assign_folds(adata: AnnData, *, n_folds: int = 5, seed: int = 0) -> pd.DataFrame:
    """Assign every cell to the test part of exactly one of ``n_folds`` stratified folds.

    Reads ``obs["cell_type"]``. Returns a table indexed by cell name with column ``test_fold``.
    """
    if n_folds < 2:
        raise InputDataError(f"n_folds must be at least 2, got {n_folds}")
    labels = adata.obs[LABEL_KEY].astype(str).to_numpy()
    smallest = pd.Series(labels).value_counts().min()
    if smallest < n_folds:
        raise InputDataError(
            f"a cell type has {smallest} cells, fewer than n_folds={n_folds}: raise min_cells_per_type or lower n_folds"
        )
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    test_fold = np.empty(adata.n_obs, dtype=np.int64)
    for fold, (_, test_idx) in enumerate(splitter.split(np.zeros(len(labels)), labels)):
        test_fold[test_idx] = fold
    return pd.DataFrame({"test_fold": test_fold}, index=pd.Index(adata.obs_names.astype(str), name="cell"))


def select_hvgs(train: AnnData, *, n_top_genes: int = 2000, flavor: str = "seurat_v3") -> pd.Index:
    """Names of the ``n_top_genes`` highly variable genes of ``train`` (scanpy, on a copy).

    ``seurat_v3`` reads raw counts (``layers["counts"]``); other flavours read the log-normalised ``X``.
    """
    n_top = min(int(n_top_genes), train.n_vars)
    if n_top < int(n_top_genes):
        log.warning("%d HVGs asked (splitting.n_top_genes) but only %d genes passed QC: all %d are kept",
                    int(n_top_genes), train.n_vars, train.n_vars)
    if train.n_obs < MIN_CELLS_FOR_HVGS:
        raise InputDataError(
            f"{train.n_obs} training cells are too few to choose HVGs (at least {MIN_CELLS_FOR_HVGS}): "
            "relax preprocessing.qc (see qc_summary.csv for what removed the cells), lower splitting.n_folds, "
            "or use a larger dataset."
        )
    layer = "counts" if flavor.startswith("seurat_v3") else None
    try:
        table = sc.pp.highly_variable_genes(train, n_top_genes=n_top, flavor=flavor, layer=layer, inplace=False,
                                            subset=False)
    except ValueError as exc:  # scikit-misc's loess on too few or too similar cells ("near singularities")
        raise InputDataError(
            f"HVG selection ({flavor}) failed on {train.n_obs} training cells × {train.n_vars} genes: {exc}. "
            "Too few cells or genes for the fit: relax preprocessing.qc, or set splitting.hvg_flavor: seurat."
        ) from exc
    table.index = train.var_names
    return train.var_names[table["highly_variable"].to_numpy()]


def make_fold(
    adata: AnnData,
    folds: pd.DataFrame,
    *,
    fold: int,
    n_top_genes: int = 2000,
    hvg_flavor: str = "seurat_v3",
    hvg_cells: Literal["train", "all"] = "train",
) -> tuple[AnnData, AnnData]:
    """Training and test parts of ``fold``, restricted to highly variable genes.

    Reads ``X`` (log-normalised), ``layers["counts"]`` and ``obs``. Both returned AnnData carry
    the same genes (``var["highly_variable_rank"]`` not kept: the gene order is the input order) and
    ``uns["fold"]``.

    Parameters
    ----------
    hvg_cells : {"train", "all"}
        Which cells choose the genes. ``"train"``: the fold's training cells alone, so test cells never
        influence the gene set. ``"all"``: every cell, labels unused (the Seurat-tutorial preprocessing
        of the paper's PBMC3K). Genes chosen on the training cells carry those cells' sampling noise as
        extra variance that held-out cells lack, so k-NN precision/recall against held-out cells read
        any model of the training cells as too spread (docs/evaluation.md, "Which cells choose the genes").
    """
    if fold not in set(folds["test_fold"]):
        raise InputDataError(f"fold {fold} is not one of the {folds['test_fold'].nunique()} folds")
    is_test = folds.loc[adata.obs_names.astype(str), "test_fold"].to_numpy() == fold
    if hvg_cells not in ("train", "all"):
        raise InputDataError(f"splitting.hvg_cells must be 'train' or 'all', not {hvg_cells!r}")
    train = adata[~is_test].copy()
    hvgs = select_hvgs(train if hvg_cells == "train" else adata, n_top_genes=n_top_genes, flavor=hvg_flavor)
    train = train[:, hvgs].copy()
    test = adata[is_test][:, hvgs].copy()
    for part, name in ((train, "train"), (test, "test")):
        part.uns["fold"] = {"fold": int(fold), "part": name, "n_hvgs": int(len(hvgs)), "hvg_flavor": hvg_flavor,
                            "hvg_cells": hvg_cells}
    log.info("fold %d: %d training and %d test cells, %d HVGs chosen on the %s cells", fold, train.n_obs, test.n_obs,
             len(hvgs), "training" if hvg_cells == "train" else "training and test")
    return train, test


def _span(values: np.ndarray) -> str:
    low, high = int(values.min()), int(values.max())
    return str(low) if low == high else f"{low}–{high}"


def describe_type_split(cell_types: pd.DataFrame, labels: pd.Series, folds: pd.DataFrame) -> pd.DataFrame:
    """How every cell type is split: the cell-type table (``cell_type``, ``status``, counts) with, for the
    kept types, the test and training cells per fold (``min–max`` over the folds) and the folds whose test
    part holds the type.

    ``labels``: the cell type of every kept cell, indexed by cell name; ``folds``: :func:`assign_folds`.
    """
    test_fold = folds.loc[labels.index.astype(str), "test_fold"].to_numpy()
    labels = labels.astype(str).to_numpy()
    n_folds = int(folds["test_fold"].max()) + 1
    rows = []
    for cell_type in cell_types["cell_type"].astype(str):
        in_type = labels == cell_type
        if not in_type.any():
            rows.append({"test_cells_per_fold": "–", "training_cells_per_fold": "–", "folds_with_test_cells": 0})
            continue
        test = np.bincount(test_fold[in_type], minlength=n_folds)
        rows.append({"test_cells_per_fold": _span(test), "training_cells_per_fold": _span(in_type.sum() - test),
                     "folds_with_test_cells": int((test > 0).sum())})
    return pd.concat([cell_types.reset_index(drop=True), pd.DataFrame(rows)], axis=1)
