"""Several datasets in one run: shared genes, label harmonisation, batch correction and its score."""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from anndata import AnnData

from cellsynth.data import InputDataError
from cellsynth.data import integration as integ
from cellsynth.datasets import AnnDataCollectionDataset
from cellsynth.pipelines.preprocessing import nodes
from cellsynth.pipelines.preprocessing.pipeline import create_pipeline

# In an integrated run `dataset` only names the result (its path and label_key are not read).
TOY_DATASET = {"name": "toy", "path": "unused.h5ad", "label_key": "unused"}
PREPROCESSING = {
    "qc": {
        "min_cells_per_gene": 3,
        "min_genes_per_cell": 50,
        "max_genes_per_cell": None,
        "max_pct_mito": None,
        "n_mads_genes": None,
        "n_mads_counts": None,
        "n_mads_mito": None,
        "mito_prefixes": ["MT-"],
    },
    "min_cells_per_type": 10,
    "target_sum": 10000,
}


# ----------------------------------------------------------------------------- genes
def test_shared_genes_and_how_many_were_dropped():
    genes, table = integ.shared_genes({"a": ["g1", "g2", "g3", "g4"], "b": ["g4", "g2", "g9"]})
    assert list(genes) == ["g2", "g4"]  # the first dataset's order
    assert table.set_index("dataset")["dropped"].to_dict() == {"a": 2, "b": 1}


def test_barely_overlapping_dataset_is_an_error_naming_both():
    gene_sets = {
        "pbmc": [f"G{i}" for i in range(100)],
        "zheng": [f"G{i}" for i in range(20, 120)],
        "ensembl": [f"G{i}" for i in range(40)] + [f"ENSG{i}" for i in range(60)],
    }
    with pytest.raises(InputDataError, match=r"'pbmc' and 'ensembl' share 40 genes, 40%") as info:
        integ.check_gene_overlap(gene_sets, min_overlap=0.5)
    assert "'zheng' and 'ensembl'" in str(info.value)
    assert "'pbmc' and 'zheng'" not in str(info.value)  # 80 % overlap passes
    table = integ.check_gene_overlap({k: gene_sets[k] for k in ("pbmc", "zheng")})
    assert table.loc[0, "overlap"] == pytest.approx(0.8)


# ----------------------------------------------------------------------------- labels
def _labelled(labels: list[str]) -> AnnData:
    return AnnData(
        X=np.ones((len(labels), 2), dtype=np.float32),
        obs=pd.DataFrame({"cell_type": pd.Categorical(labels)}, index=[f"c{i}" for i in range(len(labels))]),
    )


def test_label_mapping_reports_unmapped_and_counts_dropped(caplog):
    adata = _labelled(["nk"] * 5 + ["bcells"] * 3 + ["thelper"] * 4 + ["weird"] * 2)
    mapping = [{"nk": "NK"}, {"bcells": "B"}, {"thelper": None}]  # the shipped list form
    with caplog.at_level(logging.WARNING, logger="cellsynth.data.integration"):
        out, table = integ.harmonise_labels(adata, mapping, dataset="zheng")
    assert out.obs["cell_type"].value_counts().to_dict() == {"NK": 5, "B": 3, "weird": 2}
    status = table.set_index("label")["status"]
    assert status["thelper"] == "mapped to nothing (dropped)" and status["weird"] == "unmapped (kept)"
    assert "dropped 4 cells whose label maps to nothing" in caplog.text
    assert "'weird': 2" in caplog.text  # the unmapped label is reported

    out, table = integ.harmonise_labels(adata, {"nk": "NK", "bcells": "B", "thelper": None}, dataset="z", unmapped="drop")
    assert out.n_obs == 8 and table.set_index("label").loc["weird", "status"] == "unmapped (dropped)"
    with pytest.raises(InputDataError, match="mapped twice"):
        integ.harmonise_labels(adata, [{"nk": "NK"}, {"nk": "B"}], dataset="z")


