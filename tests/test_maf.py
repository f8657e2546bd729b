"""MAF generator: both backends build what they claim, the default learns, conditioning works."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from anndata import AnnData

from cellsynth.generators import GENERATORS, GeneratorError
from cellsynth.generators.maf import MAFGenerator
from presets import generator_preset

PAPER = generator_preset("maf", "paper")

SMALL = {"n_layers": 2, "hidden_features": 32, "batch_size": 32, "learning_rate": 5e-3}


def separated_adata(n_per_type: int = 150, n_genes: int = 8, seed: int = 0) -> AnnData:
    """Three types with means far apart and correlated genes (a shared factor)."""
    rng = np.random.default_rng(seed)
    means = np.array([[1.0] * n_genes, [4.0] * n_genes, [1.0] * (n_genes // 2) + [4.0] * (n_genes - n_genes // 2)])
    labels = np.repeat(np.arange(3), n_per_type)
    factor = rng.normal(size=(len(labels), 1))
    X = means[labels] + 0.4 * factor + 0.15 * rng.normal(size=(len(labels), n_genes))
    obs = pd.DataFrame({"cell_type": pd.Categorical([f"type_{i}" for i in labels])})
    obs.index = obs.index.astype(str)
    return AnnData(X=X.astype(np.float32), obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)]))


def test_registered():
    assert GENERATORS["maf"] is MAFGenerator
    assert MAFGenerator.name == "maf"


@pytest.mark.parametrize(
    ("preprocessing", "min_drop"),
    [
        ({}, 0.1),  # whitened within type and type-centred: starts as a per-type Gaussian, still improves
        ({"whiten": "none", "center_by_type": False}, 4.0),  # raw z-scores: starts near N(0, I)
    ],
)
def test_default_backend_learns(tiny_adata_factory, preprocessing, min_drop):
    adata = tiny_adata_factory(n_cells=300, n_genes=12, n_types=3, seed=2)
    model = MAFGenerator(label_key="cell_type", **SMALL, **preprocessing, epochs=6, patience=None)
    history = model.fit(adata, seed=0, progress=False)
    assert type(model.flow).__module__.startswith("zuko")
    assert len(history.train_loss) == 6
    assert len(history.val_loss) == 6  # a validation slice of the training cells is scored
    assert history.train_loss[-1] < history.train_loss[0] - min_drop
    assert history.val_loss[-1] < history.val_loss[0] - min_drop
    assert history.best_epoch >= 4  # still improving (by more than the 1e-4 tolerance) late in training
    # NLL per cell of 12 z-scored genes; a standard normal scores ~17 on the first epoch.
    assert history.val_loss[-1] < 10.5


def test_early_stopping_restores_best(tiny_adata_factory):
    adata = tiny_adata_factory(n_cells=120, n_genes=10, n_types=3, seed=4)
    model = MAFGenerator(label_key="cell_type", **{**SMALL, "learning_rate": 3e-2}, epochs=200, patience=2)
    history = model.fit(adata, seed=0, progress=False)
    assert history.stopped_early and len(history.train_loss) < 200
    assert history.best_epoch == int(np.argmin(history.val_loss))


def test_paper_preset_is_the_papers_nflows_flow(tiny_adata_factory):
    from nflows.distributions.normal import StandardNormal
    from nflows.flows.base import Flow
    from nflows.transforms.autoregressive import MaskedAffineAutoregressiveTransform
    from nflows.transforms.base import CompositeTransform

    adata = tiny_adata_factory(n_cells=40, n_genes=6, n_types=2, seed=0)
    model = MAFGenerator(label_key="cell_type", **{**PAPER, "epochs": 1})
    history = model.fit(adata, seed=0, progress=False)
    assert history.val_loss == [] and not history.stopped_early
    assert model.conditional is False

    flow = model.flow
    assert isinstance(flow, Flow)
    assert isinstance(flow._transform, CompositeTransform)
    assert isinstance(flow._distribution, StandardNormal)
    transforms = list(flow._transform._transforms)
    assert len(transforms) == 1 and isinstance(transforms[0], MaskedAffineAutoregressiveTransform)
    made = transforms[0].autoregressive_net
    assert made.initial_layer.in_features == 6 and made.initial_layer.out_features == 1024
    assert len(made.blocks) == 2  # nflows' default num_blocks
    assert made.final_layer.out_features == 2 * 6  # shift and scale per gene

    synth = model.sample(10, seed=0)
    assert (synth.obs["label_source"] == "knn").all()
    assert np.isfinite(synth.X).all()


def test_conditional_samples_sit_near_their_type():
    adata = separated_adata()
    model = MAFGenerator(label_key="cell_type", **{**SMALL, "learning_rate": 1e-2}, epochs=12, patience=None)
    model.fit(adata, seed=1, progress=False)
    types = ["type_0", "type_1", "type_2"]
    train_means = np.stack([adata.X[(adata.obs["cell_type"] == t).to_numpy()].mean(0) for t in types])
    synth = model.sample(90, cell_types={t: 30 for t in types}, seed=3)
    assert (synth.obs["label_source"] == "conditioned").all()
    for i, t in enumerate(types):
        mean = synth.X[(synth.obs["cell_type"] == t).to_numpy()].mean(0)
        distances = np.linalg.norm(train_means - mean, axis=1)
        others = np.delete(distances, i)
        assert distances[i] < 0.2 * others.min(), (t, distances)  # type means are >= 5.6 apart


def test_seeds_and_global_rng(tiny_adata_factory):
    adata = tiny_adata_factory(n_cells=90, n_genes=8, n_types=3, seed=5)
    model = MAFGenerator(label_key="cell_type", **SMALL, epochs=2, patience=None)
    model.fit(adata, seed=0, progress=False)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = model.sample(25, seed=7).X
    assert torch.equal(torch.get_rng_state(), before)  # the caller's RNG stream is untouched
    b = model.sample(25, seed=7).X
    c = model.sample(25, seed=8).X
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)

    same = MAFGenerator(label_key="cell_type", **SMALL, epochs=2, patience=None)
    same.fit(adata, seed=0, progress=False)
    np.testing.assert_allclose(same.sample(25, seed=7).X, a, rtol=1e-5, atol=1e-6)


def test_paper_backend_seeded_and_reloads(tiny_adata_factory, tmp_path):
    adata = tiny_adata_factory(n_cells=60, n_genes=5, n_types=2, seed=6)
    model = MAFGenerator(label_key="cell_type", **{**PAPER, "epochs": 1, "hidden_features": 16})
    model.fit(adata, seed=0, progress=False)
    a = model.sample(30, seed=1)
    np.testing.assert_array_equal(a.X, model.sample(30, seed=1).X)
    assert not np.allclose(a.X, model.sample(30, seed=2).X)
    model.save(tmp_path / "m")
    restored = MAFGenerator.load(tmp_path / "m")
    assert restored.conditional is False
    again = restored.sample(30, seed=1)
    np.testing.assert_allclose(again.X, a.X, rtol=1e-5, atol=1e-6)
    # The labeller of an unconditional model is saved as arrays (no pickle) and labels the cells alike.
    assert sorted(p.name for p in (tmp_path / "m").iterdir() if "labeller" in p.name) == ["labeller.npz"]
    assert list(again.obs["cell_type"]) == list(a.obs["cell_type"])


def test_conditional_nflows_and_alternate_zuko_orders(tiny_adata_factory, tmp_path):
    adata = tiny_adata_factory(n_cells=60, n_genes=6, n_types=3, seed=7)
    for params in (
        {"backend": "nflows", "n_layers": 2, "hidden_features": 16, "order": "random"},
        {"backend": "zuko", "n_layers": 3, "hidden_features": 16, "order": "alternate", "passes": None},
    ):
        model = MAFGenerator(label_key="cell_type", **params, epochs=1, patience=None)
        model.fit(adata, seed=0, progress=False)
        synth = model.sample(9, cell_types={"type_1": 9}, seed=0)
        assert (synth.obs["cell_type"] == "type_1").all()
        model.save(tmp_path / params["backend"])
        again = MAFGenerator.load(tmp_path / params["backend"]).sample(9, cell_types={"type_1": 9}, seed=0)
        np.testing.assert_allclose(again.X, synth.X, rtol=1e-5, atol=1e-5)


def test_linear_map_is_an_exact_bijection(tiny_adata_factory):
    from cellsynth.generators.maf import _LinearMap

    adata = tiny_adata_factory(n_cells=80, n_genes=10, n_types=3, seed=8)
    X = np.asarray(adata.X, dtype=np.float32)
    labels = adata.obs["cell_type"].cat.codes.to_numpy().astype(np.int64)
    prep, W = _LinearMap.fit_transform(X.copy(), labels, n_types=3, standardize=True, pca_components=4, seed=0)
    np.testing.assert_allclose(prep.transform(X, labels), W, atol=1e-5)  # in place = out of place
    np.testing.assert_allclose(prep.inverse_transform(W, labels), X, atol=1e-4)
    for k in range(3):
        np.testing.assert_allclose(W[labels == k].mean(0), 0, atol=1e-4)  # centred per type
    # The rotation, never stored as a matrix, is orthogonal: applied to the identity it gives Q.
    Q = prep.rotation.apply(np.eye(10, dtype=np.float32)).astype(np.float64)
    np.testing.assert_allclose(Q.T @ Q, np.eye(10), atol=1e-5)
    # Its first 4 columns span the principal axes of the within-type residuals.
    residuals = prep.scaler.transform(X)
    for k in range(3):
        residuals[labels == k] -= residuals[labels == k].mean(0)
    axes = np.linalg.svd(residuals.astype(np.float64), full_matrices=False)[2][:4].T
    np.testing.assert_allclose(np.abs(axes.T @ Q[:, :4]), np.eye(4), atol=1e-3)
    # The complement is mixed: every complement direction weighs several genes.
    assert (np.abs(Q[:, 4:]) > 1e-3).sum(axis=0).min() >= 3
    # log|det dw/dz| of w = (z Q) / s
    expected = np.linalg.slogdet(Q / prep.rotation_scale.astype(np.float64))[1]
    assert prep.log_det == pytest.approx(expected, abs=1e-4)
    # Whitened coordinates have unit variance over the training cells (no type centring).
    plain, W_plain = _LinearMap.fit_transform(X.copy(), None, n_types=3, standardize=True, pca_components=4, seed=0)
    np.testing.assert_allclose(W_plain.std(0), 1, atol=1e-3)
    np.testing.assert_allclose(plain.inverse_transform(W_plain, labels), X, atol=1e-4)


def test_linear_map_memory_is_linear_in_genes():
    """No D x D matrix: the stored state of 3000 genes and 50 axes is O(D k)."""
    from cellsynth.generators.maf import _LinearMap

    rng = np.random.default_rng(0)
    X = rng.poisson(0.5, size=(300, 3000)).astype(np.float32)
    labels = np.arange(300) % 3
    prep, _ = _LinearMap.fit_transform(X, labels, n_types=3, standardize=True, pca_components=50, seed=0)
    assert max(array.size for array in prep.state().values()) <= 3000 * 50


@pytest.mark.parametrize(
    "bad",
    [
        {"backend": "tensorflow"},
        {"n_layers": 0},
        {"hidden_features": 2.5},
        {"passes": 0},
        {"learning_rate": 0},
        {"validation_fraction": 1.0},
        {"grad_clip": -1.0},
        {"noise_std": -0.1},
        {"patience": 3, "validation_fraction": 0.0},
        {"device": "tpu"},
        {"whiten": "zca"},
        {"pca_components": 0},
    ],
)
def test_bad_hyperparameters_are_value_errors(bad):
    with pytest.raises(ValueError, match="maf:"):
        MAFGenerator(**bad)


def test_passes_larger_than_genes(tiny_adata_factory):
    adata = tiny_adata_factory(n_cells=30, n_genes=4, n_types=2, seed=0)
    with pytest.raises(GeneratorError, match="passes=5 exceeds"):
        MAFGenerator(label_key="cell_type", passes=5).fit(adata, progress=False)


def test_snap_zeros_leaves_no_value_in_the_gap_below_each_genes_smallest_count(tiny_adata_factory):
    adata = tiny_adata_factory(n_cells=300, n_genes=12, n_types=3, seed=5)
    X = np.asarray(adata.X)
    smallest = np.where(X > 0, X, np.inf).min(axis=0)
    assert (X == 0).mean() > 0.05  # the toy data has a zero atom
    in_gap = {}
    for snap in (True, False):
        model = MAFGenerator(label_key="cell_type", **SMALL, epochs=2, patience=None, snap_zeros=snap)
        model.fit(adata, seed=0, progress=False)
        cells = np.asarray(model.sample(400, seed=1).X)
        in_gap[snap] = int(((cells > 0) & (cells < smallest)).sum())
        if snap:
            restored = np.asarray(model.sample(400, seed=1).X)
            np.testing.assert_array_equal(cells, restored)
    assert in_gap[True] == 0
    assert in_gap[False] > 0  # without snapping the flow's smoothed mass lands in the gap
