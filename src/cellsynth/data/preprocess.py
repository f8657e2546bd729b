"""Quality control and normalisation (the Seurat PBMC3K tutorial's recipe by default)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
from anndata import AnnData

from cellsynth.data.validation import InputDataError
from cellsynth.schema import LABEL_KEY

log = logging.getLogger(__name__)


def mitochondrial_mask(var_names: pd.Index, prefixes: Sequence[str]) -> np.ndarray:
    """Genes whose name starts with one of ``prefixes`` (e.g. ``MT-`` human, ``mt-`` mouse)."""
    names = pd.Index(var_names).astype(str)
    mask = np.zeros(len(names), dtype=bool)
    for prefix in prefixes:
        mask |= names.str.startswith(prefix)
    return mask


WARN_REMOVED_SHARE = 0.5
"""QC that removes more than this share of the cells, or of one cell type's cells, is warned about."""


def _warn_large_losses(adata: AnnData, keep_cells: np.ndarray, source: str) -> None:
    """Warn when QC removed most cells, or most cells of a type (thresholds made for other data)."""
    removed = 1.0 - keep_cells.mean()
    if removed > WARN_REMOVED_SHARE:
        log.warning("%s: QC removed %.0f%% of the cells: its thresholds (preprocessing.qc, the Seurat PBMC3K ones "
                    "by default) may not fit this data; see qc_summary.csv", source, 100 * removed)
    if LABEL_KEY in adata.obs:
        labels = adata.obs[LABEL_KEY].astype(object).to_numpy()
        labelled = pd.notna(labels)
        kept = pd.Series(keep_cells[labelled]).groupby(labels[labelled]).mean()
        lost = sorted(kept.index[kept < 1.0 - WARN_REMOVED_SHARE])
        if lost:
            log.warning("%s: QC removed most cells of %s: relax preprocessing.qc if these types matter",
                        source, ", ".join(f"{t} ({100 * (1 - kept[t]):.0f}%)" for t in lost))


def quality_control(
    adata: AnnData,
    *,
    min_cells_per_gene: int = 3,
    min_genes_per_cell: int = 200,
    max_genes_per_cell: int | None = 2500,
    max_pct_mito: float | None = 5.0,
    mito_prefixes: Sequence[str] = ("MT-", "mt-"),
    source: str = "input",
) -> tuple[AnnData, pd.DataFrame]:
    """Filter genes and cells as the Seurat PBMC3K tutorial does.

    Genes detected in fewer than ``min_cells_per_gene`` cells are dropped first; then cells with
    fewer than ``min_genes_per_cell`` detected genes, ``max_genes_per_cell`` or more (likely
    doublets), or ``max_pct_mito`` % or more mitochondrial counts (likely broken cells).
    ``None`` disables a threshold.

    Reads raw counts in ``X``. Returns a filtered copy with ``obs["n_genes"]``, ``obs["total_counts"]``
    and ``obs["pct_counts_mt"]``, and a one-row-per-step summary (cells and genes after each step).
    """
    counts = sp.csr_matrix(adata.X)
    steps = [("input", adata.n_obs, adata.n_vars)]

    cells_per_gene = np.asarray((counts > 0).sum(axis=0)).ravel()
    keep_genes = cells_per_gene >= min_cells_per_gene
    counts = counts[:, keep_genes]
    var_names = adata.var_names[keep_genes]
    steps.append((f"genes in >= {min_cells_per_gene} cells", adata.n_obs, int(keep_genes.sum())))

    n_genes = np.asarray((counts > 0).sum(axis=1)).ravel()
    total = np.asarray(counts.sum(axis=1)).ravel()
    mito = mitochondrial_mask(var_names, mito_prefixes)
    if max_pct_mito is not None and not mito.any():
        log.warning("%s: no gene starts with %s; the mitochondrial filter removes nothing", source, list(mito_prefixes))
    mito_counts = np.asarray(counts[:, mito].sum(axis=1)).ravel() if mito.any() else np.zeros_like(total)
    pct_mito = np.divide(100.0 * mito_counts, total, out=np.zeros_like(total, dtype=float), where=total > 0)

    keep_cells = n_genes >= min_genes_per_cell
    steps.append((f"cells with >= {min_genes_per_cell} genes", int(keep_cells.sum()), int(keep_genes.sum())))
    if max_genes_per_cell is not None:
        keep_cells &= n_genes < max_genes_per_cell
        steps.append((f"cells with < {max_genes_per_cell} genes", int(keep_cells.sum()), int(keep_genes.sum())))
    if max_pct_mito is not None:
        keep_cells &= pct_mito < max_pct_mito
        steps.append((f"cells with < {max_pct_mito:g}% mitochondrial counts", int(keep_cells.sum()), int(keep_genes.sum())))
    if not keep_cells.any():
        raise InputDataError(
            f"{source}: quality control removed every cell (thresholds: >= {min_genes_per_cell} genes, "
            f"< {max_genes_per_cell} genes, < {max_pct_mito}% mitochondrial). Relax preprocessing.qc."
        )

    filtered = AnnData(
        X=counts[keep_cells],
        obs=adata.obs.loc[keep_cells].copy(),
        var=adata.var.loc[keep_genes].copy(),
        uns=dict(adata.uns),
    )
    filtered.obs["n_genes"] = n_genes[keep_cells]
    filtered.obs["total_counts"] = total[keep_cells]
    filtered.obs["pct_counts_mt"] = pct_mito[keep_cells]
    if LABEL_KEY in filtered.obs and isinstance(filtered.obs[LABEL_KEY].dtype, pd.CategoricalDtype):
        filtered.obs[LABEL_KEY] = filtered.obs[LABEL_KEY].cat.remove_unused_categories()
    _warn_large_losses(adata, keep_cells, source)
    summary = pd.DataFrame(steps, columns=["step", "n_cells", "n_genes"])
    log.info("%s: QC kept %d of %d cells and %d of %d genes", source, filtered.n_obs, adata.n_obs, filtered.n_vars, adata.n_vars)
    return filtered, summary


def normalise(adata: AnnData, *, target_sum: float = 1e4) -> AnnData:
    """Library-size normalisation to ``target_sum`` and ``log1p`` (Seurat's LogNormalize).

    Reads raw counts in ``X``. Returns a copy with the log-normalised values in ``X`` (CSR float32)
    and the raw counts in ``layers["counts"]``.
    """
    counts = sp.csr_matrix(adata.X, dtype=np.float32)
    scaled = sc.pp.normalize_total(AnnData(X=counts.copy()), target_sum=target_sum, inplace=False)["X"]
    logged = sp.csr_matrix(scaled, dtype=np.float32)
    np.log1p(logged.data, out=logged.data)
    out = AnnData(X=logged, obs=adata.obs.copy(), var=adata.var.copy(), uns=dict(adata.uns))
    out.layers["counts"] = counts
    out.uns["normalisation"] = {"target_sum": float(target_sum), "transform": "log1p"}
    return out
