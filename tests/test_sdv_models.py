"""SDV generators (CTGAN, TVAE, Gaussian copula): table layout, conditioning, seeds, histories.

CTGAN and TVAE fit a Bayesian Gaussian mixture per gene before training (about half a second per
gene on one core), so these tests use 5 genes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from cellsynth.generators import GENERATORS, Generator, GeneratorError
from cellsynth.generators.sdv_models import (
    CTGANGenerator,
    GaussianCopulaGenerator,
    TVAEGenerator,
    gene_columns,
)

SMALL_CTGAN = {"epochs": 2, "batch_size": 20, "embedding_dim": 8, "generator_dim": (16,), "discriminator_dim": (16,)}
SMALL_TVAE = {"epochs": 3, "batch_size": 30, "embedding_dim": 4, "compress_dims": (16,), "decompress_dims": (16,)}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny networks: intra-op threading only costs time (a lot on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def adata(tiny_adata_factory):
    data = tiny_adata_factory(n_cells=90, n_genes=5, n_types=3, seed=3)
    data.var_names = ["CD3E", "MS4A1", "LYZ", "gene-with spaces", "HLA-DRA"]
    return data


@pytest.fixture(scope="module")
def ctgan(adata):
    model = CTGANGenerator(**SMALL_CTGAN)
    epochs = []
    history = model.fit(adata, seed=0, progress=False, on_epoch=lambda e, m: epochs.append((e, m)))
    return model, history, epochs


@pytest.fixture(scope="module")
def copula(adata):
    model = GaussianCopulaGenerator(default_distribution="truncnorm")
    model.fit(adata, seed=0, progress=False)
    return model


def test_registered_and_typed_params():
    assert GENERATORS["ctgan"] is CTGANGenerator
    assert GENERATORS["tvae"] is TVAEGenerator
    assert GENERATORS["gaussian_copula"] is GaussianCopulaGenerator
    assert CTGANGenerator().params.epochs == 100 == TVAEGenerator().params.epochs  # the paper's
    # JSON turns tuples into lists: accepted and normalised back
    assert CTGANGenerator(generator_dim=[32, 16]).params.generator_dim == (32, 16)
    with pytest.raises(ValueError, match="multiple of pac"):
        CTGANGenerator(batch_size=25)
    with pytest.raises(ValueError, match="default_distribution"):
        GaussianCopulaGenerator(default_distribution="lognormal")
    with pytest.raises(ValueError, match="max_draw_ratio"):
        TVAEGenerator(max_draw_ratio=0.5)
    with pytest.raises(TypeError, match="unknown hyperparameter"):
        GaussianCopulaGenerator(epochs=3)


def test_table_and_metadata_force_numerical_genes():
    model = GaussianCopulaGenerator()
    model.cell_types_ = ["a", "b"]
    X = np.zeros((6, 3), dtype=np.float32)
    X[:3, 0] = 1.0  # a binary gene: SDV's detection alone might call it categorical
    frame = model._table(X, np.array([0, 0, 0, 1, 1, 1]))
    assert list(frame.columns) == gene_columns(3) + ["label"]
    assert list(frame["label"]) == ["a"] * 3 + ["b"] * 3
    columns = model._metadata(frame).tables["cells"].columns
    assert {columns[c]["sdtype"] for c in gene_columns(3)} == {"numerical"}
    assert columns["label"]["sdtype"] == "categorical"
    assert "label" not in model._table(X, None)


def test_ctgan_history_and_epoch_callback(ctgan, adata):
    model, history, epochs = ctgan
    assert len(history.train_loss) == 2
    assert len(history.extra["discriminator_loss"]) == 2
    assert [e for e, _ in epochs] == [0, 1]
    assert set(epochs[0][1]) == {"train_loss", "discriminator_loss"}
    assert history.fit_seconds > 0


def test_ctgan_conditional_sampling_exact_types_and_seeds(ctgan, adata, tmp_path):
    model, _, _ = ctgan
    request = ["type_2", "type_0", "type_2", "type_1"] * 5
    synth = model.sample(20, cell_types=request, seed=4)
    assert list(synth.obs["cell_type"].astype(str)) == request
    assert list(synth.var_names) == list(adata.var_names)
    assert (synth.obs["label_source"] == "conditioned").all()
    # Values stay in the training range (enforce_min_max_values).
    assert synth.X.max() <= adata.X.max() + 1e-5
    again = model.sample(20, cell_types=request, seed=4)
    np.testing.assert_array_equal(again.X, synth.X)
    assert not np.array_equal(model.sample(20, cell_types=request, seed=5).X, synth.X)
    model.save(tmp_path / "ctgan")
    restored = Generator.load(tmp_path / "ctgan")
    np.testing.assert_array_equal(restored.sample(20, cell_types=request, seed=4).X, synth.X)


def test_gaussian_copula_conditions_exactly_even_for_a_rare_request(copula, adata):
    counts = {"type_0": 2, "type_1": 40, "type_2": 1}
    synth = copula.sample(43, cell_types=counts, seed=0)
    assert synth.obs["cell_type"].value_counts().to_dict() == counts
    np.testing.assert_array_equal(copula.sample(43, cell_types=counts, seed=0).X, synth.X)
    assert copula._history().train_loss == []


def test_gaussian_copula_type_means_follow_the_condition(copula, adata):
    types = ["type_0", "type_1", "type_2"]
    labels = adata.obs["cell_type"].astype(str).to_numpy()
    synth = copula.sample(900, cell_types=dict.fromkeys(types, 300), seed=1)
    fake_labels = synth.obs["cell_type"].astype(str).to_numpy()
    real = np.array([adata.X[labels == t].mean(0) for t in types])
    fake = np.array([synth.X[fake_labels == t].mean(0) for t in types])
    distance = np.linalg.norm(fake[:, None, :] - real[None, :, :], axis=-1)
    # conditioned cells of each type are nearest to the real mean of that type
    np.testing.assert_array_equal(distance.argmin(axis=1), [0, 1, 2])


def test_unconditional_mode_labels_by_knn(adata):
    model = GaussianCopulaGenerator(conditional=False, default_distribution="norm")
    assert model.conditional is False
    model.fit(adata, seed=0, progress=False)
    assert "label" not in model._synth.get_metadata().tables["cells"].columns
    synth = model.sample(30, seed=2)
    assert (synth.obs["label_source"] == "knn").all()
    np.testing.assert_array_equal(model.sample(30, seed=2).X, synth.X)


def test_tvae_fits_and_reports_mean_epoch_loss(adata):
    model = TVAEGenerator(**SMALL_TVAE, conditional=False)
    history = model.fit(adata, seed=0, progress=False)
    assert len(history.train_loss) == 3
    assert np.isfinite(history.train_loss).all()
    assert model.sample(7, seed=0).n_obs == 7


class _StubSynthesizer:
    """Stands in for a fitted SDV synthesizer: type "b" in 10% of rows, never type "c"."""

    def __init__(self):
        self.rng = np.random.default_rng(0)
        self.rows_drawn = 0

    def sample(self, n_rows):
        self.rows_drawn += n_rows
        labels = np.where(self.rng.random(n_rows) < 0.1, "b", "a")
        frame = pd.DataFrame({"g0": np.where(labels == "a", 0.0, 1.0), "g1": self.rng.random(n_rows)})
        frame["label"] = labels
        return {"cells": frame}


def _stubbed_tvae(max_draw_ratio=50.0):
    model = TVAEGenerator(max_draw_ratio=max_draw_ratio)
    model.var_names_ = ["x", "y"]
    model.cell_types_ = ["a", "b", "c"]
    model.type_counts_ = [50, 40, 10]  # the stub under-produces "b" relative to training
    model._synth = _StubSynthesizer()
    return model


def test_pooled_rejection_fills_every_type_in_request_order():
    model = _stubbed_tvae()
    labels = np.array([1, 0, 1, 1, 0] * 20)
    out = model._rejection_sample(labels)
    assert out.shape == (100, 2)
    np.testing.assert_array_equal(out[:, 0], (labels == 1).astype(np.float32))
    # 60 cells of a 10% type need about 600 rows; pooled draws serve "a" at the same time
    assert model._synth.rows_drawn < 2000


def test_rejection_gives_a_clear_error_for_a_type_the_model_never_generates():
    model = _stubbed_tvae(max_draw_ratio=20)
    with pytest.raises(GeneratorError, match=r"'c': '0/3.*PerTypeGenerator"):
        model._rejection_sample(np.array([0, 2, 2, 2]))
    assert model._synth.rows_drawn <= 20 * 4


def test_native_draws_used_when_pooling_would_waste_most_rows():
    model = _stubbed_tvae()
    native_calls = []

    def draw_for_type(cell_type, n_rows):
        native_calls.append((cell_type, n_rows))
        frame = pd.DataFrame({"g0": np.ones(n_rows), "g1": np.zeros(n_rows)})
        frame["label"] = cell_type
        return frame

    model._native_draws = True
    model._draw_for_type = draw_for_type
    # Only the under-produced type: a pooled draw would throw away most rows -> one native call.
    out = model._rejection_sample(np.full(30, 1))
    assert model._synth.rows_drawn == 0
    assert [t for t, _ in native_calls] == ["b"]
    np.testing.assert_array_equal(out[:, 0], 1.0)
    # A request in training proportions: pooled first, then native calls for what is still short.
    native_calls.clear()
    out = model._rejection_sample(np.array([0] * 25 + [1] * 20))
    assert 0 < model._synth.rows_drawn < 100
    assert [t for t, _ in native_calls] == ["b"]
    np.testing.assert_array_equal(out[:, 0], [0.0] * 25 + [1.0] * 20)