# ----------------------------------------------------------------------------- correction
def _planted(seed: int = 0, noise: float = 0.0):
    """Two batches with unbalanced cell types: expression = gene base + type effect + batch shift."""
    rng = np.random.default_rng(seed)
    n_genes = 40
    batch = np.array(["a"] * 120 + ["b"] * 80)
    cell_type = np.array(["t0"] * 90 + ["t1"] * 30 + ["t0"] * 20 + ["t1"] * 60)  # t0 mostly in a
    base = rng.normal(3, 1, n_genes)
    type_effect = {"t0": np.zeros(n_genes), "t1": rng.normal(0, 2, n_genes)}
    shift = {"a": np.zeros(n_genes), "b": rng.normal(0, 1.5, n_genes)}
    X = base + np.stack([type_effect[t] + shift[b] for t, b in zip(cell_type, batch, strict=True)])
    X = X + rng.normal(0, noise, X.shape)
    return X, batch, cell_type, type_effect


def _group_mean(X, mask):
    return X[mask].mean(axis=0)


def test_linear_removes_a_planted_batch_shift_exactly_and_keeps_the_protected_type_effect():
    X, batch, cell_type, type_effect = _planted()
    corrected = integ.remove_batch_effect(X, batch, covariates=cell_type)
    for t in ("t0", "t1"):  # within a type, the batches now coincide exactly (no noise planted)
        np.testing.assert_allclose(corrected[(batch == "a") & (cell_type == t)][0], corrected[(batch == "b") & (cell_type == t)][0], atol=1e-4)
    effect = _group_mean(corrected, cell_type == "t1") - _group_mean(corrected, cell_type == "t0")
    np.testing.assert_allclose(effect, type_effect["t1"], atol=1e-4)
    # limma's convention: every batch moves to the average of the batches.
    midpoint = (X[(batch == "a") & (cell_type == "t0")][0] + X[(batch == "b") & (cell_type == "t0")][0]) / 2
    np.testing.assert_allclose(corrected[0], midpoint, atol=1e-4)

    # Without protection, the unbalanced design lets the correction eat part of the type effect.
    unprotected = integ.remove_batch_effect(X, batch)
    eaten = _group_mean(unprotected, cell_type == "t1") - _group_mean(unprotected, cell_type == "t0")
    assert np.abs(eaten - type_effect["t1"]).max() > 0.1


def test_correct_batch_effects_keeps_the_uncorrected_values_and_allows_negatives():
    X, batch, cell_type, _ = _planted(noise=0.3)
    X = X - 3.5  # some negative values after correction are expected and kept
    adata = AnnData(X=X.astype(np.float32), obs=pd.DataFrame({"batch": batch, "cell_type": cell_type}, index=[f"c{i}" for i in range(len(batch))]))
    for method in ("linear", "combat"):
        out = integ.correct_batch_effects(adata, method, protect_cell_type=True)
        np.testing.assert_array_equal(out.layers[integ.UNCORRECTED_LAYER], adata.X)
        assert out.uns["batch_correction"]["method"] == method and (out.X < 0).any()
        before = np.abs(_group_mean(adata.X, batch == "a") - _group_mean(adata.X, batch == "b")).mean()
        t0 = cell_type == "t0"
        after = np.abs(_group_mean(out.X, t0 & (batch == "a")) - _group_mean(out.X, t0 & (batch == "b"))).mean()
        assert after < 0.3 * before, method
    np.testing.assert_array_equal(integ.correct_batch_effects(adata, "none").X, adata.X)
    with pytest.raises(InputDataError, match="one of"):
        integ.correct_batch_effects(adata, "harmony")
    confounded = adata.copy()
    confounded.obs["cell_type"] = confounded.obs["batch"]
    with pytest.raises(InputDataError, match="no cell type is present in more than one batch"):
        integ.correct_batch_effects(confounded, "linear")


