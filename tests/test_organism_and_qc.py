"""Organism detection, QC thresholds chosen from the data (MADs), per-dataset QC and the cell-type split table."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellsynth.config import ConfigError, PreprocessingSettings
from cellsynth.data import InputDataError, assign_folds, quality_control, validate_counts
from cellsynth.data.organism import detect_organism, interaction_resource, resolve_organism
from cellsynth.data.preprocess import mad_bounds
from cellsynth.data.splits import check_enough_cells, describe_type_split
from conftest import make_counts


def test_organism_is_read_from_the_case_of_gene_symbols():
    assert detect_organism(["INS", "GCG", "MT-CO1", "C1orf112", "7SK"], source="f") == "human"
    assert detect_organism(["Ins1", "Gcg", "mt-Co1", "0610007P14Rik", "Gm12345"], source="f") == "mouse"
    assert detect_organism(["ENSMUSG00000000001", "ENSMUSG00000000028"], source="f") == "mouse"
    assert detect_organism(["ENSG00000000003"], source="f") == "human"
    with pytest.raises(InputDataError, match="Set dataset.organism"):
        detect_organism(["INS", "GCG", "Ins1", "Gcg"], source="mixed.h5ad")
    assert resolve_organism("mouse", ["INS"], source="f") == ("mouse", False)
    assert resolve_organism(None, ["Ins1", "Gcg"], source="f") == ("mouse", True)
    assert interaction_resource("auto", "mouse") == "mouseconsensus"
    assert interaction_resource("auto", "human") == "consensus"
    assert interaction_resource("cellphonedb", "mouse") == "cellphonedb"


def test_mad_bounds_are_median_plus_minus_k_mads_on_the_log_scale():
    values = np.array([100, 200, 400, 800, 1600], dtype=float)
    low, high = mad_bounds(values, 2)
    logged = np.log1p(values)
    mad = np.median(np.abs(logged - np.median(logged)))
    assert np.isclose(np.log1p(low), np.median(logged) - 2 * mad)
    assert np.isclose(np.log1p(high), np.median(logged) + 2 * mad)
    assert mad_bounds(np.full(10, 5.0), 3) is None  # no spread: no outliers to call


def _with_outliers():
    adata = make_counts(300, 200, 3, seed=2, sparse=False)
    X = adata.X
    X[:, :3] = np.random.default_rng(0).poisson(2, size=(300, 3))  # ~1% mitochondrial
    X[0] *= 40                      # a huge library (doublet-like), type_0
    X[1, 3:] = 0
    X[1, 3:40] = 1                  # few genes, tiny library, type_1
    X[2, :3] = 400                  # mostly mitochondrial, type_2
    adata.X = sp.csr_matrix(X)
    return validate_counts(adata, source="outliers.h5ad", label_key="cell_type")[0]


def test_mad_qc_removes_the_outliers_of_this_data_and_counts_them_per_type(caplog):
    counts = _with_outliers()
    with caplog.at_level(logging.INFO, logger="cellsynth"):
        filtered, summary = quality_control(counts, min_genes_per_cell=None, n_mads_genes=5, n_mads_counts=5, n_mads_mito=3,
                                            mito_prefixes=["MT-"], source="outliers.h5ad")
    assert {"cell_0", "cell_1", "cell_2"}.isdisjoint(filtered.obs_names)
    assert filtered.n_obs >= 250  # the bulk of the cells stays
    steps = summary.set_index("step")
    removed = " ".join(steps["removed_per_type"].fillna(""))
    assert "type_0" in removed and "type_1" in removed and "type_2" in removed
    assert any("within median ± 5 MAD" in s for s in steps.index)
    assert any("median + 3 MAD" in s for s in steps.index)
    thresholds = filtered.uns["qc"]["thresholds"]
    assert {"mad_min_genes", "mad_max_genes", "mad_min_counts", "mad_max_counts", "mad_max_pct_mito"} <= set(thresholds)
    assert (filtered.obs["pct_counts_mt"] <= thresholds["mad_max_pct_mito"]).all()
    # the mitochondrial threshold is median + 3 MAD of the cells the earlier steps kept
    genes_ok = np.ones(counts.n_obs, dtype=bool)
    genes_ok[[0, 1]] = False
    mito = 100 * counts.X[:, :3].sum(axis=1).A1 / counts.X.sum(axis=1).A1
    median = np.median(mito[genes_ok])
    assert np.isclose(thresholds["mad_max_pct_mito"], median + 3 * np.median(np.abs(mito[genes_ok] - median)))
    assert "removed type_0 1" in caplog.text or "removed type_0" in caplog.text
    # the input is never changed
    assert counts.n_obs == 300


def test_mad_qc_fits_each_technology_where_fixed_caps_do_not():
    umi = make_counts(200, 300, 2, seed=4)
    reads = umi.copy()
    reads.X = umi.X * 60  # read counts: libraries ~60x larger, same shape
    for adata in (umi, reads):
        clean = validate_counts(adata, source="f", label_key="cell_type")[0]
        filtered, _ = quality_control(clean, min_genes_per_cell=None, mito_prefixes=["MT-"], n_mads_mito=None)
        assert filtered.n_obs >= 195


def test_qc_warns_above_the_set_share_of_removed_cells(caplog):
    counts = _with_outliers()
    with caplog.at_level(logging.WARNING, logger="cellsynth"):
        quality_control(counts, min_genes_per_cell=150, n_mads_genes=None, n_mads_counts=None, n_mads_mito=None, warn_removed_share=0.9,
                        mito_prefixes=["MT-"], source="mine.h5ad")
    assert "of the cells" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cellsynth"):
        quality_control(counts, min_genes_per_cell=150, n_mads_genes=None, n_mads_counts=None, n_mads_mito=None, warn_removed_share=0.01,
                        mito_prefixes=["MT-"], source="mine.h5ad")
    assert "mine.h5ad: QC removed" in caplog.text


def test_qc_by_dataset_overrides_the_adaptive_default_for_named_datasets():
    settings = PreprocessingSettings.from_params(
        {"qc_by_dataset": {"pbmc3k": {"max_genes_per_cell": 2500, "max_pct_mito": 5, "n_mads_genes": None}}})
    seurat = settings.qc_for("pbmc3k")
    assert (seurat.max_genes_per_cell, seurat.max_pct_mito, seurat.n_mads_genes, seurat.n_mads_mito) == (2500, 5.0, None, 3.0)
    assert settings.qc_for("mine") == settings.qc  # any other dataset: the adaptive default
    assert settings.qc_for("mine", {"n_mads_counts": 4}).n_mads_counts == 4.0
    with pytest.raises(ConfigError, match="qc_by_dataset.pbmc3k.*unknown key"):
        PreprocessingSettings.from_params({"qc_by_dataset": {"pbmc3k": {"max_gene": 2500}}})


def test_too_few_cells_for_the_folds_is_an_error_at_qc():
    check_enough_cells(30, n_folds=5, source="f")
    with pytest.raises(InputDataError, match="a fold would train on 19"):
        check_enough_cells(24, n_folds=5, source="small.h5ad")


def test_the_split_table_says_how_each_kept_type_is_split():
    adata = make_counts(57, 30, 1, seed=0)
    labels = np.array(["big"] * 40 + ["rare"] * 12 + ["tiny"] * 5)
    adata.obs["cell_type"] = pd.Categorical(labels)
    folds = assign_folds(adata, n_folds=5, seed=0)
    types = pd.DataFrame({"cell_type": ["big", "rare", "tiny", "gone"], "cells_after_qc": [40, 12, 5, 3],
                          "status": ["kept", "kept", "kept", "dropped: 3 cells, fewer than the 5 folds"]})
    split = describe_type_split(types, adata.obs["cell_type"], folds).set_index("cell_type")
    assert split.loc["big", "test_cells_per_fold"] == "8" and split.loc["big", "training_cells_per_fold"] == "32"
    assert split.loc["rare", "test_cells_per_fold"] == "2–3" and split.loc["rare", "training_cells_per_fold"] == "9–10"
    assert split.loc["tiny", "test_cells_per_fold"] == "1" and split.loc["tiny", "folds_with_test_cells"] == 5
    assert split.loc["gone", "test_cells_per_fold"] == "–" and split.loc["gone", "folds_with_test_cells"] == 0
