"""QC, normalisation and fold splitting on tiny AnnData made here."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellsynth.data import assign_folds, make_fold, normalise, quality_control, validate_counts
from cellsynth.data.splits import select_hvgs
from cellsynth.data.validation import InputDataError


@pytest.fixture
def counts(counts_factory):
    adata = counts_factory(200, 300, 4, seed=3)
    clean, _ = validate_counts(adata, source="test", label_key="cell_type")
    return clean


def test_qc_applies_each_threshold(counts):
    X = counts.X.toarray()
    X[0, :] = 0
    X[0, :50] = 1  # 50 genes: below min_genes
    X[1, 0:3] = 5000  # mostly mitochondrial
    X[:, 10] = 0
    X[5, 10] = 1  # gene in 1 cell
    counts.X = sp.csr_matrix(X)
    filtered, summary = quality_control(counts, min_cells_per_gene=3, min_genes_per_cell=100, max_genes_per_cell=None,
                                        max_pct_mito=5, n_mads_genes=None, n_mads_counts=None, n_mads_mito=None)
    assert "cell_0" not in filtered.obs_names and "cell_1" not in filtered.obs_names
    assert "GENE10" not in filtered.var_names
    assert summary["n_cells"].iloc[-1] == filtered.n_obs == 198
    assert (filtered.obs["pct_counts_mt"] < 5).all()


def test_normalise_keeps_counts_and_does_not_touch_input(counts):
    before = counts.X.copy()
    out = normalise(counts, target_sum=1e4)
    np.testing.assert_array_equal(out.layers["counts"].toarray(), before.toarray())
    np.testing.assert_array_equal(counts.X.toarray(), before.toarray())
    totals = np.expm1(out.X.toarray()).sum(axis=1)
    np.testing.assert_allclose(totals, 1e4, rtol=1e-3)


def test_folds_are_stratified_disjoint_and_seeded(counts):
    folds = assign_folds(counts, n_folds=5, seed=0)
    assert sorted(folds["test_fold"].unique()) == [0, 1, 2, 3, 4]
    table = pd.crosstab(counts.obs["cell_type"].to_numpy(), folds["test_fold"].to_numpy())
    assert (table.max(axis=1) - table.min(axis=1) <= 1).all()
    again = assign_folds(counts, n_folds=5, seed=0)
    assert folds.equals(again)
    assert not folds.equals(assign_folds(counts, n_folds=5, seed=1))


def test_hvgs_depend_only_on_training_cells(counts):
    data = normalise(counts)
    folds = assign_folds(data, n_folds=5, seed=0)
    train, test = make_fold(data, folds, fold=0, n_top_genes=50)
    assert train.n_vars == test.n_vars == 50
    assert list(train.var_names) == list(test.var_names)
    assert set(train.obs_names).isdisjoint(test.obs_names)
    # Scramble every test cell: the chosen genes must not change.
    scrambled = data.copy()
    is_test = folds["test_fold"].to_numpy() == 0
    rng = np.random.default_rng(0)
    counts_test = scrambled.layers["counts"][is_test].toarray()
    scrambled_counts = scrambled.layers["counts"].toarray()
    scrambled_counts[is_test] = rng.permuted(counts_test, axis=1) * 7
    scrambled.layers["counts"] = sp.csr_matrix(scrambled_counts)
    train2, _ = make_fold(scrambled, folds, fold=0, n_top_genes=50)
    assert list(train2.var_names) == list(train.var_names)
    assert train.uns["fold"]["hvg_cells"] == "train"


def test_hvgs_chosen_on_all_cells_read_the_test_cells_too(counts):
    data = normalise(counts)
    folds = assign_folds(data, n_folds=5, seed=0)
    train, test = make_fold(data, folds, fold=0, n_top_genes=50, hvg_cells="all")
    assert list(train.var_names) == list(test.var_names)
    assert list(train.var_names) == list(select_hvgs(data, n_top_genes=50))
    assert test.uns["fold"]["hvg_cells"] == "all"
    # Five genes Poisson (no extra variance) in the training cells, on/off in the test cells: highly
    # variable over all cells, not over the training cells.
    loud = data.copy()
    is_test = folds["test_fold"].to_numpy() == 0
    rng = np.random.default_rng(0)
    dense = loud.layers["counts"].toarray()
    dense[:, :5] = rng.poisson(3, size=(loud.n_obs, 5))
    dense[np.flatnonzero(is_test)[::2], :5] = rng.poisson(30, size=(len(np.flatnonzero(is_test)[::2]), 5))
    dense[np.flatnonzero(is_test)[1::2], :5] = 0
    loud.layers["counts"] = sp.csr_matrix(dense)
    with_test, _ = make_fold(loud, folds, fold=0, n_top_genes=50, hvg_cells="all")
    train_only, _ = make_fold(loud, folds, fold=0, n_top_genes=50)
    assert set(loud.var_names[:5]) <= set(with_test.var_names)
    assert set(loud.var_names[:5]).isdisjoint(train_only.var_names)
    with pytest.raises(InputDataError, match="hvg_cells"):
        make_fold(data, folds, fold=0, n_top_genes=50, hvg_cells="test")
