"""Data other than PBMC3K: missing-label spellings, QC that removes most cells, too few cells or genes."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from cellsynth.data import InputDataError, quality_control, validate_counts
from cellsynth.data.splits import select_hvgs
from conftest import make_counts


@pytest.mark.parametrize("missing", ["nan", "None", "", " NaN ", "<NA>"])
def test_label_strings_that_mean_missing_are_unlabelled(missing):
    adata = make_counts(60, 40, 3, seed=0)
    labels = adata.obs["cell_type"].astype(str).to_numpy()
    labels[:12] = missing
    adata.obs["cell_type"] = labels
    clean, report = validate_counts(adata, source="mine.h5ad", label_key="cell_type")
    assert report.n_unlabelled == 12
    assert clean.obs["cell_type"].isna().sum() == 12
    assert not clean.obs["cell_type"].dropna().str.lower().isin(["nan", "none", "", "<na>"]).any()


def test_qc_warns_when_it_removes_most_cells_or_most_of_a_type(caplog):
    adata = make_counts(90, 60, 3, seed=1, sparse=False)
    labels = adata.obs["cell_type"].to_numpy()
    adata.X[:, :3] = 0  # the MT- genes

    def qc(mostly_mitochondrial, max_pct_mito=5.0):
        cells = adata.copy()
        cells.X[np.isin(labels, mostly_mitochondrial), 0] = 5000
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="cellsynth"):
            return quality_control(cells, min_genes_per_cell=1, max_genes_per_cell=None, max_pct_mito=max_pct_mito,
                                   n_mads_genes=None, n_mads_counts=None, n_mads_mito=None,
                                   source="mine.h5ad")[0]

    assert qc(["type_0"]).n_obs == 60
    assert "QC removed most cells of type_0 (100%)" in caplog.text and "of the cells" not in caplog.text
    assert qc(["type_0", "type_1"]).n_obs == 30
    assert "mine.h5ad: QC removed 67% of the cells" in caplog.text and "type_0 (100%), type_1 (100%)" in caplog.text
    assert qc(["type_0", "type_1"], max_pct_mito=None).n_obs == 90
    assert caplog.text == ""


def _log_with_counts(n_cells, n_genes):
    import scanpy as sc

    adata = make_counts(n_cells, n_genes, 2, seed=3)
    adata.layers["counts"] = adata.X.copy()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    return adata


def test_fewer_genes_than_hvgs_asked_is_a_warning(caplog):
    adata = _log_with_counts(200, 50)
    with caplog.at_level(logging.WARNING, logger="cellsynth"):
        genes = select_hvgs(adata, n_top_genes=2000)
    assert len(genes) == 50
    assert "2000 HVGs asked (splitting.n_top_genes) but only 50 genes passed QC" in caplog.text


def test_too_few_cells_for_hvgs_is_a_clear_error():
    with pytest.raises(InputDataError, match="12 training cells are too few to choose HVGs"):
        select_hvgs(_log_with_counts(12, 50), n_top_genes=20)


def test_a_null_label_key_says_to_cluster_first():
    from cellsynth.config import ConfigError
    from cellsynth.run_matrix import _read_parameters
    from cellsynth.validation_hook import validate_parameters

    params = _read_parameters("local")
    params["dataset"]["label_key"] = None
    with pytest.raises(ConfigError, match="cluster it first"):
        validate_parameters(params)
