"""Labels for unlabelled data: Leiden clusters of the QC'd cells, named ``cluster 0``, ``cluster 1``, ...

cellsynth models and evaluates cells per cell type. A file without a cell-type column can still be used
by labelling its cells with clusters (``dataset.label_key: null`` and ``dataset.cluster_if_unlabelled:
true``), the usual first step of a scanpy analysis: log-normalised counts, highly variable genes, PCA,
a k-nearest-neighbour graph and Leiden community detection (``scanpy.tl.leiden``, igraph flavour). The
clusters then stand for cell types in every table, figure and model, under names that say what they are.
"""

from __future__ import annotations

import logging
import random
import warnings

import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
from anndata import AnnData

log = logging.getLogger(__name__)

CLUSTER_PREFIX = "cluster "


def leiden_clusters(
    counts: AnnData,
    *,
    resolution: float = 1.0,
    n_top_genes: int = 2000,
    n_pcs: int = 30,
    n_neighbors: int = 15,
    seed: int = 0,
    target_sum: float = 1e4,
) -> pd.Categorical:
    """Leiden clusters of the cells of ``counts`` (raw counts in ``X``), largest first: ``cluster 0``, ...

    ``counts`` is not modified, nor the caller's ``numpy`` and ``random`` global states (the seed goes
    to scanpy's ``random_state``).
    """
    work = AnnData(X=sp.csr_matrix(counts.X, dtype=np.float32), obs=pd.DataFrame(index=counts.obs_names),
                   var=pd.DataFrame(index=counts.var_names))
    numpy_state, random_state = np.random.get_state(), random.getstate()  # noqa: NPY002 - restored below
    try:
        sc.pp.normalize_total(work, target_sum=target_sum)
        sc.pp.log1p(work)
        n_genes = min(int(n_top_genes), work.n_vars)
        if n_genes < work.n_vars:
            sc.pp.highly_variable_genes(work, n_top_genes=n_genes, flavor="seurat", subset=True)
        n_comps = max(1, min(int(n_pcs), work.n_vars - 1, work.n_obs - 1))
        sc.pp.pca(work, n_comps=n_comps, random_state=seed)
        sc.pp.neighbors(work, n_neighbors=min(int(n_neighbors), work.n_obs - 1), n_pcs=n_comps, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            sc.tl.leiden(work, resolution=resolution, random_state=seed, flavor="igraph", n_iterations=2,
                         directed=False, key_added="leiden")
    finally:
        np.random.set_state(numpy_state)  # noqa: NPY002 - the caller's state, unchanged
        random.setstate(random_state)
    raw = work.obs["leiden"].astype(str)
    order = raw.value_counts().index  # largest first, so "cluster 0" is the biggest
    names = {old: f"{CLUSTER_PREFIX}{i}" for i, old in enumerate(order)}
    return pd.Categorical(raw.map(names).to_numpy(), categories=[names[o] for o in order])
