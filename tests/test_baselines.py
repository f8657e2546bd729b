"""Sanity baselines: each does exactly the one thing it is a reference for."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData

from cellsynth.generators import GENERATORS, Generator
from cellsynth.generators.baselines import (
    ClassGaussianPCAGenerator,
    GeneShuffleGenerator,
    TrainCopyGenerator,
)


def _labels(adata: AnnData) -> np.ndarray:
    return adata.obs["cell_type"].astype(str).to_numpy()


@pytest.fixture(scope="module")
def adata(tiny_adata_factory):
    return tiny_adata_factory(n_cells=150, n_genes=20, n_types=3, seed=2)


@pytest.fixture(scope="module")
def correlated():
    """Two types; within each, genes 0 and 1 are almost the same signal (corr ~ 0.99)."""
    rng = np.random.default_rng(0)
    n = 400
    labels = np.repeat(["a", "b"], n // 2)
    signal = rng.normal(size=n)
    X = np.column_stack([signal, signal + 0.1 * rng.normal(size=n), rng.normal(size=n)])
    X = X + np.where(labels == "a", 3.0, 6.0)[:, None]
    obs = pd.DataFrame({"cell_type": pd.Categorical(labels)}, index=[f"c{i}" for i in range(n)])
    return AnnData(X=X.astype(np.float32), obs=obs, var=pd.DataFrame(index=["g0", "g1", "g2"]))


def test_registered():
    assert GENERATORS["train_copy"] is TrainCopyGenerator
    assert GENERATORS["gene_shuffle"] is GeneShuffleGenerator
    assert GENERATORS["class_gaussian_pca"] is ClassGaussianPCAGenerator
    for cls in (TrainCopyGenerator, GeneShuffleGenerator, ClassGaussianPCAGenerator):
        assert cls.__doc__ and "Tests" in cls.__doc__


def test_train_copy_returns_exact_training_rows_of_the_requested_type(adata):
    model = TrainCopyGenerator()
    model.fit(adata, seed=0, progress=False)
    request = ["type_1"] * 30 + ["type_0"] * 5 + ["type_2"] * 10
    synth = model.sample(len(request), cell_types=request, seed=3)
    labels = _labels(adata)
    for row, cell_type in zip(synth.X, request, strict=True):
        matches = np.flatnonzero((row == adata.X).all(axis=1))
        assert len(matches) >= 1, "not a training row"
        assert set(labels[matches]) == {cell_type}
    # with replacement: more copies than training cells of a type are possible
    many = model.sample(200, cell_types={"type_2": 200}, seed=1)
    assert many.n_obs == 200


def test_gene_shuffle_keeps_per_type_marginals(adata):
    model = GeneShuffleGenerator()
    model.fit(adata, seed=0, progress=False)
    synth = model.sample(300, cell_types={"type_0": 100, "type_2": 200}, seed=5)
    labels = _labels(adata)
    for cell_type in ("type_0", "type_2"):
        real = adata.X[labels == cell_type]
        fake = synth.X[synth.obs["cell_type"].astype(str).to_numpy() == cell_type]
        for gene in range(adata.n_vars):
            assert np.isin(fake[:, gene], real[:, gene]).all()
        # marginal means match within sampling error
        np.testing.assert_allclose(fake.mean(axis=0), real.mean(axis=0), atol=0.35)


def test_gene_shuffle_destroys_within_type_correlation(correlated):
    labels = _labels(correlated)
    real = correlated.X[labels == "a"]
    assert np.corrcoef(real[:, 0], real[:, 1])[0, 1] > 0.95
    model = GeneShuffleGenerator()
    model.fit(correlated, seed=0, progress=False)
    fake = model.sample(2000, cell_types={"a": 2000}, seed=0).X
    assert abs(np.corrcoef(fake[:, 0], fake[:, 1])[0, 1]) < 0.1


def test_class_gaussian_pca_type_means_and_correlation(correlated, adata):
    model = ClassGaussianPCAGenerator(n_components=50)
    model.fit(adata, seed=0, progress=False)
    # n_components clipped to the data (20 genes)
    assert model._state["components"].shape[0] == 20
    labels = _labels(adata)
    synth = model.sample(3000, cell_types={"type_0": 1000, "type_1": 1000, "type_2": 1000}, seed=0)
    synth_labels = _labels(synth)
    for cell_type in ("type_0", "type_1", "type_2"):
        real_mean = adata.X[labels == cell_type].mean(axis=0)
        fake = synth.X[synth_labels == cell_type]
        # clipping at 0 shifts genes whose Gaussian crosses 0 a little: compare with a tolerance
        np.testing.assert_allclose(fake.mean(axis=0), real_mean, atol=0.15)
    # keeps within-type correlation (unlike gene_shuffle)
    model = ClassGaussianPCAGenerator(n_components=3)
    model.fit(correlated, seed=0, progress=False)
    fake = model.sample(2000, cell_types={"a": 2000}, seed=0).X
    assert np.corrcoef(fake[:, 0], fake[:, 1])[0, 1] > 0.9


def test_class_gaussian_pca_single_cell_type_returns_its_cell(adata):
    data = adata.copy()
    data.obs["cell_type"] = data.obs["cell_type"].astype(str)
    data.obs.iloc[0, data.obs.columns.get_loc("cell_type")] = "single"
    model = ClassGaussianPCAGenerator(n_components=20, standardize=False)
    model.fit(data, seed=0, progress=False)
    out = model.sample(3, cell_types={"single": 3}, seed=0).X
    np.testing.assert_allclose(out, np.repeat(np.maximum(data.X[:1], 0), 3, axis=0), atol=1e-4)


@pytest.mark.parametrize("name", ["train_copy", "gene_shuffle", "class_gaussian_pca"])
def test_reproducible_and_seed_dependent(name, adata, tmp_path):
    model = GENERATORS[name]()
    model.fit(adata, seed=1, progress=False)
    request = {"type_0": 4, "type_1": 6}
    first = model.sample(10, cell_types=request, seed=9).X
    np.testing.assert_array_equal(model.sample(10, cell_types=request, seed=9).X, first)
    assert not np.array_equal(model.sample(10, cell_types=request, seed=10).X, first)
    model.save(tmp_path / name)
    np.testing.assert_array_equal(Generator.load(tmp_path / name).sample(10, cell_types=request, seed=9).X, first)


def test_class_gaussian_pca_bad_parameter():
    with pytest.raises(ValueError, match="n_components"):
        ClassGaussianPCAGenerator(n_components=0)


def test_smote_cells_lie_between_same_type_training_cells(tiny_adata_factory):
    from cellsynth.generators.smote import SMOTEGenerator

    adata = tiny_adata_factory(90, 6, 3, seed=4)
    model = SMOTEGenerator(k_neighbors=3)
    model.fit(adata, seed=0, progress=False)
    synth = model.sample(30, cell_types={"type_1": 30}, seed=2)
    train = adata.X[(adata.obs["cell_type"] == "type_1").to_numpy()]
    lo, hi = train.min(axis=0), train.max(axis=0)
    assert ((lo - 1e-6 <= synth.X) & (hi + 1e-6 >= synth.X)).all()  # convex combinations stay in the type's box
    assert not any((np.abs(train - row).sum(axis=1) < 1e-9).any() for row in synth.X)  # new cells, not copies


def test_smote_small_types_fall_back_instead_of_crashing(tiny_adata_factory, caplog):
    from cellsynth.generators.smote import SMOTEGenerator

    adata = tiny_adata_factory(40, 5, 2, seed=1)
    labels = adata.obs["cell_type"].astype(str).to_numpy().copy()
    labels[:3] = "tiny"  # 3 cells
    labels[3] = "single"
    adata.obs["cell_type"] = labels
    model = SMOTEGenerator(k_neighbors=5)
    model.fit(adata, seed=0, progress=False)
    synth = model.sample(6, cell_types={"tiny": 4, "single": 2}, seed=0)
    assert synth.n_obs == 6 and np.isfinite(synth.X).all()
    np.testing.assert_allclose(synth.X[-2:], np.repeat(adata.X[3:4], 2, axis=0))
    assert "using k_neighbors=2" in caplog.text and "copies of it" in caplog.text


def test_class_gaussian_pca_keeps_type_means_with_more_genes_than_the_svd_overwrites():
    """700 genes, 10 components: sklearn picks an SVD that may overwrite its input in place
    (``copy=False``); the scores must come from the fit itself, or every type's mean drifts."""
    rng = np.random.default_rng(0)
    labels = np.repeat(["a", "b"], 200)
    rates = np.where(labels == "a", 1.0, 3.0)[:, None] * rng.gamma(1.0, 1.0, size=(1, 700))
    X = np.log1p(rng.poisson(rates)).astype(np.float32)
    adata = AnnData(X=X, obs=pd.DataFrame({"cell_type": pd.Categorical(labels)}, index=[f"c{i}" for i in range(400)]))
    model = ClassGaussianPCAGenerator(n_components=10)
    model.fit(adata, seed=0, progress=False)
    synth = model.sample(400, cell_types={"a": 200, "b": 200}, seed=0)
    for cell_type in ("a", "b"):
        error = np.abs(synth.X[_labels(synth) == cell_type].mean(0) - X[labels == cell_type].mean(0))
        assert error.max() < 0.15  # 0.44-1.46 when the overwritten matrix was projected
