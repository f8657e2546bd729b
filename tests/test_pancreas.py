"""The pancreas environment on the embedded Baron data (QC, rare types, folds), and a mouse subset end to end."""

from __future__ import annotations

import shutil

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from conftest import RAW_DATA
from kedro_helpers import run_session

BARON = "baron_human_pancreas_counts.h5ad"
KEPT_RARE = "macrophage"                        # 18 cells: 3-4 test cells in every fold
BELOW_FOLDS = ("t_cell", "epsilon", "schwann")  # 4, 3, 2 cells: fewer than the 5 folds


def _split(root, dataset="pancreas_baron"):
    return pd.read_csv(root / "data" / "08_reporting" / dataset / "cell_type_split.csv").set_index("cell_type")


@pytest.mark.slow
def test_pancreas_environment_preprocesses_and_splits_the_embedded_baron_data(project):
    shutil.copy(RAW_DATA / BARON, project / "data" / "01_raw" / BARON)
    run_session(project, "splitting", {"tracking": {"enabled": False}}, env="pancreas")

    reporting = project / "data" / "08_reporting" / "pancreas_baron"
    summary = pd.read_csv(reporting / "qc_summary.csv")
    assert summary["dataset"].eq("pancreas_baron").all()
    steps = " | ".join(summary["step"])
    assert "within median ± 5 MAD" in steps and "< 2500 genes" not in steps  # thresholds from the data, not PBMC3K's
    split = _split(project)
    assert split.loc["beta", "input_cells"] == 623 and split.loc["mast", "cells_after_qc"] == 8
    # rare types: which were dropped and why, which were kept and how they are split
    assert split.loc[KEPT_RARE, "status"] == "kept" and split.loc[KEPT_RARE, "folds_with_test_cells"] == 5
    assert split.loc[KEPT_RARE, "test_cells_per_fold"] == "3–4"
    assert split.loc[KEPT_RARE, "training_cells_per_fold"] == "14–15"
    assert "min_cells_per_type=10" in split.loc["mast", "status"] and "set it to 5" in split.loc["mast", "status"]
    for cell_type in BELOW_FOLDS:
        assert "fewer than the 5 folds" in split.loc[cell_type, "status"]
    kept = set(split.index[split["status"] == "kept"])
    assert len(kept) == 10
    folds = pd.read_parquet(project / "data" / "04_feature" / "pancreas_baron" / "fold_assignments.parquet")
    for k in range(5):  # the environment runs all five folds
        test = ad.read_h5ad(project / "data" / "05_model_input" / "pancreas_baron" / f"fold_{k}" / "test.h5ad")
        assert set(test.obs["cell_type"].astype(str)) == kept
        assert set(test.obs_names) == set(folds.index[folds["test_fold"] == k])
        assert test.uns["organism"]["name"] == "human"
        assert {"INS", "GCG", "SST", "PPY", "PRSS1", "KRT19", "COL1A1"} <= set(test.var_names)  # cell_ranger HVGs
    section = (reporting / "sections" / "data.html").read_text(encoding="utf-8")
    assert "Organism: human" in section and "macrophage" in section and "data:image/png;base64," in section

    # what the cell-type table advises: min_cells_per_type = n_folds keeps mast, 1-2 test cells per fold
    run_session(project, "splitting", {"tracking": {"enabled": False}, "preprocessing": {"min_cells_per_type": 5}},
                env="pancreas")
    split = _split(project)
    assert split.loc["mast", "status"] == "kept" and split.loc["mast", "test_cells_per_fold"] == "1–2"
    assert split.loc["mast", "folds_with_test_cells"] == 5
    assert all("fewer than the 5 folds" in split.loc[t, "status"] for t in BELOW_FOLDS)


@pytest.mark.slow
def test_a_mouse_subset_runs_from_preprocessing_to_downstream(project):
    full = ad.read_h5ad(RAW_DATA / "baron_mouse_pancreas_counts.h5ad")
    rng = np.random.default_rng(0)
    labels = full.obs["cell_type"].astype(str).to_numpy()
    sizes = {"beta": 60, "ductal": 50, "delta": 45, "alpha": 45, "endothelial": 40, "macrophage": 20}
    picked = np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == t), n, replace=False)
                                     for t, n in sizes.items()]))
    path = project / "data" / "01_raw" / "mouse_subset.h5ad"
    full[picked].copy().write_h5ad(path)
    params = {
        "dataset": {"name": "mouse_subset", "path": str(path), "label_key": "cell_type"},  # organism not given
        "splitting": {"n_top_genes": 600},
        "folds_to_run": [0],
        "generation": {"generators": ["smote", "train_copy"]},
        "evaluation": {"n_pca": 10, "utility": {"n_estimators": 10, "n_jobs": 1}, "figures": {"dpi": 40},
                       "fair": {"honest_repeats": 2}},
        "downstream": {"interactions": {"n_perms": 20}, "figures": {"dpi": 40}},
        "tracking": {"enabled": False},
    }
    run_session(project, "__default__", params)

    train = ad.read_h5ad(project / "data" / "05_model_input" / "mouse_subset" / "fold_0" / "train.h5ad")
    assert train.uns["organism"] == {"name": "mouse", "detected": True}
    reporting = project / "data" / "08_reporting" / "mouse_subset"
    assert set(_split(project, "mouse_subset")["status"]) == {"kept"}
    # the mouse resource is used: its pairs are found among the mouse genes
    test_interactions = pd.read_parquet(project / "data" / "07_model_output" / "mouse_subset" / "downstream" / "fold_0"
                                        / "test_interactions.parquet")
    assert len(test_interactions) > 0
    rmse = pd.read_csv(reporting / "interactions_rmse.csv")
    assert set(rmse["resource"]) == {"mouseconsensus"} and rmse["rmse"].notna().all()
    metrics = pd.read_parquet(reporting / "metrics.parquet")
    assert {"smote", "train_copy"} <= set(metrics["generator"])
    report = (reporting / "report.html").read_text(encoding="utf-8")
    assert "Organism: mouse (detected from the gene names)" in report and "mouseconsensus" in report
    assert "Not computed." not in report  # every section of the chain ran