def test_protected_combat_writes_the_label_into_the_values_and_linear_does_not(caplog):
    """Two cells of one batch with identical expression must stay identical whatever their labels."""
    rng = np.random.default_rng(3)
    n, genes = 200, 6
    batch = np.repeat(["a", "b"], n // 2)
    cell_type = np.tile(["t0", "t1"], n // 2)
    X = np.where(rng.random((n, genes)) < 0.6, 0.0, rng.gamma(2.0, 0.5, (n, genes)))
    X[batch == "b"] = X[batch == "b"] * 1.8 + 0.4 * (X[batch == "b"] > 0)  # batch b: larger, shifted
    adata = AnnData(X=X.astype(np.float32),
                    obs=pd.DataFrame({"batch": batch, "cell_type": cell_type}, index=[f"c{i}" for i in range(n)]))
    zeros = (X[:, 0] == 0) & (batch == "a")
    spread = {}
    for method in ("linear", "combat"):
        with caplog.at_level(logging.WARNING, logger="cellsynth.data.integration"):
            out = np.asarray(integ.correct_batch_effects(adata, method, protect_cell_type=True).X)
        values = {t: np.unique(np.round(out[zeros & (cell_type == t), 0], 5)) for t in ("t0", "t1")}
        assert all(len(v) == 1 for v in values.values()), method  # one value per (batch, type) for a zero
        spread[method] = abs(float(values["t0"][0] - values["t1"][0]))
    assert spread["linear"] < 1e-5  # a per-batch shift: the zeros of batch a stay equal
    assert spread["combat"] > 1e-3  # rescaled around each type's mean: the zeros now encode the type
    assert "writes each cell's label into its values" in caplog.text


# ----------------------------------------------------------------------------- scores
def test_batch_silhouette_high_when_mixed_low_when_separated():
    rng = np.random.default_rng(0)
    centres = np.repeat(np.array([[0.0, 0.0], [20.0, 0.0]]), 100, axis=0)
    labels = np.repeat(["x", "y"], 100)
    batch = np.tile(["a", "b"], 100)
    mixed = centres + rng.normal(0, 1, centres.shape)
    score, table = integ.batch_silhouette(mixed, batch, labels)
    assert score > 0.9 and set(table["group"]) == {"x", "y"}
    separated = mixed + np.where(batch == "a", 0.0, 10.0)[:, None] * np.array([0.0, 1.0])
    assert integ.batch_silhouette(separated, batch, labels)[0] < 0.2
    assert integ.batch_silhouette(separated, batch)[0] < integ.batch_silhouette(mixed, batch)[0]
    assert integ.label_silhouette(mixed, labels) > 0.8  # types far apart
    # a type present in one batch only is left out, as in scib
    one_batch = np.where(labels == "y", "a", batch)
    _, table = integ.batch_silhouette(mixed, one_batch, labels)
    assert table.set_index("group")["asw_batch"].isna().to_dict() == {"x": False, "y": True}


# ----------------------------------------------------------------------------- nodes
def test_nodes_combine_datasets_on_shared_genes_with_a_batch_column(tmp_path, counts_factory):
    first = counts_factory(150, 100, 3, 1)
    second = counts_factory(150, 110, 3, 2)
    second.var_names = [f"GENE{j}" for j in range(10, 120)]  # 90 genes shared with the first
    second.obs["kind"] = second.obs.pop("cell_type").astype(str).str.replace("type_", "kind_")
    first.write_h5ad(tmp_path / "first.h5ad")
    second.write_h5ad(tmp_path / "second.h5ad")
    datasets = [
        {"name": "first", "path": str(tmp_path / "first.h5ad"), "label_key": "cell_type"},
        {"name": "second", "path": str(tmp_path / "second.h5ad"), "label_key": "kind", "qc": {"min_genes_per_cell": 10}},
    ]
    mapping = {"second": [{"kind_0": "type_0"}, {"kind_1": "type_1"}, {"kind_2": None}]}
    validated = nodes.load_datasets(AnnDataCollectionDataset(datasets=datasets).load(), datasets,
                                    {"min_gene_overlap": 0.5})
    cells, summary, genes, labels, types, _ = nodes.combine_datasets(
        validated, datasets, mapping, PREPROCESSING, {"n_folds": 5}, {}, TOY_DATASET
    )
    assert cells.n_vars == genes["shared"].iloc[0] <= 90
    assert cells.obs["batch"].value_counts().to_dict() == {"first": 150, "second": 100}  # kind_2 dropped
    assert set(cells.obs["cell_type"].cat.categories) == {"type_0", "type_1", "type_2"}
    assert cells.obs_names.is_unique and float(cells.X.max()) > 1  # raw counts
    assert summary["dataset"].unique().tolist() == ["first", "second", "toy"]
    assert "harmonised labels (dropped 50)" in summary["step"].tolist()
    types = types.set_index("cell_type")
    assert types["cells_after_qc"].sum() == 250 and set(types["status"]) == {"kept"}
    assert cells.uns["organism"]["name"] == "human"
    normalised = nodes.correct_batches(nodes.log_normalise(cells, PREPROCESSING), {"method": "linear"})
    assert {"counts", "log_uncorrected"} <= set(normalised.layers)

    third = counts_factory(100, 100, 3, 3)
    third.var_names = [f"ENSG{j}" for j in range(70)] + [f"GENE{j}" for j in range(30)]
    third.write_h5ad(tmp_path / "third.h5ad")
    datasets.append({"name": "third", "path": str(tmp_path / "third.h5ad"), "label_key": "cell_type"})
    with pytest.raises(InputDataError, match=r"'first' and 'third' share 27 genes"):
        nodes.load_datasets(AnnDataCollectionDataset(datasets=datasets).load(), datasets, {"min_gene_overlap": 0.5})
    with pytest.raises(InputDataError, match="not in `datasets`"):
        nodes.combine_datasets(validated, datasets[:2], {"nope": {}}, PREPROCESSING, {"n_folds": 5}, {}, TOY_DATASET)


def test_pipeline_shape_follows_the_datasets_parameter():
    single = create_pipeline(datasets=[])
    assert "raw_cells" in single.inputs() and "normalised_cells" in single.all_outputs()
    several = create_pipeline(datasets=[{"name": "a"}])
    assert "raw_cells" not in several.inputs()
    assert {"normalised_cells", "qc_summary", "integration_section", "integration_scores"} <= several.all_outputs()


# ----------------------------------------------------------------------------- the Kedro environment
@pytest.mark.slow
def test_integrated_pbmc_environment_on_real_subsets(project):
    from conftest import RAW_DATA
    from kedro_helpers import run_session

    root = project
    rng = np.random.default_rng(0)
    datasets = []
    for name, label_key in (("pbmc3k", "seurat_annotations"), ("zheng17", "cell_type")):
        file = "pbmc3k_counts.h5ad" if name == "pbmc3k" else "zheng17_sorted_pbmc_counts.h5ad"
        full = ad.read_h5ad(RAW_DATA / file)
        path = root / "data" / "01_raw" / f"{name}_subset.h5ad"
        full[np.sort(rng.choice(full.n_obs, 450, replace=False))].copy().write_h5ad(path)
        datasets.append({"name": name, "path": str(path), "label_key": label_key})
    params = {"datasets": datasets, "integration": {"method": "linear", "scoring": {"n_top_genes": 500, "n_pcs": 15}}}
    run_session(root, "preprocessing", params, env="integrated_pbmc")

    cells = ad.read_h5ad(root / "data" / "03_primary" / "integrated_pbmc" / "normalised_cells.h5ad")
    assert set(cells.obs["batch"].cat.categories) == {"pbmc3k", "zheng17"}
    assert {"NK", "B", "CD14+ Mono", "CD8 T"} <= set(cells.obs["cell_type"].cat.categories)
    assert "thelper" not in set(cells.obs["cell_type"].cat.categories)
    assert (cells.X < 0).any() and cells.layers["log_uncorrected"].min() >= 0
    reporting = root / "data" / "08_reporting" / "integrated_pbmc"
    scores = pd.read_csv(reporting / "integration_scores.csv").set_index("metric")
    assert scores.loc["asw_batch", "after"] > scores.loc["asw_batch", "before"]
    section = (reporting / "sections" / "integration.html").read_text()
    assert section.startswith('<section id="integration"') and "data:image/png;base64," in section
    assert (reporting / "figures" / "integration_umap.png").stat().st_size > 10_000
