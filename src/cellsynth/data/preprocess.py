"""Quality control (fixed thresholds and/or outliers by median absolute deviations) and normalisation."""

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


def _warn_large_losses(adata: AnnData, keep_cells: np.ndarray, source: str, share: float) -> None:
    """Warn when QC removed more than ``share`` of the cells, or of a type's cells (thresholds made for other data)."""
    removed = 1.0 - keep_cells.mean()
    if removed > share:
        log.warning("%s: QC removed %.0f%% of the cells: its thresholds (preprocessing.qc) may not fit this data; "
                    "see qc_summary.csv", source, 100 * removed)
    if LABEL_KEY in adata.obs:
        labels = adata.obs[LABEL_KEY].astype(object).to_numpy()
        labelled = pd.notna(labels)
        kept = pd.Series(keep_cells[labelled]).groupby(labels[labelled]).mean()
        lost = sorted(kept.index[kept < 1.0 - share])
        if lost:
            log.warning("%s: QC removed most cells of %s: relax preprocessing.qc if these types matter",
                        source, ", ".join(f"{t} ({100 * (1 - kept[t]):.0f}%)" for t in lost))


def cell_qc_metrics(counts: sp.csr_matrix, var_names: pd.Index, mito_prefixes: Sequence[str]) -> pd.DataFrame:
    """Per cell: detected genes ``n_genes``, library size ``total_counts`` and mitochondrial % ``pct_counts_mt``."""
    n_genes = np.asarray((counts > 0).sum(axis=1)).ravel()
    total = np.asarray(counts.sum(axis=1)).ravel().astype(float)
    mito = mitochondrial_mask(var_names, mito_prefixes)
    mito_counts = np.asarray(counts[:, mito].sum(axis=1)).ravel() if mito.any() else np.zeros_like(total)
    pct_mito = np.divide(100.0 * mito_counts, total, out=np.zeros_like(total), where=total > 0)
    return pd.DataFrame({"n_genes": n_genes, "total_counts": total, "pct_counts_mt": pct_mito})


def qc_input_metrics(adata: AnnData, *, min_cells_per_gene: int = 3, mito_prefixes: Sequence[str] = ("MT-", "mt-")
                     ) -> tuple[pd.DataFrame, np.ndarray]:
    """The per-cell QC metrics every cell filter reads (:func:`cell_qc_metrics` on the genes detected in at
    least ``min_cells_per_gene`` cells, indexed by cell name, with ``obs["cell_type"]`` when present) and
    the mask of those genes. Reads raw counts in ``X``."""
    counts = sp.csr_matrix(adata.X)
    keep_genes = np.asarray((counts > 0).sum(axis=0)).ravel() >= min_cells_per_gene
    metrics = cell_qc_metrics(counts[:, keep_genes], adata.var_names[keep_genes], mito_prefixes)
    metrics.index = adata.obs_names.copy()
    if LABEL_KEY in adata.obs:
        metrics[LABEL_KEY] = adata.obs[LABEL_KEY].astype(object).to_numpy()
    return metrics, keep_genes


def mad_bounds(values: np.ndarray, n_mads: float, *, log: bool = True) -> tuple[float, float] | None:
    """``median ± n_mads × MAD`` of ``values`` (of ``log1p(values)`` when ``log``), back on the values' scale.

    The MAD is the unscaled median absolute deviation, as in scanpy's single-cell best-practice guide
    (``scipy.stats.median_abs_deviation``). ``None`` when the MAD is 0 (no spread to call outliers from).
    """
    x = np.log1p(values) if log else np.asarray(values, dtype=float)
    median = float(np.median(x))
    mad = float(np.median(np.abs(x - median)))
    if mad == 0.0:
        return None
    low, high = median - n_mads * mad, median + n_mads * mad
    return (float(np.expm1(low)), float(np.expm1(high))) if log else (low, high)


def _removed_per_type(labels: np.ndarray | None, before: np.ndarray, after: np.ndarray) -> str:
    """``type n; type n`` of the cells a step removed (``before`` kept, ``after`` not), largest first."""
    if labels is None:
        return ""
    removed = before & ~after
    if not removed.any():
        return ""
    counts = pd.Series(labels[removed]).fillna("(unlabelled)").value_counts()
    return "; ".join(f"{t} {n}" for t, n in counts.items())


