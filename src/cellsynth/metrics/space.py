"""The common space every distribution metric is computed in.

The paper (and its public code) compares real and generated cells after a ``StandardScaler`` followed
by ``PCA(n_components=50)``, both fitted on the real training cells of the fold. :class:`ReferenceSpace`
is that map, fitted once per fold and applied unchanged to every set that is compared (held-out cells,
training cells, each generator's samples), so that all comparisons of a fold share one space.

Note that the training cells are *in-sample* for this PCA: their projection carries the PCA's fit to
them, while held-out and generated cells are out-of-sample. Comparing training cells with held-out
cells (the paper's "train vs test" column) is therefore not a like-for-like floor; compare two halves
of the held-out cells instead (see :func:`cellsynth.metrics.split_halves`).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

__all__ = ["ReferenceSpace", "as_dense"]

#: Cells projected at a time by :meth:`ReferenceSpace.transform` (4096 × 2000 genes × 8 bytes = 66 MB).
TRANSFORM_CHUNK = 4096


def as_dense(X, dtype=np.float64) -> np.ndarray:
    """Return ``X`` (a numpy array, scipy sparse matrix, or array-like) as a 2-D dense ``dtype`` array."""
    if sp.issparse(X):
        X = X.toarray()
    X = np.asarray(X, dtype=dtype)
    if X.ndim == 1:
        X = X[:, None]
    if X.ndim != 2:
        raise ValueError(f"expected a 2-D matrix (cells × features), got shape {X.shape}")
    return X


class ReferenceSpace:
    """``StandardScaler`` + ``PCA(n_components, random_state=seed)`` fitted on real training cells.

    .. math::  z = W^\\top \\left(\\frac{x - \\mu}{\\sigma}\\right)

    with the gene means :math:`\\mu` and standard deviations :math:`\\sigma` (population, genes of
    zero variance get :math:`\\sigma = 1`) and the loadings :math:`W` (genes × components) of the PCA,
    all estimated on the real training cells only.

    Parameters
    ----------
    n_components : int, default 50
        Number of principal components (the paper's 50). Clipped to ``min(n_cells, n_genes)`` of the
        fitting matrix, so tiny inputs work; the value used is ``n_components_`` after fitting.
    seed : int, default 0
        ``random_state`` of the PCA (the randomized SVD solver is used for large matrices), so the
        space is a deterministic function of the training matrix and the seed. The paper's code used 42.

    Attributes
    ----------
    n_components_ : int
    n_features_in_ : int
    explained_variance_ratio_ : np.ndarray
    scaler_ : sklearn.preprocessing.StandardScaler
    pca_ : sklearn.decomposition.PCA

    Examples
    --------
    >>> space = ReferenceSpace(seed=0).fit(train.X)          # doctest: +SKIP
    >>> z_test, z_synth = space.transform(test.X), space.transform(synthetic.X)  # doctest: +SKIP
    """

    def __init__(self, n_components: int = 50, seed: int = 0):
        if n_components < 1:
            raise ValueError("n_components must be >= 1")
        self.n_components = int(n_components)
        self.seed = int(seed)

    def fit(self, X) -> ReferenceSpace:
        """Fit the scaler and the PCA on ``X`` (real training cells × genes, sparse or dense).

        Memory: one dense float64 copy of ``X`` (standardised and then centred in place by the
        PCA, which is told not to copy it), besides ``X`` itself.
        """
        original = X
        X = as_dense(X)
        if isinstance(original, np.ndarray) and np.shares_memory(X, original):
            X = X.copy()  # as_dense returned the caller's float64 array: never write to it
        n_cells, n_genes = X.shape
        if n_cells < 2:
            raise ValueError("ReferenceSpace needs at least 2 cells to fit")
        self.n_components_ = int(min(self.n_components, n_cells, n_genes))
        self.n_features_in_ = n_genes
        self.scaler_ = StandardScaler().fit(X)
        standardised = self.scaler_.transform(X, copy=False)  # in place (X is our copy)
        self.pca_ = PCA(n_components=self.n_components_, random_state=self.seed, copy=False)
        self.pca_.fit(standardised)
        del standardised, X
        self.explained_variance_ratio_ = self.pca_.explained_variance_ratio_
        return self

    def transform(self, X, chunk: int = TRANSFORM_CHUNK) -> np.ndarray:
        """Project cells × genes (sparse or dense, same genes as the fit) to cells × ``n_components_``.

        Rows are projected ``chunk`` cells at a time, so no dense float64 copy of the whole input is
        made (the result is the same as projecting all rows at once, up to float rounding).
        """
        if not hasattr(self, "pca_"):
            raise RuntimeError("ReferenceSpace is not fitted; call fit(X_train) first")
        if not sp.issparse(X):
            X = np.asarray(X)  # no copy for an array
            if X.ndim != 2:
                X = as_dense(X)  # a 1-D array is one feature; anything else raises
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"expected {self.n_features_in_} genes, got {X.shape[1]}")
        if sp.issparse(X):
            X = X.tocsr()
        out = np.empty((X.shape[0], self.n_components_), dtype=np.float64)
        for start in range(0, X.shape[0], chunk):
            block = as_dense(X[start : start + chunk])  # the scaler copies it (the input is never written)
            out[start : start + chunk] = self.pca_.transform(self.scaler_.transform(block))
        return out

    def fit_transform(self, X) -> np.ndarray:
        """``fit(X)`` then ``transform(X)`` (the in-sample projection of the training cells)."""
        return self.fit(X).transform(X)

    def __repr__(self) -> str:
        fitted = f", n_components_={self.n_components_}" if hasattr(self, "pca_") else ""
        return f"ReferenceSpace(n_components={self.n_components}, seed={self.seed}{fitted})"
