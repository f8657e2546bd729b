"""Anyone's data: unlabelled cells labelled by Leiden clusters on request, normalised data told where raw
counts come from (no loop between two messages), a batch column on one dataset said to be unused."""

from __future__ import annotations

import logging
import random

import numpy as np
import pytest
import scipy.sparse as sp
from anndata import AnnData
from sklearn.metrics import adjusted_rand_score

from cellsynth.config import ConfigError
from cellsynth.data import InputDataError, validate_counts
from cellsynth.data.clustering import leiden_clusters
from cellsynth.pipelines.preprocessing.nodes import filter_cells_and_genes, validate_input
from cellsynth.run_matrix import _read_parameters
from cellsynth.validation_hook import validate_parameters

DATASET = {"name": "mine", "path": "mine.h5ad", "label_key": None, "cluster_if_unlabelled": True}
LOOSE_QC = {"qc": {"min_cells_per_gene": 1, "min_genes_per_cell": 1, "max_genes_per_cell": None,
                   "max_pct_mito": None},
            "clustering": {"n_top_genes": 60, "n_pcs": 10, "n_neighbors": 10, "resolution": 0.3}}


def test_leiden_clusters_find_the_cell_programmes_and_name_them_as_clusters(counts_factory):
    cells = counts_factory(240, 80, 3, seed=3)
    before = cells.X.copy()
    np.random.seed(123)  # noqa: NPY002 - the caller's global state, which must stay as it is
    random.seed(123)
    numpy_state, python_state = np.random.get_state()[1].copy(), random.getstate()  # noqa: NPY002
    clusters = leiden_clusters(cells, n_top_genes=60, n_pcs=10, n_neighbors=10, resolution=0.3, seed=0)
    assert adjusted_rand_score(cells.obs["cell_type"], clusters) > 0.9
    assert list(clusters.categories) == [f"cluster {i}" for i in range(len(clusters.categories))]
    sizes = [int((clusters == c).sum()) for c in clusters.categories]
    assert sizes == sorted(sizes, reverse=True)  # cluster 0 is the largest
    assert (np.random.get_state()[1] == numpy_state).all() and random.getstate() == python_state  # noqa: NPY002
    assert (before != cells.X).nnz == 0
    again = leiden_clusters(cells, n_top_genes=60, n_pcs=10, n_neighbors=10, resolution=0.3, seed=0)
    assert (np.asarray(again) == np.asarray(clusters)).all()  # seeded


def test_unlabelled_data_is_labelled_by_clusters_in_preprocessing(counts_factory):
    raw = counts_factory(240, 80, 3, seed=4)
    del raw.obs["cell_type"]
    validated = validate_input(raw, DATASET)
    assert validated.obs["cell_type"].isna().all()
    kept, summary, cell_types, _ = filter_cells_and_genes(validated, LOOSE_QC, {"n_folds": 5}, DATASET)
    assert validated.obs["cell_type"].isna().all()  # the node's input is left alone
    assert kept.n_obs == 240 and all(t.startswith("cluster ") for t in kept.obs["cell_type"].cat.categories)
    assert kept.obs["cell_type"].nunique() == 3
    assert summary["step"].str.startswith("labelled by Leiden clustering (3 clusters").any()
    assert sorted(cell_types["cell_type"]) == sorted(kept.obs["cell_type"].cat.categories)  # the clusters, all kept
    assert (cell_types["status"] == "kept").all()


def test_a_null_label_key_without_clustering_names_both_ways_out():
    params = _read_parameters("local")
    params["dataset"]["label_key"] = None
    with pytest.raises(ConfigError, match="dataset.cluster_if_unlabelled: true"):
        validate_parameters(params)
    params["dataset"]["cluster_if_unlabelled"] = True
    validate_parameters(params)


def _normalised(n_cells=30, n_genes=20, *, layers=False, raw_counts=False):
    rng = np.random.default_rng(0)
    counts = rng.poisson(2.0, size=(n_cells, n_genes)).astype(np.float32)
    logged = np.log1p(counts / counts.sum(axis=1, keepdims=True) * 1e4).astype(np.float32)
    adata = AnnData(X=sp.csr_matrix(logged))
    adata.obs["cell_type"] = np.where(np.arange(n_cells) % 2, "a", "b")
    if raw_counts:
        adata.raw = AnnData(X=sp.csr_matrix(counts), obs=adata.obs.copy(), var=adata.var.copy())
    if layers:
        adata.layers["scaled"] = adata.X.copy()
    return adata


@pytest.mark.parametrize("counts_layer", [None, "counts"])
def test_normalised_data_without_counts_says_they_come_from_the_original_source(counts_layer):
    with pytest.raises(InputDataError) as caught:
        validate_counts(_normalised(), source="mine.h5ad", label_key="cell_type", counts_layer=counts_layer)
    message = str(caught.value)
    assert "from the data's original source" in message
    assert "null" not in message and "point dataset.counts_layer" not in message  # no loop back to the layer


def test_normalised_data_with_integer_raw_says_how_to_use_it():
    with pytest.raises(InputDataError, match=r"Its \.raw holds integer values.*layers\[\"counts\"\]"):
        validate_counts(_normalised(raw_counts=True), source="mine.h5ad", label_key="cell_type")


def test_a_missing_layer_on_a_file_of_counts_says_to_read_x(counts_factory):
    with pytest.raises(InputDataError, match=r"\(it has no layers\); X holds integer counts: set dataset.counts_layer to null"):
        validate_counts(counts_factory(20, 10, 2, seed=0), source="mine.h5ad", label_key="cell_type",
                        counts_layer="counts")
    with pytest.raises(InputDataError, match=r"layers: \['scaled'\]"):
        validate_counts(_normalised(layers=True), source="mine.h5ad", label_key="cell_type", counts_layer="counts")


def test_a_batch_column_on_one_dataset_is_said_to_be_unused(counts_factory, caplog):
    raw = counts_factory(40, 20, 2, seed=1)
    raw.obs["donor"] = np.where(np.arange(40) < 20, "d1", "d2")
    with caplog.at_level(logging.WARNING, logger="cellsynth"):
        validated = validate_input(raw, {"name": "mine", "path": "mine.h5ad", "label_key": "cell_type",
                                         "batch_key": "donor"})
    assert set(validated.obs["batch"]) == {"d1", "d2"}
    assert "dataset.batch_key='donor' is kept as obs['batch'] in every output but not used" in caplog.text