def quality_control(
    adata: AnnData,
    *,
    min_cells_per_gene: int = 3,
    min_genes_per_cell: int | None = 200,
    max_genes_per_cell: int | None = None,
    max_pct_mito: float | None = None,
    n_mads_genes: float | None = 5.0,
    n_mads_counts: float | None = 5.0,
    n_mads_mito: float | None = 3.0,
    mito_prefixes: Sequence[str] | None = None,
    warn_removed_share: float = 0.5,
    source: str = "input",
) -> tuple[AnnData, pd.DataFrame]:
    """Filter genes, then cells: fixed thresholds and/or outliers by median absolute deviations.

    Genes detected in fewer than ``min_cells_per_gene`` cells are dropped first. Then, one step at a
    time (``None`` disables a step):

    - fixed thresholds (the Seurat PBMC3K tutorial's recipe is ``min_genes_per_cell=200``,
      ``max_genes_per_cell=2500``, ``max_pct_mito=5``): cells with fewer than ``min_genes_per_cell``
      detected genes, ``max_genes_per_cell`` or more (likely doublets), ``max_pct_mito`` % or more
      mitochondrial counts (likely broken cells);
    - thresholds from the data (scanpy's single-cell best-practice guide): among the cells left, those
      whose log detected genes lie beyond ``median ± n_mads_genes × MAD``, whose log library size lies
      beyond ``median ± n_mads_counts × MAD``, and whose mitochondrial % lies above
      ``median + n_mads_mito × MAD``. Data-driven thresholds fit any
      technology: a Smart-seq2 file's library sizes are a hundred times an inDrop file's.

    ``mito_prefixes``: the mitochondrial gene prefixes (``None``: both ``MT-`` and ``mt-``; the pipeline
    passes the organism's). A mitochondrial step on a file without such genes removes nothing (warned).
QC that removes more than ``warn_removed_share`` of the cells, or of one type's cells, is warned about.

    Reads raw counts in ``X``. Returns a filtered copy with ``obs["n_genes"]``, ``obs["total_counts"]``,
    ``obs["pct_counts_mt"]`` and ``uns["qc"]`` (the thresholds applied), and a summary with one row per
    step: ``step``, ``n_cells`` and ``n_genes`` after it, the ``threshold`` it applied and the cells it
    removed per type (``removed_per_type``, when ``obs["cell_type"]`` exists).
    """
    prefixes = ("MT-", "mt-") if mito_prefixes is None else tuple(mito_prefixes)
    counts = sp.csr_matrix(adata.X)
    labels = adata.obs[LABEL_KEY].astype(object).to_numpy() if LABEL_KEY in adata.obs else None
    steps = [("input", adata.n_obs, adata.n_vars, "", "")]

    metrics, keep_genes = qc_input_metrics(adata, min_cells_per_gene=min_cells_per_gene, mito_prefixes=prefixes)
    counts = counts[:, keep_genes]
    var_names = adata.var_names[keep_genes]
    n_kept_genes = int(keep_genes.sum())
    steps.append((f"genes in >= {min_cells_per_gene} cells", adata.n_obs, n_kept_genes, "", ""))

    n_genes, total, pct_mito = (metrics[c].to_numpy() for c in ("n_genes", "total_counts", "pct_counts_mt"))
    has_mito = bool(mitochondrial_mask(var_names, prefixes).any())
    if (max_pct_mito is not None or n_mads_mito is not None) and not has_mito:
        log.warning("%s: no gene starts with %s; the mitochondrial filter removes nothing", source, list(prefixes))
    thresholds: dict[str, float | None] = {}
    keep_cells = np.ones(adata.n_obs, dtype=bool)

    def apply(step: str, passes: np.ndarray, threshold: str = "") -> None:
        nonlocal keep_cells
        after = keep_cells & passes
        steps.append((step, int(after.sum()), n_kept_genes, threshold, _removed_per_type(labels, keep_cells, after)))
        keep_cells = after

    if min_genes_per_cell is not None:
        thresholds["min_genes"] = float(min_genes_per_cell)
        apply(f"cells with >= {min_genes_per_cell} genes", n_genes >= min_genes_per_cell, f"n_genes >= {min_genes_per_cell}")
    if max_genes_per_cell is not None:
        thresholds["max_genes"] = float(max_genes_per_cell)
        apply(f"cells with < {max_genes_per_cell} genes", n_genes < max_genes_per_cell, f"n_genes < {max_genes_per_cell}")
    if max_pct_mito is not None:
        thresholds["max_pct_mito"] = float(max_pct_mito)
        apply(f"cells with < {max_pct_mito:g}% mitochondrial counts", pct_mito < max_pct_mito,
              f"pct_counts_mt < {max_pct_mito:g}")
    # Outlier thresholds come from the cells the fixed floors kept (empty droplets would drag the median).
    for column, label, values, n_mads in (("genes", "detected genes", n_genes, n_mads_genes),
                                          ("counts", "library size", total, n_mads_counts)):
        if n_mads is not None:
            bounds = mad_bounds(values[keep_cells], n_mads) if keep_cells.any() else None
            if bounds is None:
                log.warning("%s: %s has no spread (MAD 0); its outlier filter removes nothing", source, label)
                continue
            low, high = bounds
            thresholds[f"mad_min_{column}"], thresholds[f"mad_max_{column}"] = low, high
            apply(f"cells with log {label} within median ± {n_mads:g} MAD", (values >= low) & (values <= high),
                  f"{low:.0f} <= {'n_genes' if column == 'genes' else 'total_counts'} <= {high:.0f}")
    if n_mads_mito is not None and has_mito and keep_cells.any():
        bounds = mad_bounds(pct_mito[keep_cells], n_mads_mito, log=False)
        if bounds is not None:
            thresholds["mad_max_pct_mito"] = bounds[1]
            apply(f"cells with mitochondrial % within median + {n_mads_mito:g} MAD", pct_mito <= bounds[1],
                  f"pct_counts_mt <= {bounds[1]:.2f}")
    if not keep_cells.any():
        raise InputDataError(
            f"{source}: quality control removed every cell (thresholds: {thresholds}). Relax preprocessing.qc "
            "(see qc_summary.csv for what each step removed)."
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
    filtered.uns["qc"] = {"thresholds": thresholds, "mito_prefixes": list(prefixes), "mito_genes": has_mito}
    if LABEL_KEY in filtered.obs and isinstance(filtered.obs[LABEL_KEY].dtype, pd.CategoricalDtype):
        filtered.obs[LABEL_KEY] = filtered.obs[LABEL_KEY].cat.remove_unused_categories()
    _warn_large_losses(adata, keep_cells, source, warn_removed_share)
    summary = pd.DataFrame(steps, columns=["step", "n_cells", "n_genes", "threshold", "removed_per_type"])
    for row in summary.itertuples():
        if row.removed_per_type:
            log.info("%s: QC step '%s' (%s) removed %s", source, row.step, row.threshold, row.removed_per_type)
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
