"""Each bad input stops with a message that names the file and the fix."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellsynth.data.validation import InputDataError, drop_unusable_cells, validate_counts

SOURCE = "my_cells.h5ad"


def validate(adata, **kwargs):
    kwargs.setdefault("label_key", "cell_type")
    return validate_counts(adata, source=SOURCE, **kwargs)


def test_clean_input_passes_and_is_not_modified(counts_factory):
    adata = counts_factory(60, 30, 3, seed=0)
    before = adata.copy()
    clean, report = validate(adata)
    assert clean.shape == adata.shape
    assert report.counts_from == "X"
    assert list(clean.obs["cell_type"].cat.categories) == ["type_0", "type_1", "type_2"]
    assert (adata.X != before.X).nnz == 0
    assert adata.obs.equals(before.obs)


def test_negative_values_are_refused(counts_factory):
    adata = counts_factory(30, 10, 2, seed=0)
    adata.X = adata.X.toarray() - 1.0
    with pytest.raises(InputDataError, match=r"my_cells.h5ad: X holds negative values.*raw"):
        validate(adata)


def test_normalised_values_are_refused_and_the_counts_layer_is_suggested(counts_factory):
    adata = counts_factory(30, 10, 2, seed=0)
    adata.X = sp.csr_matrix(np.log1p(adata.X.toarray()))
    with pytest.raises(InputDataError, match=r'non-integer values.*expects raw integer counts.*layers\["counts"\]'):
        validate(adata)


def test_counts_are_read_from_the_counts_layer_when_present(counts_factory):
    adata = counts_factory(30, 10, 2, seed=0)
    adata.layers["counts"] = adata.X.copy()
    adata.X = sp.csr_matrix(np.log1p(adata.X.toarray()))
    clean, report = validate(adata)
    assert report.counts_from == 'layers["counts"]'
    np.testing.assert_array_equal(clean.X.toarray(), adata.layers["counts"].toarray())


def test_missing_counts_layer_lists_the_layers(counts_factory):
    adata = counts_factory(30, 10, 2, seed=0)
    with pytest.raises(InputDataError, match=r"counts_layer='raw' is not a layer"):
        validate(adata, counts_layer="raw")


def test_missing_label_column_lists_obs_columns(counts_factory):
    adata = counts_factory(30, 10, 2, seed=0)
    adata.obs["donor"] = "d1"
    with pytest.raises(InputDataError, match=r"no column 'celltype'.*Available obs columns: \['cell_type', 'donor'\]"):
        validate(adata, label_key="celltype")


def test_single_cell_type_is_refused(counts_factory):
    adata = counts_factory(30, 10, 1, seed=0)
    with pytest.raises(InputDataError, match="1 cell type.*at least 2"):
        validate(adata)


def test_empty_matrix_is_refused(counts_factory):
    adata = counts_factory(30, 10, 2, seed=0)[:0].copy()
    with pytest.raises(InputDataError, match="empty"):
        validate(adata)


def test_nan_labels_are_dropped_after_qc_with_a_count(counts_factory, caplog):
    adata = counts_factory(60, 10, 2, seed=0)
    labels = adata.obs["cell_type"].astype(object)
    labels.iloc[:7] = np.nan
    adata.obs["cell_type"] = labels
    clean, report = validate(adata)
    assert report.n_unlabelled == 7
    kept, rare, unlabelled = drop_unusable_cells(clean, 10, source=SOURCE, n_folds=5)
    assert unlabelled == 7 and kept.n_obs == 53 and not rare
    assert "dropped 7 cells without a cell-type label" in caplog.text


def test_rare_types_are_dropped_and_logged(counts_factory, caplog):
    adata = counts_factory(90, 10, 3, seed=0)
    adata = adata[(adata.obs["cell_type"] != "type_2").to_numpy() | (np.arange(90) < 12)].copy()  # type_2: 4 cells
    clean, _ = validate(adata)
    kept, rare, _ = drop_unusable_cells(clean, 10, source=SOURCE, n_folds=5)
    assert rare == {"type_2": 4}
    assert set(kept.obs["cell_type"].cat.categories) == {"type_0", "type_1"}
    assert "fewer than 10 cells" in caplog.text


def test_too_few_types_left_after_dropping(counts_factory):
    adata = counts_factory(30, 10, 2, seed=0)
    clean, _ = validate(adata)
    with pytest.raises(InputDataError, match="only 0 cell type"):
        drop_unusable_cells(clean, 100, source=SOURCE, n_folds=5)


def test_duplicate_names_are_made_unique_with_a_warning(counts_factory, caplog):
    adata = counts_factory(30, 10, 2, seed=0)
    adata.obs_names = ["same"] * 30
    adata.var_names = ["G"] * 10
    clean, report = validate(adata)
    assert report.duplicate_cell_names == 29 and report.duplicate_gene_names == 9
    assert clean.obs_names.is_unique and clean.var_names.is_unique
    assert "duplicate cell names" in caplog.text


def test_batch_column_is_kept(counts_factory):
    adata = counts_factory(30, 10, 2, seed=0)
    adata.obs["donor"] = pd.Categorical(np.where(np.arange(30) % 2, "a", "b"))
    clean, _ = validate(adata, batch_key="donor")
    assert set(clean.obs["batch"]) == {"a", "b"}
