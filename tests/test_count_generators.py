"""The count-space generators (``scvi``, ``nb_latent_*``) on real PBMC3K counts, and their parts."""

from __future__ import annotations

import dataclasses

import anndata as ad
import numpy as np
import pytest

from cellsynth.data import assign_folds, make_fold, normalise, quality_control, validate_counts
from cellsynth.data.validation import drop_unusable_cells
from cellsynth.generators import GENERATORS, GeneratorError
from cellsynth.generators.count_space import LibrarySizes, negative_binomial, to_fold_space
from cellsynth.generators.latent_flow import LATENT_PRIOR_DEFAULTS, NBLatentFlowGenerator
from cellsynth.generators.scvi_vae import drop_short_last_batch
from cellsynth.generators.training import validation_split
from conftest import RAW_DATA

AUTOENCODER = {"n_latent": 4, "n_hidden": 32, "epochs": 3, "batch_size": 64, "patience": None}
TINY_PRIORS = {
    "flow_matching": {"hidden_features": 16, "epochs": 1, "integration_steps": 4, "patience": None},
    "maf": {"hidden_features": 16, "epochs": 1, "patience": None},
    "moe": {"n_blocks": 1, "n_tokens": 2, "d_model": 8, "n_heads": 2, "gate_hidden": 8, "coupling_hidden": 8,
            "maf_hidden": 16, "mask_hidden": 8, "epochs": 1, "patience": None},
}


@pytest.fixture(scope="module")
def pbmc_fold() -> ad.AnnData:
    """Training cells of a PBMC3K fold as the pipeline makes them: 900 cells, 300 HVGs."""
    raw = ad.read_h5ad(RAW_DATA / "pbmc3k_counts.h5ad")
    raw = raw[np.random.default_rng(0).choice(raw.n_obs, 900, replace=False)].copy()
    cells, _ = validate_counts(raw, source="pbmc3k", label_key="seurat_annotations")
    cells, _ = quality_control(cells, source="pbmc3k")
    cells = normalise(drop_unusable_cells(cells, 10, source="pbmc3k", n_folds=3)[0])
    train, _ = make_fold(cells, assign_folds(cells, n_folds=3, seed=0), fold=0, n_top_genes=300)
    return train


def test_scvi_counts_are_integers_in_the_training_library_range_for_every_requested_type(pbmc_fold):
    model = GENERATORS["scvi"](**AUTOENCODER)
    model.fit(pbmc_fold, seed=0, progress=False)
    request = {cell_type: 40 for cell_type in model.cell_types_}
    cells = model.sample(sum(request.values()), cell_types=request, seed=1)

    counts = cells.layers["counts"].toarray()
    assert counts.dtype == np.int32 and (counts >= 0).all()
    assert cells.obs["cell_type"].value_counts().to_dict() == request
    library = counts.sum(axis=1)
    real = np.asarray(pbmc_fold.layers["counts"].sum(axis=1)).ravel()
    # NB draws around a log-normal library: the bulk inside the real range, medians alike
    inside = (library >= real.min() / 2) & (library <= real.max() * 2)
    assert inside.mean() > 0.95
    assert 0.5 < np.median(library) / np.median(real) < 2.0
    # X is those counts normalised with the fold's target sum, as the preprocessing does
    assert cells.n_vars == pbmc_fold.n_vars and list(cells.var_names) == list(pbmc_fold.var_names)
    np.testing.assert_array_equal(cells.X > 0, counts > 0)


@pytest.mark.parametrize("prior", sorted(TINY_PRIORS))
def test_each_latent_prior_trains_and_samples_new_latents(prior, pbmc_fold, tmp_path):
    model = NBLatentFlowGenerator(latent_prior=prior, prior_params=TINY_PRIORS[prior], **AUTOENCODER)
    history = model.fit(pbmc_fold, seed=0, progress=False)
    assert len(history.train_loss) == AUTOENCODER["epochs"] and len(history.extra["prior_train_loss"]) == 1
    cells = model.sample(30, cell_types={model.cell_types_[0]: 30}, seed=2)
    assert (cells.obs["cell_type"] == model.cell_types_[0]).all()
    assert cells.layers["counts"].sum() > 0

    model.save(tmp_path / prior)
    again = type(model).load(tmp_path / prior).sample(30, cell_types={model.cell_types_[0]: 30}, seed=2)
    assert (again.layers["counts"] != cells.layers["counts"]).nnz == 0


def test_a_short_last_mini_batch_is_dropped_each_epoch(pbmc_fold, caplog):
    assert not drop_short_last_batch(1898, 128)  # PBMC3K fold 0: a last batch of 106 cells is kept
    assert drop_short_last_batch(1538, 128)  # Zheng17 folds 2 and 3: a last batch of 2 cells
    assert not drop_short_last_batch(100, 128) and not drop_short_last_batch(256, 128)
    # One cell left over: BatchNorm cannot train on it; the epoch drops it instead of failing.
    labels = pbmc_fold.obs["cell_type"].cat.codes.to_numpy()
    n_train = len(validation_split(pbmc_fold.n_obs, 0.1, 0, labels)[0])
    model = GENERATORS["scvi"](**{**AUTOENCODER, "epochs": 2, "batch_size": n_train - 1})
    with caplog.at_level("INFO", logger="cellsynth.generators.scvi_vae"):
        model.fit(pbmc_fold, seed=0, progress=False)
    assert f"drops its last mini-batch of 1 cells (of {n_train}" in caplog.text


