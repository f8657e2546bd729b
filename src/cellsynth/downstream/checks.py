"""Input checks and conversions shared by the marker and interaction analyses."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from cellsynth.schema import LABEL_KEY

__all__ = ["NegativeExpressionError", "combine_cells", "dense_expression", "require_log_normalised"]


class NegativeExpressionError(ValueError):
    """Expression values below zero: not log-normalised counts (e.g. batch-corrected or scaled data)."""


def _values(X) -> np.ndarray:
    """The stored values of a dense or sparse matrix (the implicit zeros of a sparse one are fine)."""
    if sp.issparse(X):
        return np.asarray(X.data)
    return np.asarray(X)


def require_log_normalised(adata: AnnData, name: str, label_key: str = LABEL_KEY) -> None:
    """Refuse expression that marker tests and CellPhoneDB statistics cannot be run on.

    Both analyses assume log-normalised, non-negative expression (``log1p`` of library-size
    normalised counts): CellPhoneDB's interaction means are means of expression, and scanpy's log
    fold changes undo ``log1p``. Data that were batch-corrected (e.g. ``limma::removeBatchEffect``,
    ComBat) or scaled hold negative values; running the statistics on them would give numbers
    without meaning, so this stops with a message instead.

    Parameters
    ----------
    adata
        The cells (``X`` is checked, dense or sparse).
    name
        What the cells are, for the message (e.g. ``"fold 0 test cells"``).
    label_key
        The ``obs`` column of cell types, which must exist.

    Raises
    ------
    NegativeExpressionError
        If ``X`` holds a value below zero.
    ValueError
        If ``X`` holds NaN or infinite values, or ``obs[label_key]`` is missing.
    """
    if label_key not in adata.obs:
        raise ValueError(f"{name}: obs[{label_key!r}] (the cell types) is missing")
    values = _values(adata.X)
    if values.size == 0:
        return
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{name}: X holds NaN or infinite values; downstream analyses need finite expression")
    lowest = float(values.min())
    if lowest < 0:
        n_negative = int((values < 0).sum())
        raise NegativeExpressionError(
            f"{name}: X holds {n_negative} negative values (minimum {lowest:.4g}). Marker genes and "
            "CellPhoneDB interactions need log-normalised, non-negative expression (log1p of normalised "
            "counts). Batch-corrected or scaled values (e.g. limma::removeBatchEffect, ComBat, z-scores) "
            "are not valid input: run the downstream pipeline on the log-normalised values before "
            "correction. Stopping rather than computing statistics on them."
        )


def dense_expression(adata: AnnData) -> np.ndarray:
    """``X`` as a new dense float32 array (never a view of the input)."""
    X = adata.X.toarray() if sp.issparse(adata.X) else np.array(adata.X, copy=True)
    return X.astype(np.float32, copy=False)


def combine_cells(parts: Sequence[tuple[str, AnnData]], label_key: str = LABEL_KEY) -> AnnData:
    """New AnnData stacking ``parts`` (same genes, same order) with ``obs`` = cell type and origin.

    Only ``X`` (as CSR float32) and the labels are kept; the inputs are not modified.

    Parameters
    ----------
    parts
        ``(origin, cells)`` pairs, e.g. ``[("real", train), ("synthetic", upsample)]``.
    label_key
        The ``obs`` column of cell types.
    """
    parts = [(origin, cells) for origin, cells in parts]
    if not parts:
        raise ValueError("combine_cells needs at least one set of cells")
    genes = parts[0][1].var_names
    for origin, cells in parts[1:]:
        if not cells.var_names.equals(genes):
            raise ValueError(f"{origin} cells do not have the same genes (in the same order) as {parts[0][0]}")
    blocks = [sp.csr_matrix(cells.X, dtype=np.float32) for _, cells in parts]
    labels = np.concatenate([cells.obs[label_key].astype(str).to_numpy() for _, cells in parts])
    origins = np.concatenate([np.repeat(origin, cells.n_obs) for origin, cells in parts])
    index = [f"{origin}:{name}" for origin, cells in parts for name in cells.obs_names]
    obs = pd.DataFrame({label_key: pd.Categorical(labels), "origin": pd.Categorical(origins)}, index=index)
    return AnnData(X=sp.vstack(blocks, format="csr"), obs=obs, var=pd.DataFrame(index=genes.copy()))