def test_a_bad_prior_hyperparameter_fails_before_training():
    with pytest.raises(TypeError, match="unknown hyperparameter"):
        NBLatentFlowGenerator(latent_prior="maf", prior_params={"not_a_field": 1})
    assert set(LATENT_PRIOR_DEFAULTS) == {"flow_matching", "maf", "moe"}


def test_count_generators_need_raw_counts(pbmc_fold):
    no_counts = pbmc_fold.copy()
    del no_counts.layers["counts"]
    with pytest.raises(GeneratorError, match=r"needs layers\['counts'\]"):
        GENERATORS["scvi"](**AUTOENCODER).fit(no_counts, seed=0, progress=False)
    not_counts = pbmc_fold.copy()
    not_counts.layers["counts"] = not_counts.X.copy()
    with pytest.raises(GeneratorError, match="non-negative integer counts"):
        GENERATORS["scvi"](**AUTOENCODER).fit(not_counts, seed=0, progress=False)

    corrected = pbmc_fold.copy()
    corrected.uns["batch_correction"] = {"method": "linear"}
    with pytest.raises(GeneratorError, match=r"X is batch-corrected \(linear\)"):
        GENERATORS["nb_latent_flow"](**AUTOENCODER).fit(corrected, seed=0, progress=False)


def test_library_sizes_follow_each_type_and_keep_totals_above_the_hvg_counts():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], [200, 200, 3])  # a rare type borrows the pooled spread
    hvg = np.exp(rng.normal([5.0, 7.0, 6.0], 0.3, size=(403, 3))[np.arange(403), labels])
    total = hvg * np.exp(rng.normal(1.0, 0.1, size=403))
    model = LibrarySizes.fit(hvg, total, labels, n_types=3)
    drawn, ratio = model.sample(np.repeat([0, 1, 2], 2000), np.random.default_rng(1))
    for t, centre in enumerate([5.0, 7.0, 6.0]):
        assert abs(np.log(drawn[t * 2000 : (t + 1) * 2000]).mean() - centre) < 0.35
    assert (ratio >= 1).all()
    np.testing.assert_allclose(np.log(drawn[:2000]).std(), 0.3, atol=0.05)


@pytest.mark.parametrize("theta_shape", ["per gene", "per gene and cell"])
def test_negative_binomial_has_the_nb_moments_and_the_same_counts_on_any_thread_count(theta_shape):
    mean = np.tile(np.array([0.05, 0.5, 3.0, 20.0], dtype=np.float32), (3000, 1))
    theta = np.array([0.5, 2.0, 5.0, 1.0], dtype=np.float32)
    if theta_shape == "per gene and cell":
        theta = np.tile(theta, (3000, 1))
    one = negative_binomial(mean, theta, np.random.default_rng(7), threads=1)
    two = negative_binomial(mean, theta, np.random.default_rng(7), threads=2)
    np.testing.assert_array_equal(one, two)
    assert one.dtype == np.float32 and (one >= 0).all() and np.array_equal(one, np.round(one))
    expected_var = mean[0] + mean[0] ** 2 / np.broadcast_to(theta, mean.shape)[0]
    standard_error = np.sqrt(expected_var / len(mean))
    assert (np.abs(one.mean(axis=0) - mean[0]) < 4 * standard_error).all()
    np.testing.assert_allclose(one.var(axis=0), expected_var, rtol=0.25)
    assert not np.array_equal(one, negative_binomial(mean, theta, np.random.default_rng(8)))


def test_negative_binomial_zero_inflation_zeroes_the_dropout_fraction():
    mean = np.full((4000, 2), 50.0, dtype=np.float32)  # an NB zero is then vanishingly rare
    drawn = negative_binomial(mean, np.full(2, 10.0), np.random.default_rng(0),
                              dropout=np.tile(np.array([0.0, 0.3], dtype=np.float32), (4000, 1)))
    zeros = (drawn == 0).mean(axis=0)
    assert zeros[0] < 0.01 and abs(zeros[1] - 0.3) < 0.03


def test_to_fold_space_is_the_preprocessing_normalisation(counts_factory):
    raw = counts_factory(n_cells=20, n_genes=12, n_types=2, seed=0)
    expected = normalise(raw, target_sum=1e4).X.toarray()
    counts = raw.X.toarray()
    np.testing.assert_allclose(to_fold_space(counts, counts.sum(axis=1), 1e4), expected, rtol=1e-5)


def test_one_count_model_per_type_is_refused_with_the_fix():
    from cellsynth.generators import PerTypeGenerator

    with pytest.raises(ValueError, match="models raw counts.*strategy: conditional"):
        PerTypeGenerator("nb_latent_flow")


def test_flow_matching_sampling_temperature_scales_the_spread_of_its_cells():
    from cellsynth.generators.latent_flow import latent_cells

    rng = np.random.default_rng(0)
    z = rng.normal(0.0, 2.0, size=(600, 3)).astype(np.float32)
    model = GENERATORS["flow_matching"](hidden_features=32, hidden_layers=2, epochs=40, patience=None,
                                        integration_steps=8)
    model.fit(latent_cells(z, np.zeros(600, dtype=np.int64), ["only"]), seed=0, progress=False)
    stds = {}
    for temperature in (0.5, 1.0):
        model.params = dataclasses.replace(model.params, sampling_temperature=temperature)
        stds[temperature] = model.sample(2000, seed=1).X.std(axis=0).mean()
    assert 0.35 < stds[0.5] / stds[1.0] < 0.65  # a straight-line flow from N(0, I) to N(0, 4I) scales noise
    with pytest.raises(ValueError, match="sampling_temperature"):
        GENERATORS["flow_matching"](sampling_temperature=0)
